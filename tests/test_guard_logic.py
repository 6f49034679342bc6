"""Guards' logic without root: options, the ifalias record, the nft script."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridged.errors import InvalidArgument
from bridged.guards import Guards
from bridged.kernel import nft
from bridged.kernel.link import Link
from bridged.taps import Tap, parse_options, tap_from_alias


def link(alias: str) -> Link:
    return Link(index=7, name="tap3", kind="tun", master=None, up=True, operstate="UP",
                address="fe:00:00:00:00:01", perm_address=None, alias=alias, mtu=1500)


def test_alias_keeps_trusted_and_the_guest_mac():
    tap = Tap(name="tap3", index=7, owner_uid=1000, label="vm:1", trusted=True,
              mac="52:54:00:12:34:56", mtu=1500)
    back = tap_from_alias(link(tap.alias()))
    assert back is not None
    assert back.trusted and back.mac == "52:54:00:12:34:56" and back.label == "vm:1"


def test_alias_from_before_the_guards_is_still_read():
    old = "bridged:uid=1000:pid=0:start=0:p=1:q=1:vh=1:vlan=0:iso=0:t=5:label=web"
    back = tap_from_alias(link(old))
    assert back is not None and not back.trusted and back.mac == "" and back.label == "web"


def test_mac_option_is_normalised_and_checked():
    assert parse_options({"mac": ("s", "52:54:00:AB:CD:EF")}, False).mac == "52:54:00:ab:cd:ef"
    for bad in ("52:54:00:ab:cd", "52-54-00-ab-cd-ef", "03:00:00:00:00:01",
                "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
        with pytest.raises(InvalidArgument):
            parse_options({"mac": ("s", bad)}, False)
    with pytest.raises(InvalidArgument, match="type 'b'"):
        parse_options({"trusted": ("s", "yes")}, False)


def test_table_script_guards_every_reason_and_holds_ports():
    script = nft.table_text(4242, [nft.Port("tap0", "52:54:00:12:34:56",
                                            {1: (3, 180), 2: (0, 0)}),
                                   nft.Port("tap1")])
    assert 'elements = { "tap0", "tap1" }' in script
    assert '"tap0" . 52:54:00:12:34:56' in script and '"tap1" :' not in script
    assert '"tap0" . 1 counter packets 3 bytes 180' in script
    assert '"tap0" . 2' not in script  # a counter at zero is left to the kernel to make
    for reason in nft.REASONS:
        assert f"goto drop_{reason}" in script and f'prefix "bridged:drop:{reason}"' in script
    assert "hook prerouting" in script and "ether type { 8021q, 8021ad }" in script


def test_names_that_are_not_tap_names_never_reach_nft():
    with pytest.raises(nft.NftError):
        nft.table_text(1, [nft.Port('tap0" } ; flush ruleset ; {')])


class GatedLane:
    """A lane whose nftables work waits for the test's go-ahead; it logs what it ran."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.gate = asyncio.Event()
        self.gate.set()

    async def run_nft(self, fn: Any, *args: Any) -> Any:
        self.log.append(f"{fn.__name__} starts")
        await self.gate.wait()
        self.log.append(f"{fn.__name__} done")
        if fn is nft.unguard_ports:
            return {name: {} for name, _mac in args[0]}
        return None


def test_a_release_waits_for_the_rename_of_its_tap_under_way():
    """A rename moves the counters to the new name on one lane, a release reads and
    deletes the new name's on the other: run the other way round, the counters moved
    after the read would stay in the table."""
    async def scenario() -> list[str]:
        order: list[str] = []
        lane, release_lane = GatedLane(order), GatedLane(order)
        guards = Guards(lane, release_lane, enabled=True)  # type: ignore[arg-type]
        guards.available = True
        tap = Tap(name="tap3", index=7, owner_uid=1000, guarded=True, mac="52:54:00:12:34:56")
        guards.track(tap)
        lane.gate.clear()
        tap.name = "vm3"  # the registry follows the kernel's name, then tells the guards
        renaming = asyncio.create_task(guards.renamed(tap, "tap3"))
        await asyncio.sleep(0)
        releasing = asyncio.create_task(guards.release(tap))
        for _ in range(10):
            await asyncio.sleep(0)
        assert order == ["rename_port starts"], order  # the release waits
        lane.gate.set()
        await asyncio.gather(renaming, releasing)
        return order

    assert asyncio.run(scenario()) == ["rename_port starts", "rename_port done",
                                       "unguard_ports starts", "unguard_ports done"]


def test_a_name_is_held_while_guards_are_under_it():
    """``holds``: a name whose guards are in the table (a tap's, under the name they were
    written with until a rename has moved them, or being removed) is not handed out."""
    async def scenario() -> None:
        order: list[str] = []
        lane, release_lane = GatedLane(order), GatedLane(order)
        guards = Guards(lane, release_lane, enabled=True)  # type: ignore[arg-type]
        guards.available = True
        taps = [Tap(name=f"tap{n}", index=10 + n, owner_uid=1000, guarded=True)
                for n in range(3)]
        for tap in taps:
            guards.track(tap)
        assert [guards.holds(f"tap{n}") for n in range(4)] == [True, True, True, False]
        lane.gate.clear()
        taps[1].name = "vm1"  # renamed by someone: its guards are still under tap1
        renaming = asyncio.create_task(guards.renamed(taps[1], "tap1"))
        await asyncio.sleep(0)
        assert guards.holds("tap1")
        lane.gate.set()
        await renaming
        assert guards.holds("vm1") and not guards.holds("tap1")
        release_lane.gate.clear()
        releasing = asyncio.create_task(guards.release(taps[1]))
        await asyncio.sleep(0)
        assert guards.holds("vm1")  # being removed
        release_lane.gate.set()
        await releasing
        assert not guards.holds("vm1") and guards.holds("tap0") and guards.holds("tap2")

    asyncio.run(scenario())


def test_after_a_failed_rename_the_old_name_is_held_and_released():
    """A rename the table refused leaves the guards under the old name (until the rebuild
    it asks for): that name stays held, and a release removes the guards under it."""
    class RenameRefused(GatedLane):
        async def run_nft(self, fn: Any, *args: Any) -> Any:
            if fn is nft.rename_port:
                raise nft.NftError("refused")
            return await super().run_nft(fn, *args)

    async def scenario() -> list[Any]:
        order: list[str] = []
        released: list[Any] = []
        lane, release_lane = RenameRefused(order), GatedLane(order)
        real = release_lane.run_nft

        async def unguard(fn: Any, *args: Any) -> Any:
            released.append(args[0])
            return await real(fn, *args)

        release_lane.run_nft = unguard  # type: ignore[method-assign]
        guards = Guards(lane, release_lane, enabled=True)  # type: ignore[arg-type]
        guards.available = True
        guards.rebuild_soon = lambda: None  # type: ignore[method-assign]
        tap = Tap(name="tap1", index=11, owner_uid=1000, guarded=True)
        guards.track(tap)
        tap.name = "vm1"
        await guards.renamed(tap, "tap1")
        assert guards.holds("tap1") and not guards.holds("vm1")
        release_lane.gate.clear()
        releasing = asyncio.create_task(guards.release(tap))
        await asyncio.sleep(0)
        assert guards.holds("tap1")
        release_lane.gate.set()
        await releasing
        assert not guards.holds("tap1")
        return released

    assert asyncio.run(scenario()) == [[("tap1", None)]]


class FailingLane(GatedLane):
    async def run_nft(self, fn: Any, *args: Any) -> Any:
        self.log.append(f"{fn.__name__} starts")
        raise OSError("the lane broke")


def test_a_release_whose_lane_fails_says_so_and_does_not_fail_the_tap_removal(caplog):
    """The tap is gone whatever became of its guards: its removal is logged and answered,
    the failure is a warning and the table is rebuilt."""
    async def scenario() -> tuple[Any, Any, list[str]]:
        order: list[str] = []
        guards = Guards(GatedLane(order), FailingLane(order), enabled=True)  # type: ignore[arg-type]
        guards.available = True
        rebuilds: list[int] = []
        guards.rebuild_soon = lambda: rebuilds.append(1)  # type: ignore[method-assign]
        taps = [Tap(name=f"tap{i}", index=10 + i, owner_uid=1000, guarded=True,
                    mac="52:54:00:12:34:56") for i in range(2)]
        for tap in taps:
            guards.track(tap)
        first, second = await asyncio.gather(*(guards.release(tap) for tap in taps))
        return first, second, rebuilds

    first, second, rebuilds = asyncio.run(scenario())
    assert first is None and second is None and rebuilds
    assert "removing the guards of tap0: the lane broke; rebuilding" in caplog.text
