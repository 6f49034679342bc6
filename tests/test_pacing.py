"""Bulk work spread over loop turns (bridged/pacing.py), and the netlink readers' slice:
no root, a real event loop and real sockets."""

from __future__ import annotations

import asyncio
import socket
import time

from bridged import pacing
from bridged.kernel import events
from bridged.kernel.events import EventReader


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
    """It reads a group of datagrams at a time and stops after the group in which its
    turn's budget ran out; what is left stays queued for the next turn."""
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
    assert first_turn == events.GROUP, first_turn  # 16 datagrams cost two budgets: one group
    assert drained == 80 and total == 90
