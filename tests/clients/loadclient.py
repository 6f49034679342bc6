"""Load on bridged from many client processes at once, and a monitor counting signals.

usage: loadclient.py ADDRESS workers --clients N --seconds S --seed K
       loadclient.py ADDRESS monitor

``workers`` imports once, then forks N client processes (each its own connection, its
own pid on the bus). They connect, wait at a common start line, and for S seconds loop:
OpenTap (fds closed at once), CreateTap linger + ReleaseTap, now and then ListTaps or
Manager properties. The parent prints one JSON summary: calls, errors by name, latency
percentiles, and how many times each tap name was created and freed.

``monitor`` subscribes to TapAdded/TapRemoved, prints "ready", counts until a line
arrives on stdin, then calls ListTaps (its reply comes after every signal the daemon
sent before it) and prints each tap name's events in order, e.g. {"tap3": "ARAR"}.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

BUS_NAME = "org.bridged.Bridged1"
ROOT = "/org/bridged/Bridged1"
MANAGER = "org.bridged.Bridged1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"


async def connect(address: str) -> MessageBus:
    return await MessageBus(bus_address=address, bus_type=BusType.SYSTEM,
                            negotiate_unix_fd=True).connect()


class Worker:
    def __init__(self, bus: MessageBus, rng: random.Random) -> None:
        self.bus = bus
        self.rng = rng
        self.latencies: list[float] = []
        self.by_method: dict[str, list[float]] = {}  # member -> its latencies
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.added: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.leftover: list[str] = []

    async def call(self, member: str, signature: str = "", body: list[Any] | None = None,
                   interface: str = MANAGER) -> Message | None:
        started = time.perf_counter()
        try:
            reply = await asyncio.wait_for(self.bus.call(Message(
                destination=BUS_NAME, path=ROOT, interface=interface, member=member,
                signature=signature, body=body or [])), 30)
        except TimeoutError:
            self.errors["timeout"] += 1
            return None
        latency = (time.perf_counter() - started) * 1000
        self.latencies.append(latency)
        self.by_method.setdefault(member, []).append(latency)
        self.calls[member] += 1
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            self.errors[reply.error_name or "?"] += 1
            return None
        return reply

    async def open_tap(self) -> None:
        reply = await self.call("OpenTap", "a{sv}", [{}])
        if reply is None:
            return
        self.added[reply.body[1]] += 1
        for fd in reply.unix_fds:
            os.close(fd)  # the tap goes with its last fd
        self.removed[reply.body[1]] += 1

    async def create_and_release(self) -> None:
        reply = await self.call("CreateTap", "a{sv}", [{"linger": Variant("b", True)}])
        if reply is None:
            return
        name = reply.body[1]
        self.added[name] += 1
        if await self.call("ReleaseTap", "s", [name]) is None:
            self.leftover.append(name)
        else:
            self.removed[name] += 1

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pick = self.rng.random()
            if pick < 0.4:
                await self.open_tap()
            elif pick < 0.8:
                await self.create_and_release()
            elif pick < 0.9:
                await self.call("ListTaps")
            else:
                await self.call("GetAll", "s", [MANAGER], interface=PROPERTIES)


def child(address: str, seconds: float, seed: int, ready_w: int, go_r: int, out: str) -> None:
    async def main() -> None:
        bus = await connect(address)
        worker = Worker(bus, random.Random(seed))
        os.write(ready_w, b".")
        os.close(ready_w)
        # The start line: the parent closes its end of the pipe for everyone at once.
        await asyncio.get_running_loop().run_in_executor(None, os.read, go_r, 1)
        await worker.run(seconds)
        with open(out, "w") as f:
            json.dump({"latencies": worker.latencies, "by_method": worker.by_method,
                       "calls": worker.calls, "errors": worker.errors, "added": worker.added,
                       "removed": worker.removed, "leftover": worker.leftover}, f)
        bus.disconnect()
    asyncio.run(main())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def workers(address: str, clients: int, seconds: float, seed: int) -> None:
    directory = tempfile.mkdtemp(prefix="bridged-load-")
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    connecting = time.monotonic()
    for n in range(clients):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(go_w)
            code = 0
            try:
                child(address, seconds, seed * 1000 + n, ready_w, go_r,
                      os.path.join(directory, f"{n}.json"))
            except BaseException as e:  # reported by the missing result file
                print(f"client {n}: {e!r}", file=sys.stderr)
                code = 1
            os._exit(code)
        pids.append(pid)
    os.close(ready_w)
    os.close(go_r)

    ready = 0
    while ready < clients:
        chunk = os.read(ready_r, clients)
        if not chunk:
            break  # a client died before it was ready
        ready += len(chunk)
    connected_s = time.monotonic() - connecting
    started = time.monotonic()
    os.close(go_w)
    failed = sum(1 for pid in pids if os.waitpid(pid, 0)[1] != 0)
    elapsed = time.monotonic() - started
    latencies: list[float] = []
    by_method: dict[str, list[float]] = {}
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    added: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    leftover: list[str] = []
    for n in range(clients):
        try:
            with open(os.path.join(directory, f"{n}.json")) as f:
                result = json.load(f)
        except OSError:
            continue
        latencies += result["latencies"]
        for member, values in result["by_method"].items():
            by_method.setdefault(member, []).extend(values)
        calls.update(result["calls"])
        errors.update(result["errors"])
        added.update(result["added"])
        removed.update(result["removed"])
        leftover += result["leftover"]
        os.unlink(os.path.join(directory, f"{n}.json"))
    os.rmdir(directory)
    print(json.dumps({
        "clients": clients, "ready": ready, "failed": failed, "connect_s": round(connected_s, 2),
        "seconds": round(elapsed, 2), "calls": sum(calls.values()), "by_method": calls,
        "errors": errors, "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies, default=0), 2),
        "latency_by_method": {member: {"p50_ms": round(percentile(values, 0.5), 2),
                                       "p99_ms": round(percentile(values, 0.99), 2)}
                              for member, values in sorted(by_method.items())},
        "added": added, "removed": removed,
        "leftover": leftover,
    }))


async def monitor(address: str) -> None:
    bus = await connect(address)
    events: dict[str, list[str]] = {}

    def on_message(message: Message) -> None:
        if message.message_type == MessageType.SIGNAL and message.interface == MANAGER and \
                message.member in ("TapAdded", "TapRemoved"):
            events.setdefault(message.body[1], []).append(message.member[3])

    bus.add_message_handler(on_message)
    reply = await bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="AddMatch", signature="s",
        body=[f"type='signal',sender='{BUS_NAME}',interface='{MANAGER}'"]))
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    # Signals and replies from the daemon arrive in the order it sent them.
    reply = await bus.call(Message(destination=BUS_NAME, path=ROOT, interface=MANAGER,
                                   member="ListTaps"))
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply
    print(json.dumps({name: "".join(seq) for name, seq in events.items()}), flush=True)
    bus.disconnect()


def main() -> None:
    address, command = sys.argv[1], sys.argv[2]
    if command == "monitor":
        asyncio.run(monitor(address))
        return
    args = dict(zip(sys.argv[3::2], sys.argv[4::2], strict=True))
    workers(address, int(args["--clients"]), float(args["--seconds"]), int(args["--seed"]))


if __name__ == "__main__":
    main()
