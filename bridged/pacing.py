"""Bulk work spread over turns of the event loop, a few steps a turn.

asyncio runs, in one turn of its loop, every callback that was ready when the turn
began, and reads its sockets only between turns. When one kernel batch finishes (64
taps deleted in one trip), 64 waiting calls become ready together: their replies, their
journal lines and their signals are one turn's work, ~5 ms here, and a call from
another client, already in the bus socket, waits for all of it. The daemon
therefore hands such steps to ``soon`` rather than running them at once: the pacer runs
``STEPS_PER_TURN`` of them and leaves the rest for the next turn, so the sockets are
read between slices. Order is kept (first in, first run); nothing is dropped.

A step that wakes a waiting coroutine (``settle``) counts as one step although its
work runs in the following turn, as the woken coroutine's: that is still a slice of at
most ``STEPS_PER_TURN`` coroutines a turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a source that times its own work (the netlink event readers) does in one turn.
TURN_BUDGET_S = 0.001

# Each step here costs 0.05-0.15 ms of the loop (a reply, a journal line, a signal):
# eight is ~1 ms a turn, about one scheduling quantum of an idle machine's.
STEPS_PER_TURN = 8


class Pacer:
    """A FIFO of steps run ``per_turn`` at a time, one slice per turn of the loop."""

    def __init__(self, per_turn: int = STEPS_PER_TURN) -> None:
        # No reference to its loop (it runs there): the loop's entry in _pacers goes with it.
        self._per_turn = per_turn
        self._steps: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._scheduled = False

    def soon(self, step: Callable[..., object], *args: Any) -> None:
        self._steps.append((step, args))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run_slice)

    def _run_slice(self) -> None:
        for _ in range(min(self._per_turn, len(self._steps))):
            step, args = self._steps.popleft()
            try:
                step(*args)
            except Exception:  # one step's failure is its own, never the others'
                log.exception("a deferred step failed")
        if self._steps:
            # Queued now, so it runs next turn after what this slice woke and before
            # the callbacks of the sockets that turn finds readable.
            asyncio.get_running_loop().call_soon(self._run_slice)
        else:
            self._scheduled = False


_pacers: WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = WeakKeyDictionary()


def pacer() -> Pacer:
    """The running loop's pacer: one per loop, shared by every source of bulk work, so
    that a turn holds one slice however many sources are busy."""
    loop = asyncio.get_running_loop()
    found = _pacers.get(loop)
    if found is None:
        found = _pacers[loop] = Pacer()
    return found


def soon(step: Callable[..., object], *args: Any) -> None:
    """Run ``step(*args)`` on the running loop in a later slice (see the module)."""
    pacer().soon(step, *args)


def spawn(work: Coroutine[Any, Any, object], tasks: set[asyncio.Task[None]]) -> None:
    """Start ``work`` as a task that begins in a later slice (a hundred VMs exiting at
    once are a hundred deletes to begin), held in ``tasks`` until done: the loop keeps
    only weak references to tasks, and the owner cancels ``tasks`` when it stops."""
    task = asyncio.get_running_loop().create_task(_when_paced(work))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    # Cancelled before it began, ``work`` never ran: closed, nothing to undo (and no
    # "never awaited" warning). Once it ran, it is finished here and close() does nothing.
    task.add_done_callback(lambda _task: work.close())


async def _when_paced(work: Coroutine[Any, Any, object]) -> None:
    turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    settle(turn, None)
    await turn
    await work


def settle(future: asyncio.Future[T], result: T | BaseException) -> None:
    """Give ``future`` its result (an exception is raised in its waiter) in a later slice,
    unless it is done by then (its waiter gave up)."""
    soon(_settle_now, future, result)


def _settle_now(future: asyncio.Future[Any], result: object) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
