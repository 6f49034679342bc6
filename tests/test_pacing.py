"""Bulk work spread over loop turns (bridged/pacing.py), and the netlink readers' slice:
no root, a real event loop and real sockets."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import time
import types
import weakref

from bridged import pacing
from bridged.kernel.events import EventReader, LinkMonitor


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_steps_run_in_order_a_slice_per_turn_with_sockets_read_between():
    """A hundred steps queued at once: a socket that becomes readable meanwhile is read
    after the first slice, not after all hundred."""

    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        done: list[int] = []
        a, b = socket.socketpair()
        read_after: list[int] = []
        loop.add_reader(a.fileno(), lambda: (read_after.append(len(done)), a.recv(16),
                                            loop.remove_reader(a.fileno())))
        b.send(b"x")  # readable before the first slice even starts
        for i in range(100):
            pacing.soon(done.append, i)
        while len(done) < 100:
            await asyncio.sleep(0)
        a.close()
        b.close()
        return done, read_after[0]

    done, read_after = run(main())
    assert done == list(range(100))
    assert read_after <= 2 * pacing.STEPS_PER_TURN, read_after


def test_a_failing_step_is_logged_and_the_rest_run(caplog):
    async def main() -> list[int]:
        done: list[int] = []
        pacing.soon(lambda: 1 / 0)
        pacing.soon(done.append, 1)
        while not done:
            await asyncio.sleep(0)
        return done

    assert run(main()) == [1]
    assert "a deferred step failed" in caplog.text


def test_settle_wakes_waiters_a_slice_per_turn_and_skips_those_that_gave_up():
    async def main() -> tuple[list[int], list[int], bool]:
        loop = asyncio.get_running_loop()
        woken_per_turn: list[int] = []
        woken = 0

        async def wait(future: asyncio.Future[int]) -> int:
            nonlocal woken
            value = await future
            woken += 1
            return value

        futures = [loop.create_future() for _ in range(40)]
        waiters = [loop.create_task(wait(f)) for f in futures]
        await asyncio.sleep(0)  # every waiter is waiting
        futures[5].cancel()  # its caller gave up: settling must not raise
        for i, future in enumerate(futures):
            pacing.settle(future, ValueError("no") if i == 7 else i)
        while not all(w.done() for w in waiters):
            before = woken
            await asyncio.sleep(0)
            woken_per_turn.append(woken - before)
        values = [w.result() for i, w in enumerate(waiters) if i not in (5, 7)]
        return woken_per_turn, values, isinstance(waiters[7].exception(), ValueError)

    per_turn, values, raised = run(main())
    assert max(per_turn) <= pacing.STEPS_PER_TURN
    assert values == [i for i in range(40) if i not in (5, 7)]
    assert raised


class Datagrams(EventReader):
    """An EventReader over a datagram socketpair whose handling of each datagram costs
    what the caller says."""

    def __init__(self, sock: socket.socket, cost_s: float) -> None:
        super().__init__(on_overrun=lambda: None)
        self._given = sock
        self._cost_s = cost_s
        self.handled: list[bytes] = []

    def _open(self) -> socket.socket:
        self._given.setblocking(False)
        return self._given

    def _dispatch(self, data: bytes) -> None:
        end = time.monotonic() + self._cost_s
        while time.monotonic() < end:
            pass
        self.handled.append(data)


def test_event_reader_handles_a_slice_a_turn_and_drain_handles_all():
    """It stops reading when its turn's budget has run out; what is left stays queued
    for the next turn."""
    async def main() -> tuple[int, int, int]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        reader = Datagrams(ours, cost_s=pacing.TURN_BUDGET_S / 8)
        for i in range(80):
            theirs.send(b"%d" % i)
        reader.start()
        while not reader.handled:  # the turn that finds the socket readable reads a slice
            await asyncio.sleep(0)
        first_turn = len(reader.handled)
        reader.drain()  # whatever is queued, now
        drained = len(reader.handled)
        for i in range(80, 90):
            theirs.send(b"%d" % i)
        for _ in range(50):
            await asyncio.sleep(0)
        reader.stop()
        theirs.close()
        assert reader.handled == [b"%d" % i for i in range(90)]
        return first_turn, drained, len(reader.handled)

    first_turn, drained, total = run(main())
    assert 1 <= first_turn <= 10, first_turn  # ~8 fit in the budget; never all 80
    assert drained == 80 and total == 90


def test_spawned_work_begins_a_slice_per_turn_is_held_and_cancels_cleanly(recwarn):
    async def main() -> tuple[list[int], int, bool]:
        tasks: set[asyncio.Task[None]] = set()
        began: list[int] = []
        per_turn: list[int] = []

        async def work(i: int) -> None:
            began.append(i)
            await asyncio.sleep(0)

        for i in range(40):
            pacing.spawn(work(i), tasks)
        held = len(tasks)
        for task in list(tasks)[:1]:
            task.cancel()  # before it began: its coroutine is closed, never run
        while tasks:
            before = len(began)
            await asyncio.sleep(0)
            per_turn.append(len(began) - before)
        return per_turn, held, len(began) == 39

    per_turn, held, all_but_one = run(main())
    assert held == 40 and all_but_one
    assert max(per_turn) <= pacing.STEPS_PER_TURN
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_a_tap_is_announced_before_a_change_of_its_properties():
    """Twenty taps registered in one turn (a creation batch), then the guest's first
    frame read for the last one (its MAC learned): TapAdded goes out before the
    PropertiesChanged of its object (found in review: the change was sent at once, the
    announcement waited in the pacer)."""
    from bridged.bus.service import BusService
    from bridged.taps import Tap

    sent: list[tuple[str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        service = BusService(None, types.SimpleNamespace(), types.SimpleNamespace(),  # type: ignore[arg-type]
                             lambda: "", None, lambda: "", None)  # type: ignore[arg-type]
        service._signal = lambda path, _iface, member, body: sent.append(  # type: ignore[method-assign]
            (member, path if member == "PropertiesChanged" else body[0]))
        service.properties_changed = lambda: None  # type: ignore[method-assign]
        taps = [Tap(name=f"tap{i}", index=100 + i, owner_uid=0) for i in range(20)]
        a, b = socket.socketpair()
        done = asyncio.Event()

        def first_frame() -> None:
            a.recv(1)
            loop.remove_reader(a.fileno())
            taps[-1].mac = "52:54:00:00:00:01"
            service.tap_changed(taps[-1])
            done.set()

        for tap in taps:
            service.tap_added(tap)
        b.send(b"x")
        loop.add_reader(a.fileno(), first_frame)
        await done.wait()
        for _ in range(10):
            await asyncio.sleep(0)
        a.close()
        b.close()

    asyncio.run(main())
    order = [member for member, path in sent if path.endswith("/tap19")]
    assert order == ["TapAdded", "InterfacesAdded", "PropertiesChanged"], order


def test_the_pacer_lets_its_loop_go():
    async def main() -> None:
        pacing.soon(lambda: None)
        await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None, "a closed loop is kept alive by its pacer"


def _newlink(index: int, name: str) -> bytes:
    attr = struct.pack("=HH", 4 + len(name) + 1, 3) + name.encode() + b"\0"
    attr += b"\0" * ((4 - len(attr) % 4) % 4)
    body = struct.pack("=BxHiII", 0, 1, index, 1, 0) + attr
    return struct.pack("=IHHII", 16 + len(body), 16, 0, 0, 0) + body


def test_a_datagram_that_does_not_parse_is_a_lost_event_and_the_rest_are_read():
    seen: list[str] = []
    overruns: list[int] = []

    async def main() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        monitor = LinkMonitor(lambda e: seen.append(e.link.name),
                              on_overrun=lambda: overruns.append(1))
        monitor._open = lambda: (ours.setblocking(False), ours)[1]  # type: ignore[method-assign]
        theirs.send(_newlink(1, "a"))
        theirs.send(struct.pack("=IHHII", 9999, 16, 0, 0, 0))  # claims more than it has
        theirs.send(_newlink(2, "b"))
        monitor.start()
        for _ in range(20):
            await asyncio.sleep(0)
        monitor.stop()
        theirs.close()

    asyncio.run(main())
    assert seen == ["a", "b"] and overruns == [1], (seen, overruns)
