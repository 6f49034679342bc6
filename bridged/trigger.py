"""The wake-up of a reconciler: events ask for a pass, one task makes them, and
``settled()`` waits until every pass asked for so far is done."""

from __future__ import annotations

import asyncio


class ReconcileTrigger:
    def __init__(self) -> None:
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()

    def wake(self) -> None:
        """Ask for a pass (many asks before it starts make one pass)."""
        self._wakeup.set()

    async def next_pass(self) -> None:
        """For the reconciler's loop: wait until a pass is asked for."""
        self._idle.set()
        await self._wakeup.wait()
        self._idle.clear()
        self._wakeup.clear()

    async def settled(self) -> None:
        """Wait until the reconciler has done all the work asked of it so far."""
        while self._wakeup.is_set() or not self._idle.is_set():
            if self._idle.is_set():
                await asyncio.sleep(0)  # let the reconciler see its wakeup
            else:
                await self._idle.wait()
