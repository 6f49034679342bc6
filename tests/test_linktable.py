"""The link table alone, fed by a dump the test controls: no root, no kernel.

Each test decides when the dump is taken, what it returns and which events arrive
while it is in flight, so the races the table exists to close happen every time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from bridged.kernel.events import LinkEvent
from bridged.kernel.link import Link
from bridged.kernel.linktable import LinkTable
from bridged.kernel.rtnl import AF_BRIDGE

Change = tuple[Link | None, Link | None]


def link(index: int, name: str, master: int | None = None, up: bool = True,
         alias: str | None = None, family: int = 0) -> Link:
    return Link(index=index, name=name, kind="tun", master=master, up=up,
                operstate="UP" if up else "DOWN", address=f"fe:00:00:00:00:{index:02x}",
                perm_address=None, alias=alias, mtu=1500, family=family)


def new(item: Link) -> LinkEvent:
    return LinkEvent(removed=False, link=item)


def gone(item: Link) -> LinkEvent:
    return LinkEvent(removed=True, link=item)


class Dump:
    """The kernel's links and dumps of them, answered when the test says.

    A call takes its snapshot of ``kernel`` when it is made, as the kernel does; the
    test then changes ``kernel`` (and sends the events for it) while the call is in
    flight, and ``answer()`` lets the oldest call return its snapshot.
    """

    def __init__(self, kernel: list[Link] | None = None) -> None:
        self.kernel: list[Link] = list(kernel or [])
        self.calls = 0
        self.started = asyncio.Event()  # set while a call waits for its answer
        self._pending: list[tuple[list[Link], asyncio.Future[list[Link]]]] = []

    async def __call__(self) -> list[Link]:
        self.calls += 1
        answer: asyncio.Future[list[Link]] = asyncio.get_running_loop().create_future()
        self._pending.append((list(self.kernel), answer))
        self.started.set()
        return await answer

    def _next(self) -> tuple[list[Link], asyncio.Future[list[Link]]]:
        assert self._pending, "no dump in flight"
        snapshot, answer = self._pending.pop(0)
        if not self._pending:
            self.started.clear()
        return snapshot, answer

    def answer(self) -> None:
        snapshot, answer = self._next()
        answer.set_result(snapshot)

    def fail(self, exc: BaseException) -> None:
        self._next()[1].set_exception(exc)

    @property
    def in_flight(self) -> int:
        return len(self._pending)


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, old: Link | None, new: Link | None) -> None:
        self.changes.append((old, new))

    def names(self) -> list[tuple[str | None, str | None]]:
        return sorted(((old.name if old else None), (new.name if new else None))
                      for old, new in self.changes)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 5))


async def in_flight(table: LinkTable, dump: Dump) -> asyncio.Task[None]:
    """Start a sync and return once its dump has taken its snapshot."""
    calls = dump.calls
    task = asyncio.get_running_loop().create_task(table.sync())
    await until(lambda: dump.calls > calls)
    return task


async def until(condition: Callable[[], object], what: str = "condition") -> None:
    """Let the loop run until ``condition`` holds (a bounded number of steps)."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def picture(table: LinkTable) -> dict[int, Link]:
    return {item.index: item for item in table}


def by_index(changes: list[Change]) -> list[Change]:
    return sorted(changes, key=lambda c: (c[0] or c[1]).index)  # type: ignore[union-attr]


# --- the first dump ------------------------------------------------------------------------


def test_events_before_the_first_dump_are_held_and_each_link_told_once():
    async def main() -> None:
        a, b = link(1, "lo"), link(5, "tap0")
        dump, rec = Dump([a, b]), Recorder()
        table = LinkTable(dump)
        table.subscribe(rec)
        table.event(new(b))  # the monitor runs before the first dump
        assert len(table) == 0 and rec.changes == [], "held until the dump is stored"
        task = await in_flight(table, dump)
        dump.answer()
        await task
        assert picture(table) == {1: a, 5: b}
        assert rec.names() == [(None, "lo"), (None, "tap0")]
    run(main)


def test_a_delete_during_the_start_dump_is_not_undone_by_it():
    """The ghost tap of issue 11: an OpenTap tap whose fd closed while the daemon was
    starting; the older dump must not bring it back."""
    async def main() -> None:
        lo, tap = link(1, "lo"), link(7, "tap3", master=2, alias="bridged:uid=1000")
        dump, rec = Dump([lo, tap]), Recorder()
        table = LinkTable(dump)
        table.subscribe(rec)
        task = await in_flight(table, dump)
        dump.kernel = [lo]  # the fd closed after the dump's snapshot
        table.event(gone(tap))
        dump.answer()  # the snapshot still has it
        await task
        assert table.get(7) is None and table.by_name("tap3") is None
        assert rec.names() == [(None, "lo")], "a link already gone is never announced"
        table.event(new(link(8, "tap4")))  # after the dump, events apply at once
        assert table.by_name("tap4") is not None
    run(main)


def test_a_newer_event_during_the_dump_wins_over_the_dump():
    async def main() -> None:
        attached = link(7, "tap3", master=2)
        detached = dataclasses.replace(attached, master=None)
        dump, rec = Dump([attached]), Recorder()
        table = LinkTable(dump)
        table.subscribe(rec)
        task = await in_flight(table, dump)
        dump.kernel = [detached]
        table.event(new(detached))
        dump.answer()
        await task
        assert table.get(7) == detached
        assert rec.changes == [(None, detached)], "told once, with the final state"
    run(main)


def test_a_link_created_and_deleted_during_the_dump_is_never_told():
    async def main() -> None:
        dump, rec = Dump(), Recorder()
        table = LinkTable(dump)
        table.subscribe(rec)
        task = await in_flight(table, dump)
        brief = link(9, "tap9")
        table.event(new(brief))
        table.event(gone(brief))
        dump.answer()
        await task
        assert len(table) == 0 and rec.changes == []
    run(main)


# --- resynchronising after lost events -----------------------------------------------------


async def synced(links: list[Link]) -> tuple[LinkTable, Dump, Recorder, Recorder]:
    dump, first, second = Dump(links), Recorder(), Recorder()
    table = LinkTable(dump)
    table.subscribe(first)
    table.subscribe(second)
    task = await in_flight(table, dump)
    dump.answer()
    await task
    first.changes.clear()
    second.changes.clear()
    return table, dump, first, second


def test_overrun_resync_tells_every_difference_to_every_subscriber_once():
    async def main() -> None:
        a, b, c = link(1, "lo"), link(5, "tap0", master=2), link(6, "tap1", master=2)
        table, dump, first, second = await synced([a, b, c])
        b_off = dataclasses.replace(b, master=None)
        d = link(9, "tap2", master=2)
        # tap1 gone, tap0 detached, tap2 new: and every event about it lost.
        dump.kernel = [a, b_off, d]
        table.overrun()
        table.overrun()  # a second ENOBUFS before the resync began: still one resync
        await until(lambda: dump.in_flight, "the resync's dump")
        dump.answer()
        await until(lambda: table.get(9) is not None, "the resync stored")
        await settle()
        expected = by_index([(b, b_off), (c, None), (None, d)])
        assert by_index(first.changes) == expected, "removed, changed, added: each once"
        assert by_index(second.changes) == expected
        assert dump.calls == 2 and dump.in_flight == 0
        assert picture(table) == {1: a, 5: b_off, 9: d}
        assert table.by_name("tap1") is None and table.by_name("tap2") == d
    run(main)


def test_overrun_resync_does_not_undo_a_delete_that_arrives_during_it():
    async def main() -> None:
        lo, tap = link(1, "lo"), link(5, "tap0", master=2)
        table, dump, rec, _ = await synced([lo, tap])
        table.overrun()
        await until(lambda: dump.in_flight, "the resync's dump")
        dump.kernel = [lo]
        table.event(gone(tap))
        dump.answer()
        await until(lambda: table.get(5) is None and rec.changes, "the delete applied")
        await settle()
        assert rec.changes == [(tap, None)]
    run(main)


def test_events_lost_while_a_resync_is_under_way_bring_another_resync():
    """A resync whose dump was taken before a second overrun cannot know what that
    overrun lost: folding it into the running resync would leave a ghost."""
    async def main() -> None:
        lo, tap = link(1, "lo"), link(5, "tap0", master=2)
        table, dump, rec, _ = await synced([lo, tap])
        table.overrun()
        await until(lambda: dump.in_flight, "the resync's dump")
        dump.kernel = [lo]  # the tap goes after the snapshot, and its event is lost
        table.overrun()
        dump.answer()
        await until(lambda: dump.in_flight, "a second resync after the second overrun")
        dump.answer()
        await until(lambda: table.get(5) is None, "the lost delete found")
        await settle()
        assert rec.changes == [(tap, None)]
        assert dump.calls == 3 and dump.in_flight == 0
    run(main)


def test_a_resync_during_the_first_dump_does_not_bring_back_what_was_deleted():
    """The monitor may overrun while the start-up dump is in flight: two dumps must not
    overlap, or the second, older than events applied after the first, wins."""
    async def main() -> None:
        lo, tap = link(1, "lo"), link(5, "tap0")
        dump = Dump([lo, tap])
        table = LinkTable(dump)
        first = await in_flight(table, dump)
        table.overrun()  # ENOBUFS while starting
        await settle()
        dump.answer()
        await first
        dump.kernel = [lo]  # the tap's fd closes
        table.event(gone(tap))
        await until(lambda: dump.in_flight, "the overrun's resync")
        dump.answer()
        await settle()
        assert dump.in_flight == 0 and dump.calls == 2
        assert table.get(5) is None, "the deleted tap came back from an older dump"
    run(main)


def test_a_failing_dump_releases_held_events_and_raises():
    async def main() -> None:
        a, b = link(1, "lo"), link(5, "tap0")
        table, dump, rec, _ = await synced([a, b])
        task = await in_flight(table, dump)
        b_off = dataclasses.replace(b, up=False)
        c = link(6, "tap1")
        table.event(new(b_off))
        table.event(new(c))
        assert rec.changes == [], "held while the dump runs"
        dump.fail(OSError(16, "dump interrupted"))
        with pytest.raises(OSError, match="dump interrupted"):
            await task
        assert rec.changes == [(b, b_off), (None, c)], "held events applied, in order"
        assert picture(table) == {1: a, 5: b_off, 6: c}
        table.event(gone(c))  # and nothing is held any more
        assert table.get(6) is None and rec.changes[-1] == (c, None)
    run(main)


def test_a_failing_resync_is_retried(caplog: pytest.LogCaptureFixture):
    async def main() -> None:
        lo, tap = link(1, "lo"), link(5, "tap0")
        table, dump, rec, _ = await synced([lo, tap])
        dump.kernel = [lo]
        table.overrun()
        await until(lambda: dump.in_flight, "the resync's dump")
        dump.fail(OSError(105, "No buffer space available"))
        while not dump.in_flight:  # retried after a pause, by itself
            await asyncio.sleep(0.02)
        dump.answer()
        await until(lambda: table.get(5) is None, "the retry stored")
        assert rec.changes == [(tap, None)]
    with caplog.at_level(logging.ERROR, logger="bridged.kernel.linktable"):
        run(main)
    assert "resynchronising links after lost events failed" in caplog.text


# --- what the table ignores, and names -----------------------------------------------------


def test_af_bridge_port_notices_are_ignored():
    async def main() -> None:
        br0, port = link(2, "br0"), link(5, "eth0", master=2)
        table, dump, rec, _ = await synced([br0, port])
        notice = dataclasses.replace(port, family=AF_BRIDGE, master=None, up=False)
        table.event(gone(notice))  # "left the bridge", not "deleted"
        table.event(new(notice))
        assert table.get(5) == port and rec.changes == []
        # Also while held during a dump.
        task = await in_flight(table, dump)
        table.event(gone(notice))
        dump.answer()
        await task
        assert table.get(5) == port and rec.changes == []
    run(main)


def test_renames_keep_the_name_index_right():
    async def main() -> None:
        a, b = link(5, "tap0"), link(6, "tap1")
        table, dump, _, _ = await synced([a, b])
        # A rename out and back, as `ip link set NAME name ...` does.
        a_tmp = dataclasses.replace(a, name="tmp0")
        table.event(new(a_tmp))
        assert table.by_name("tap0") is None and table.by_name("tmp0") == a_tmp
        # Two links swap names through a third one.
        b_as_tap0 = dataclasses.replace(b, name="tap0")
        a_as_tap1 = dataclasses.replace(a, name="tap1")
        table.event(new(b_as_tap0))
        table.event(new(a_as_tap1))
        assert table.by_name("tap0") == b_as_tap0 and table.by_name("tap1") == a_as_tap1
        assert table.by_name("tmp0") is None
        # A deleted link's name passes to a new link.
        table.event(gone(b_as_tap0))
        c = link(9, "tap0")
        table.event(new(c))
        assert table.by_name("tap0") == c
        # A rename held during a dump whose snapshot has the old name.
        dump.kernel = [a_as_tap1, c]
        task = await in_flight(table, dump)
        c_renamed = dataclasses.replace(c, name="vm-net")
        dump.kernel = [a_as_tap1, c_renamed]
        table.event(new(c_renamed))
        dump.answer()
        await task
        assert table.by_name("vm-net") == c_renamed and table.by_name("tap0") is None
        assert table.by_name("tap1") == a_as_tap1
        assert {item.name for item in table} == {"tap1", "vm-net"}
        # A resync after lost renames: names come from the new picture only.
        a_back = dataclasses.replace(a, name="tap0")
        dump.kernel = [a_back, c_renamed]
        table.overrun()
        await until(lambda: dump.in_flight, "the resync's dump")
        dump.answer()
        await until(lambda: table.by_name("tap0") == a_back, "renamed back")
        assert table.by_name("tap1") is None and table.by_name("vm-net") == c_renamed
    run(main)


def test_a_subscriber_that_fails_does_not_starve_the_others(caplog: pytest.LogCaptureFixture):
    async def main() -> None:
        dump, rec = Dump(), Recorder()
        table = LinkTable(dump)

        def broken(old: Link | None, new: Link | None) -> None:
            raise RuntimeError("listener bug")

        table.subscribe(broken)
        table.subscribe(rec)
        task = await in_flight(table, dump)
        dump.answer()
        await task
        table.event(new(link(5, "tap0")))
        assert rec.names() == [(None, "tap0")]
    with caplog.at_level(logging.ERROR, logger="bridged.kernel.linktable"):
        run(main)
    assert "handling a change of link tap0 failed" in caplog.text
