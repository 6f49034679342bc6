"""Times D-Bus Peer.Ping round trips to bridged, back to back, until stdin closes.

Run as its own process by bench/run while taps are being freed, so that the stall it
sees is the daemon's, not the benchmark's own. Beside it, on the same connection and
concurrently (so that it keeps going while a ping to bridged waits), the same ping to
dbus-daemon itself, which the bus driver answers with no bridged code behind it: the
control, what this process, the bus and the machine made a ping wait in those moments.
Prints one JSON line at the end.
usage: pinger.py BUS_ADDRESS
"""

import asyncio
import json
import sys
import time

from dbus_fast import BusType, Message
from dbus_fast.aio import MessageBus


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)
    if not n:
        return {"n": 0, "max_ms": 0, "p50_ms": 0, "p99_ms": 0, "over_5ms": 0}
    return {"n": n, "max_ms": ordered[-1], "p50_ms": ordered[n // 2],
            "p99_ms": ordered[min(n - 1, int(n * 0.99))],
            "over_5ms": sum(1 for s in ordered if s > 5)}


async def main() -> None:
    bus = await MessageBus(bus_address=sys.argv[1], bus_type=BusType.SYSTEM).connect()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def on_stdin() -> None:
        # The benchmark never writes; readable means end of file: time to report.
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)

    async def pinging(destination: str, path: str, into: list[float]) -> None:
        message = Message(destination=destination, path=path,
                          interface="org.freedesktop.DBus.Peer", member="Ping")
        while not stop.done():
            start = time.perf_counter()
            await bus.call(message)
            into.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.001)

    samples: list[float] = []
    controls: list[float] = []
    print("ready", flush=True)
    await asyncio.gather(pinging("org.bridged.Bridged1", "/org/bridged/Bridged1", samples),
                         pinging("org.freedesktop.DBus", "/org/freedesktop/DBus", controls))
    bridged, control = stats(samples), stats(controls)
    print(json.dumps({**bridged, "bus_max_ms": control["max_ms"],
                      "bus_p99_ms": control["p99_ms"]}), flush=True)


asyncio.run(main())
