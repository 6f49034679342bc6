"""Times D-Bus Peer.Ping round trips to bridged, back to back, until stdin closes.

Run as its own process by bench/run while taps are being freed, so that the stall it
sees is the daemon's, not the benchmark's own. Each ping to bridged is followed by one
to dbus-daemon itself (the bus driver answers it; no bridged code runs): the control,
what this process, the bus and the machine alone made it wait in the same moments.
Prints one JSON line at the end.
usage: pinger.py BUS_ADDRESS
"""

import asyncio
import json
import sys
import time

from dbus_fast import BusType, Message
from dbus_fast.aio import MessageBus


async def main() -> None:
    bus = await MessageBus(bus_address=sys.argv[1], bus_type=BusType.SYSTEM).connect()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def on_stdin() -> None:
        # The benchmark never writes; readable means end of file: time to report.
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    ping = Message(destination="org.bridged.Bridged1", path="/org/bridged/Bridged1",
                   interface="org.freedesktop.DBus.Peer", member="Ping")
    control = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                      interface="org.freedesktop.DBus.Peer", member="Ping")
    samples: list[float] = []
    controls: list[float] = []
    print("ready", flush=True)
    while not stop.done():
        for message, into in ((ping, samples), (control, controls)):
            start = time.perf_counter()
            await bus.call(message)
            into.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.001)
    samples.sort()
    controls.sort()
    n = len(samples)
    print(json.dumps({"n": n, "max_ms": samples[-1] if n else 0,
                      "p50_ms": samples[n // 2] if n else 0,
                      "p99_ms": samples[min(n - 1, int(n * 0.99))] if n else 0,
                      "over_5ms": sum(1 for s in samples if s > 5),
                      "bus_max_ms": controls[-1] if controls else 0,
                      "bus_p99_ms": controls[min(n - 1, int(n * 0.99))] if controls else 0}),
          flush=True)


asyncio.run(main())
