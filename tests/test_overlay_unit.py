"""The overlay without root: the FDB and VXLAN parts of the codec on recorded kernel
bytes (against pyroute2 and iproute2/bridge(8)), the requests as pyroute2 reads them,
and the overlay's own logic (remote VTEPs, the MTU rule, the peer log's rate limit)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from bridged.config import VxlanConfig
from bridged.kernel import rtnl
from bridged.kernel.link import NTF_EXT_LEARNED, NTF_SELF, NUD_PERMANENT, FdbEntry, Link
from bridged.kernel.rtnl import NLMSGHDR, RtnlSocket, decode_fdb, decode_vxlan
from bridged.overlay import VXLAN_MARK, Overlay, PeerLog
from tests.test_rtnl_unit import (
    ScriptedSocket,
    _p2,
    ack,
    done,
    oracle,
    recorded,
    restamp,
)

IP = ipaddress.ip_address


@pytest.fixture(scope="module")
def pyroute2() -> ModuleType:
    module = pytest.importorskip("pyroute2")
    from pyroute2.netlink.rtnl import ifinfmsg, ndmsg  # noqa: F401
    return module


# --- the codec -------------------------------------------------------------------------


def test_fdb_entries_agree_with_pyroute2(pyroute2: ModuleType) -> None:
    kinds = {"flood": 0, "extern_learn": 0, "vni": 0, "v6": 0, "master": 0}
    for message in recorded("fdb.bin"):
        entry = decode_fdb(message, 0, len(message))
        ref = _p2("pyroute2.netlink.rtnl.ndmsg.ndmsg", message)
        assert entry is not None and ref["family"] == socket.AF_BRIDGE
        dst = ref.get_attr("NDA_DST")
        assert (entry.index, entry.mac, entry.flags, entry.state) == \
            (ref["ifindex"], ref.get_attr("NDA_LLADDR"), ref["flags"], ref["state"])
        assert entry.dst == (IP(dst) if dst else None), entry
        assert (entry.vni, entry.port, entry.master) == \
            (ref.get_attr("NDA_VNI"), ref.get_attr("NDA_PORT"), ref.get_attr("NDA_MASTER"))
        kinds["flood"] += entry.flood and entry.own
        kinds["extern_learn"] += entry.extern_learn
        kinds["vni"] += entry.vni is not None
        kinds["v6"] += entry.dst is not None and entry.dst.version == 6
        kinds["master"] += entry.master is not None
    assert min(kinds.values()) >= 1, f"the recording lacks a kind of entry: {kinds}"


def test_fdb_entries_agree_with_bridge_tool() -> None:
    shown = oracle("fdb.json")
    index = shown["ifindex"]
    decoded = [decode_fdb(m, 0, len(m)) for m in recorded("fdb.bin")]
    ours = sorted((e.index, e.mac, str(e.dst) if e.dst else None, e.own, e.extern_learn,
                   e.permanent, e.vni, e.port) for e in decoded if e is not None)
    theirs = sorted((index[r["ifname"]], r["mac"], r.get("dst"), "self" in r["flags"],
                     "extern_learn" in r["flags"], r["state"] == "permanent", r.get("vni"),
                     r.get("port")) for r in shown["fdb"])
    assert ours == theirs


def test_vxlan_settings_agree_with_pyroute2_and_iproute2(pyroute2: ModuleType) -> None:
    shown = {link["ifindex"]: link for link in oracle("links.json")}
    found = 0
    for message in recorded("links.bin"):
        info = decode_vxlan(message, 0, len(message))
        ref = _p2("pyroute2.netlink.rtnl.ifinfmsg.ifinfmsg", message)
        if ref.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan":
            assert info is None
            continue
        found += 1
        assert info is not None
        data = ref.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        assert (info.vni, str(info.local), info.port, info.learning) == \
            (data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_LOCAL"),
             data.get_attr("IFLA_VXLAN_PORT"), bool(data.get_attr("IFLA_VXLAN_LEARNING")))
        iproute2 = shown[ref["index"]]["linkinfo"]["info_data"]
        assert (info.vni, str(info.local), info.port, info.learning) == \
            (iproute2["id"], iproute2["local"], iproute2["port"], iproute2["learning"])
    assert found == 1


def _requests(call: Any, replies: int = 1) -> list[bytes]:
    scripted = ScriptedSocket(*[lambda seq, _r: [ack(seq)]] * replies)
    call(RtnlSocket(scripted))  # type: ignore[arg-type]
    return [m[NLMSGHDR.size:] for m in scripted.sent]


def _as_message(kind: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, 0, 1, 0) + body


def test_fdb_requests_read_as_pyroute2_reads_them(pyroute2: ModuleType) -> None:
    add, delete = _requests(lambda s: (
        s.fdb_entry(7, "00:00:00:00:00:00", IP("192.0.2.12"), add=True),
        s.fdb_entry(7, "00:00:00:00:00:00", IP("2001:db8::12"), add=False)), replies=2)
    for body, kind, dst in ((add, rtnl.RTM_NEWNEIGH, "192.0.2.12"),
                            (delete, rtnl.RTM_DELNEIGH, "2001:db8::12")):
        ref = _p2("pyroute2.netlink.rtnl.ndmsg.ndmsg", _as_message(kind, body))
        assert (ref["family"], ref["ifindex"], ref["state"], ref["flags"]) == \
            (socket.AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF)
        assert ref.get_attr("NDA_LLADDR") == "00:00:00:00:00:00"
        assert ref.get_attr("NDA_DST") == dst


def test_vxlan_request_reads_as_pyroute2_reads_it(pyroute2: ModuleType) -> None:
    [create] = _requests(lambda s: s.create_vxlan("vx4242", 4242, IP("192.0.2.11"), 4789,
                                                  False))
    ref = _p2("pyroute2.netlink.rtnl.ifinfmsg.ifinfmsg", _as_message(rtnl.RTM_NEWLINK, create))
    assert ref.get_attr("IFLA_IFNAME") == "vx4242"
    assert ref.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vxlan"
    data = ref.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    assert (data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_LOCAL"),
            data.get_attr("IFLA_VXLAN_PORT"), data.get_attr("IFLA_VXLAN_LEARNING")) == \
        (4242, "192.0.2.11", 4789, 0)
    # The same settings read back by our own decoder, from what pyroute2 would send.
    info = decode_vxlan(_as_message(rtnl.RTM_NEWLINK, create), 0,
                        len(_as_message(rtnl.RTM_NEWLINK, create)))
    assert info is not None and (info.vni, info.local, info.port, info.learning) == \
        (4242, IP("192.0.2.11"), 4789, False)
    [v6] = _requests(lambda s: s.create_vxlan("vx7", 7, IP("2001:db8::1"), 8472, True))
    info = decode_vxlan(_as_message(rtnl.RTM_NEWLINK, v6), 0, len(v6) + NLMSGHDR.size)
    assert info is not None and (info.local, info.port, info.learning) == \
        (IP("2001:db8::1"), 8472, True)


def test_fdb_dump_keeps_the_devices_own_entries() -> None:
    messages_ = recorded("fdb.bin")
    vx0 = oracle("fdb.json")["ifindex"]["vx0"]

    def reply(seq: int, request: bytes) -> list[bytes]:
        # The request asks for the port in the kernel; answer with everything anyway,
        # as a kernel without strict checking would.
        family, index = rtnl.NDMSG.unpack_from(request, NLMSGHDR.size)[:2]
        assert (family, index) == (socket.AF_BRIDGE, vx0)
        return [b"".join(restamp(m, seq, flags=rtnl.NLM_F_MULTI) for m in messages_)
                + done(seq)]

    entries = RtnlSocket(ScriptedSocket(reply)).fdb(vx0)  # type: ignore[arg-type]
    assert entries
    assert all(e.index == vx0 and e.own and e.dst is not None for e in entries)
    assert sorted((e.mac, str(e.dst)) for e in entries) == sorted(
        (r["mac"], r["dst"]) for r in oracle("fdb.json")["fdb"]
        if r["ifname"] == "vx0" and "self" in r["flags"])


# --- the overlay's own logic ------------------------------------------------------------


def _link(index: int, name: str, mtu: int = 1500, master: int | None = None,
          up: bool = True, operstate: str = "UP", alias: str | None = None) -> Link:
    return Link(index=index, name=name, kind=None, master=master, up=up, operstate=operstate,
                address=None, perm_address=None, alias=alias, mtu=mtu)


class _Links:
    def __init__(self, *links: Link) -> None:
        self.links = {link.index: link for link in links}

    def get(self, index: int) -> Link | None:
        return self.links.get(index)


class _Monitor:
    def __init__(self, *args: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def drain(self) -> None:
        pass


def _overlay(config: VxlanConfig, *links: Link, bridge_mtu: int = 1500) -> Overlay:
    bridge = _link(1, "br0", mtu=bridge_mtu)
    manager = SimpleNamespace(bridge=bridge, index=1, on_change=[])
    return Overlay(config, manager, None, _Links(bridge, *links),  # type: ignore[arg-type]
                   monitor=_Monitor)


def _entry(mac: str, dst: str, flags: int = NTF_SELF) -> FdbEntry:
    return FdbEntry(index=5, mac=mac, dst=IP(dst), flags=flags, state=NUD_PERMANENT)


def test_remotes_count_entries_and_evpn_macs_per_peer() -> None:
    overlay = _overlay(VxlanConfig(vni=4242, local=IP("192.0.2.11"),
                                   peers=(IP("192.0.2.12"), IP("192.0.2.14"))))
    entries = [_entry("00:00:00:00:00:00", "192.0.2.12"), _entry("00:00:00:00:00:00", "192.0.2.13"),
               _entry("02:00:00:00:00:01", "192.0.2.13", NTF_SELF | NTF_EXT_LEARNED),
               _entry("02:00:00:00:00:02", "192.0.2.13", NTF_SELF | NTF_EXT_LEARNED),
               _entry("02:00:00:00:00:03", "192.0.2.12")]
    overlay.fdb = {(e.mac, e.dst): e for e in entries}  # type: ignore[misc]
    remotes = {str(r.address): r for r in overlay.remotes()}
    assert list(remotes) == ["192.0.2.12", "192.0.2.13", "192.0.2.14"]
    assert (remotes["192.0.2.12"].configured, remotes["192.0.2.12"].flood,
            remotes["192.0.2.12"].entries, remotes["192.0.2.12"].macs) == (True, True, 2, 0)
    assert remotes["192.0.2.13"].learned and remotes["192.0.2.13"].macs == 2
    assert remotes["192.0.2.13"].entries == 3
    # Listed but not (yet) in the FDB: shown, with nothing to flood to.
    assert (remotes["192.0.2.14"].flood, remotes["192.0.2.14"].entries) == (False, 0)


def test_underlay_too_small_for_the_bridge_is_refused_with_the_numbers() -> None:
    config = VxlanConfig(vni=4242, local=IP("192.0.2.11"))
    overlay = _overlay(config, _link(3, "und0", mtu=1500))
    overlay.device = _link(5, "vx4242", master=1, alias=VXLAN_MARK)
    overlay.underlay = 3
    overlay._update_problem()
    assert overlay.problem is not None
    for number in ("MTU 1500", "50 bytes", "leaves 1450", "br0's MTU 1500",
                   "bridge.mtu = 1450", "at least 1550"):
        assert number in overlay.problem, overlay.problem
    overlay._links.links[3] = _link(3, "und0", mtu=1550)  # type: ignore[attr-defined]
    overlay._update_problem()
    assert overlay.problem is None
    overlay._links.links[3] = _link(3, "und0", mtu=1550, operstate="DOWN")  # type: ignore[attr-defined]
    overlay._update_problem()
    assert overlay.problem == "the underlay und0 is down"
    overlay.underlay = 1  # vxlan.local on the bridge itself
    overlay._update_problem()
    assert overlay.problem is not None and "the bridge or one of its ports" in overlay.problem
    overlay.underlay = None
    overlay._update_problem()
    assert overlay.problem is not None and "on no interface" in overlay.problem


def test_owns_only_its_marked_device() -> None:
    overlay = _overlay(VxlanConfig(vni=4242, local=IP("192.0.2.11")))
    assert overlay.owns(_link(5, "vx4242", alias=VXLAN_MARK))
    assert not overlay.owns(_link(5, "vx4242"))  # another tool's device of that name
    assert not overlay.owns(_link(6, "vx7", alias=VXLAN_MARK))


def test_peer_log_says_the_first_changes_and_summarises_churn(
        caplog: pytest.LogCaptureFixture) -> None:
    async def churn() -> None:
        peers = PeerLog(window=0.05, burst=3)
        peer = IP("192.0.2.12")
        for i in range(20):
            peers.changed("vx4242", peer, up=i % 2 == 0, how="learned from BGP EVPN")
        peers.changed("vx4242", IP("192.0.2.13"), up=True, how="learned from BGP EVPN")
        await asyncio.sleep(0.08)  # the first window closes: one summary
        for _ in range(2):  # still churning: only the summary of the next window
            peers.changed("vx4242", peer, up=True, how="learned from BGP EVPN")
        await asyncio.sleep(0.08)  # its summary
        await asyncio.sleep(0.3)  # a window without changes ends quietly
        peers.changed("vx4242", peer, up=False, how="withdrawn by BGP EVPN")
        peers.close()

    with caplog.at_level(logging.INFO, logger="bridged.overlay"):
        asyncio.run(churn())
    lines = [r.getMessage() for r in caplog.records]
    up = "vxlan peer 192.0.2.12 up on vx4242 (learned from BGP EVPN)"
    gone = "vxlan peer 192.0.2.12 gone on vx4242 (learned from BGP EVPN)"
    assert lines == [
        up, gone, up,
        "vxlan peer 192.0.2.13 up on vx4242 (learned from BGP EVPN)",
        "vxlan peer 192.0.2.12 changed 17 more times on vx4242 in the last 0.05 s; now gone "
        "(learned from BGP EVPN)",
        "vxlan peer 192.0.2.12 changed 2 more times on vx4242 in the last 0.05 s; now up "
        "(learned from BGP EVPN)",
        "vxlan peer 192.0.2.12 gone on vx4242 (withdrawn by BGP EVPN)",
    ]
    assert [getattr(r, "BRIDGED_EVENT", None) for r in caplog.records] == \
        ["vxlan-peer-up", "vxlan-peer-gone", "vxlan-peer-up", "vxlan-peer-up",
         "vxlan-peer-churn", "vxlan-peer-churn", "vxlan-peer-gone"]


def test_udev_rules_name_the_vxlan_port(tmp_path: Any) -> None:
    from bridged import udev
    from bridged.config import load

    path = tmp_path / "bridged.toml"
    path.write_text('[vxlan]\nvni = 4242\nlocal = "192.0.2.11"\n')
    assert 'KERNEL=="vx4242", GOTO="bridged_ours"' in udev.render(load(str(path))).splitlines()


def test_fdb_events_during_a_dump_are_applied_after_it_and_told_once(
        caplog: pytest.LogCaptureFixture) -> None:
    from bridged.kernel.events import FdbEvent

    evpn = VxlanConfig(vni=4242, local=IP("192.0.2.11"), control="evpn")
    overlay = _overlay(evpn)
    overlay.device = _link(5, "vx4242", master=1, alias=VXLAN_MARK)
    flood = {dst: _entry("00:00:00:00:00:00", dst) for dst in ("192.0.2.12", "192.0.2.13",
                                                              "192.0.2.14")}
    # Read from the event socket only once the dump was taken: one older than the dump
    # (C's entry was withdrawn before), one newer (D's was installed after).
    queued = [FdbEvent(True, flood["192.0.2.13"]), FdbEvent(False, flood["192.0.2.14"])]

    class Netlink:
        async def fdb(self, index: int) -> list[FdbEntry]:
            assert index == 5
            return [flood["192.0.2.12"]]

    overlay._netlink = Netlink()  # type: ignore[assignment]
    overlay._monitor.drain = lambda: [overlay._fdb_event(e) for e in queued]  # type: ignore[assignment, method-assign]

    async def dump() -> None:
        overlay._fdb_event(FdbEvent(False, flood["192.0.2.13"]))  # before: C was there
        await overlay._dump_fdb(overlay.device)  # type: ignore[arg-type]
        overlay._peers.close()

    with caplog.at_level(logging.INFO, logger="bridged.overlay"):
        asyncio.run(dump())
    assert sorted(str(dst) for _mac, dst in overlay.fdb) == ["192.0.2.12", "192.0.2.14"]
    assert [r.getMessage() for r in caplog.records] == [
        "vxlan peer 192.0.2.13 up on vx4242 (learned from BGP EVPN)",
        "vxlan peer 192.0.2.12 up on vx4242 (learned from BGP EVPN)",
        "vxlan peer 192.0.2.13 gone on vx4242 (withdrawn by BGP EVPN)",
        "vxlan peer 192.0.2.14 up on vx4242 (learned from BGP EVPN)",
    ]
    assert [r.learned for r in overlay.remotes()] == [True, True]
