"""The one picture of the namespace's links, fed by the event monitor and by dumps.

Everything in the daemon that needs to know about links reads this table and hears of
changes through it; nobody keeps a second copy. Two rules keep it true:

- A dump is a snapshot taken at some moment while events keep arriving. Events that
  arrive while a dump is under way are held and applied after the dump is stored, in
  the kernel's order: each RTM_NEWLINK carries a link's whole state, so the last event
  about a link is its truth, and an older dump never overwrites a newer event (that is
  how a tap closed during a restart used to stay in the registry as a ghost).
- After events were lost (the monitor's socket overran), a dump replaces the picture,
  and every difference between the old picture and the new one (a link gone, a link
  changed, a link new) reaches every subscriber, exactly as if the events had arrived.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

from bridged.kernel.events import LinkEvent
from bridged.kernel.link import Link
from bridged.kernel.rtnl import AF_BRIDGE

log = logging.getLogger(__name__)

# old, new: (None, link) a link appeared, (link, None) it is gone, else it changed.
LinkListener = Callable[[Link | None, Link | None], None]


class LinkTable:
    def __init__(self, dump: Callable[[], Awaitable[list[Link]]]) -> None:
        self._dump = dump
        self._links: dict[int, Link] = {}
        self._names: dict[str, int] = {}
        self._held: list[LinkEvent] | None = []  # events before the first dump are held
        self._listeners: list[LinkListener] = []
        self._resync: asyncio.Task[None] | None = None
        self._lost = False  # events lost since the last resync's dump was asked for
        # One dump at a time: a second one running beside the first could return after
        # it with a snapshot older than the events applied in between.
        self._syncing = asyncio.Lock()

    # --- reading ---------------------------------------------------------------------

    def get(self, index: int) -> Link | None:
        return self._links.get(index)

    def by_name(self, name: str) -> Link | None:
        index = self._names.get(name)
        return self._links.get(index) if index is not None else None

    def __iter__(self) -> Iterator[Link]:
        return iter(list(self._links.values()))

    def __len__(self) -> int:
        return len(self._links)

    def subscribe(self, listener: LinkListener) -> None:
        self._listeners.append(listener)

    # --- feeding -----------------------------------------------------------------------

    def event(self, event: LinkEvent) -> None:
        """An RTM_NEWLINK / RTM_DELLINK from the monitor (AF_BRIDGE port notices excluded:
        the bridge's view of a port is not the link, and its DELLINK means "left the
        bridge", not "deleted")."""
        if event.link.family == AF_BRIDGE:
            return
        if self._held is not None:
            self._held.append(event)
            return
        old, new = self._apply(event)
        if old != new:
            self._tell(old, new)

    async def sync(self) -> None:
        """Replace the picture with a dump; subscribers hear of every difference."""
        async with self._syncing:
            await self._sync()

    async def _sync(self) -> None:
        if self._held is None:
            self._held = []
        try:
            links = await self._dump()
        except BaseException:
            held, self._held = self._held, None
            for event in held:
                self.event(event)
            raise
        before = self._links
        self._links, self._names = {}, {}
        for link in links:
            self._store(link)
        held, self._held = self._held, None
        for event in held:  # newer than the dump, or re-telling what it already shows
            self._apply(event)
        for index in before.keys() | self._links.keys():
            old, new = before.get(index), self._links.get(index)
            if old != new:
                self._tell(old, new)

    def overrun(self) -> None:
        """Events were lost: resynchronise from a dump.

        Overruns before the resync's dump is asked for share it; one after needs another
        dump, as the running one may have been taken before what was lost happened.
        """
        self._lost = True
        if self._resync is None or self._resync.done():
            self._resync = asyncio.get_running_loop().create_task(self._resync_now())

    async def _resync_now(self) -> None:
        while self._lost:
            self._lost = False
            try:
                await self.sync()
            except Exception:
                log.exception("resynchronising links after lost events failed")
                # Try again: the picture must not stay wrong.
                asyncio.get_running_loop().call_later(0.5, self.overrun)
                return
            log.info("link picture resynchronised after lost events (%d links)", len(self),
                     extra={"BRIDGED_EVENT": "resync"})

    # --- internals ---------------------------------------------------------------------

    def _apply(self, event: LinkEvent) -> tuple[Link | None, Link | None]:
        link = event.link
        old = self._links.get(link.index)
        if event.removed:
            if old is not None:
                self._forget(link.index)
            return old, None
        self._store(link)
        return old, link

    def _store(self, link: Link) -> None:
        previous = self._links.get(link.index)
        if previous is not None and previous.name != link.name and \
                self._names.get(previous.name) == link.index:
            del self._names[previous.name]
        self._links[link.index] = link
        self._names[link.name] = link.index

    def _forget(self, index: int) -> None:
        link = self._links.pop(index)
        if self._names.get(link.name) == index:
            del self._names[link.name]

    def _tell(self, old: Link | None, new: Link | None) -> None:
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                link = new or old
                log.exception("handling a change of link %s failed",
                              link.name if link is not None else "?")
