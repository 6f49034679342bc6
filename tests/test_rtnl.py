"""The rtnetlink encoder/decoder against the real kernel, checked with iproute2."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

from bridged.kernel import rtnl, tun
from bridged.kernel.link import INFINITY_LIFE_TIME, Link, Route
from bridged.kernel.netlink import KernelError, Netlink, TapSpec
from bridged.kernel.rtnl import (
    NLMSGHDR,
    RTM_GETLINK,
    RTM_NEWLINK,
    DumpInterrupted,
    NetlinkError,
    RtnlSocket,
    decode_link,
)
from tests.lab import HOST_V4, HOST_V6, LAN_V4, LAN_V6, Lab, NetNS

pytestmark = pytest.mark.root


def test_decoder_agrees_with_iproute2_on_every_link(lab: Lab):
    lab.host.ip("link", "add", "br0", "type", "bridge")
    lab.host.ip("link", "set", "eth0", "master", "br0")
    lab.host.ip("link", "set", "eth0", "alias", "uplink: the LAN")
    lab.host.ip("tuntap", "add", "dev", "tap7", "mode", "tap")
    lab.host.ip("link", "set", "br0", "up")
    shown = lab.host.links()
    index_names = {link["ifindex"]: name for name, link in shown.items()}
    with lab.host.entered():
        sock = RtnlSocket()
        try:
            messages = sock.dump(RTM_GETLINK, bytes(16))  # the kernel's own bytes
        finally:
            sock.close()
    seen = set()
    for data, offset, length in messages:
        if NLMSGHDR.unpack_from(data, offset)[1] == RTM_NEWLINK:
            link = decode_link(data, offset, length)
            ref = shown[link.name]
            assert link.index == ref["ifindex"]
            mac = ref.get("address", "")
            assert link.address == (mac if len(mac) == 17 else None)
            assert link.mtu == ref["mtu"] and link.operstate == ref["operstate"]
            assert link.up == ("UP" in ref["flags"])
            if link.up:  # carrier shows as LOWER_UP only then
                assert link.carrier == ("LOWER_UP" in ref["flags"])
            assert link.alias == ref.get("ifalias")
            assert link.kind == ref.get("linkinfo", {}).get("info_kind")
            assert (index_names[link.master] if link.master else None) == ref.get("master")
            seen.add(link.name)
    assert seen == set(shown)


def test_requests_change_the_kernel_and_report_errors(lab: Lab):
    lab.host.ip("link", "add", "vt0", "type", "veth", "peer", "name", "vt1")
    with lab.host.entered():
        sock = RtnlSocket()
        try:
            sock.create_bridge("brx", stp=False, forward_delay_cs=300)
            bridge = sock.get_link(name="brx")
            assert bridge is not None and bridge.kind == "bridge"
            vt0 = socket.if_nametoindex("vt0")
            sock.set_link(vt0, address="fe:00:00:00:00:01", alias="bridged:test",
                          master=bridge.index, mtu=1400, up=True)
            link = sock.get_link(vt0)
            assert link is not None
            assert (link.name, link.address, link.alias, link.master, link.mtu, link.up) == \
                ("vt0", "fe:00:00:00:00:01", "bridged:test", bridge.index, 1400, True)
            sock.set_port_isolated(vt0)
            sock.set_link(bridge.index, up=True)
            address = ipaddress.ip_interface("198.51.100.9/24")
            sock.address(bridge.index, address, add=True)
            assert address in {a.interface for a in sock.addresses(bridge.index)}
            route = Route(ipaddress.ip_network("203.0.113.0/24"),
                          ipaddress.ip_address("198.51.100.1"))
            sock.route(bridge.index, route, replace=True)
            routes = sock.routes(bridge.index)
            assert any(r.destination == route.destination and r.gateway == route.gateway
                       for r in routes)
            assert sock.vlan_filtering(bridge.index) is False
            with pytest.raises(OSError) as missing:
                sock.set_link(999999, up=True)
            assert missing.value.errno == errno.ENODEV
            with pytest.raises(OSError) as exists:
                sock.create_bridge("brx", stp=False, forward_delay_cs=0)
            assert exists.value.errno == errno.EEXIST
            assert sock.get_link(name="nosuch0") is None
        finally:
            sock.close()
    details = lab.host.link("brx")["linkinfo"]["info_data"]
    assert details["stp_state"] == 0 and details["forward_delay"] == 300
    assert lab.host.link("vt0")["linkinfo"]["info_slave_data"]["isolated"] is True
    assert "203.0.113.0/24" in {r["dst"] for r in lab.host.routes("-4")}


def test_failed_dumps_raise_instead_of_returning_nothing(lab: Lab):
    with lab.host.entered():
        sock = RtnlSocket()
        try:
            # Strict checking refuses filters it cannot apply: NLMSG_DONE carries the
            # errno and the kernel's words.
            with pytest.raises(NetlinkError) as refused:
                sock.dump(rtnl.RTM_GETADDR, rtnl.IFADDRMSG.pack(socket.AF_INET, 8, 0, 0, 0))
            assert refused.value.errno == errno.EINVAL
            assert refused.value.ext_ack == \
                "ipv4: Invalid values in header for address dump request"
            with pytest.raises(NetlinkError) as refused:
                sock.dump(RTM_GETLINK, rtnl.IFINFOMSG.pack(0, 0, 1, 0, 0))
            assert "Filter by device index not supported" in (refused.value.ext_ack or "")
            # A dump the kernel cannot start at all: NLMSG_ERROR in place of the dump.
            with pytest.raises(NetlinkError) as refused:
                sock.dump(99, bytes(16))
            assert refused.value.errno == errno.EOPNOTSUPP
            # The socket goes on answering correctly afterwards.
            assert {link.name for link in sock.dump_links()} == set(lab.host.links())
        finally:
            sock.close()


def test_refusals_carry_the_kernels_reason(lab: Lab):
    lab.host.ip("link", "add", "br0", "type", "bridge")
    with lab.host.entered():
        sock = RtnlSocket()
        lane = Netlink("test-lane")  # its thread starts here, in the namespace
        try:
            with pytest.raises(NetlinkError) as refused:
                sock.create_bridge("a-name-far-too-long", stp=False, forward_delay_cs=0)
            # The name is the first attribute, right after the headers (16 + 16 bytes).
            assert (refused.value.errno, refused.value.ext_ack, refused.value.ext_ack_offset) \
                == (errno.ERANGE, "Attribute failed policy validation", 32)
            br0 = socket.if_nametoindex("br0")
            with pytest.raises(NetlinkError) as refused:
                sock.set_link(br0, master=br0)
            assert refused.value.ext_ack == "Can not enslave a bridge to a bridge"
            assert str(refused.value).endswith(": Can not enslave a bridge to a bridge")
            unreachable = Route(ipaddress.ip_network("203.0.113.0/24"),
                                ipaddress.ip_address("192.0.2.99"))
            with pytest.raises(KernelError) as wrapped:
                asyncio.run(lane.replace_route(br0, unreachable))
            assert wrapped.value.errno == errno.ENETUNREACH
            assert wrapped.value.reason == "Nexthop has invalid gateway"
            assert "(Nexthop has invalid gateway)" in str(wrapped.value)
        finally:
            lane.close()
            sock.close()


def test_created_taps_report_the_mtu_asked_for_or_the_kernels(lab: Lab):
    lab.host.ip("link", "add", "br0", "type", "bridge")
    with lab.host.entered():
        lane = Netlink("test-lane")  # its thread starts here, in the namespace
        try:
            br0 = socket.if_nametoindex("br0")

            async def make() -> tuple[list[int], dict[str, Any]]:
                specs = [TapSpec(name="tapm0", master=br0, mac="fe:54:00:00:00:01",
                                 alias="test", mtu=1400),
                         TapSpec(name="tapm1", master=br0, mac="fe:54:00:00:00:02",
                                 alias="test")]  # no MTU asked for
                created = await asyncio.gather(*(lane.create_tap(spec) for spec in specs))
                links = lab.host.links()  # while their fds hold them
                for tap in created:
                    tun.close_all(tap.fds)
                return [tap.mtu for tap in created], links

            made, links = asyncio.run(make())
        finally:
            lane.close()
    assert made[0] == links["tapm0"]["mtu"] == 1400
    assert made[1] == links["tapm1"]["mtu"] > 0  # it was 0: the kernel's was read, then dropped


@pytest.mark.parametrize("failing", [1, 2])  # the settings' send, the "up" send
def test_a_creation_whose_send_fails_leaves_nothing_behind(
        lab: Lab, monkeypatch: pytest.MonkeyPatch, failing: int):
    """A batch's send fails as a whole (its acks overran the socket, say): every tap in
    it is undone, none left on the bridge, no fd kept."""
    lab.host.ip("link", "add", "br0", "type", "bridge")
    real, calls = RtnlSocket.changes, []

    def changes(self: RtnlSocket, requests: list[tuple[int, int, bytes]]) -> Any:
        calls.append(len(requests))
        if len(calls) == failing:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return real(self, requests)

    monkeypatch.setattr(RtnlSocket, "changes", changes)
    fds_before = len(os.listdir("/proc/self/fd"))
    with lab.host.entered():
        lane = Netlink("test-lane")
        try:
            br0 = socket.if_nametoindex("br0")

            async def make() -> list[Any]:
                return await asyncio.gather(
                    *(lane.create_tap(TapSpec(name=f"tapm{n}", master=br0, alias="test",
                                              mac=f"fe:54:00:00:00:0{n + 1}",
                                              persistent_owner=0 if n else None))
                      for n in range(2)), return_exceptions=True)

            results = asyncio.run(make())
        finally:
            lane.close()
    assert calls[0] == 2, "both taps went in one send"
    assert all(isinstance(r, KernelError) and r.errno == errno.ENOBUFS for r in results)
    assert not [name for name in lab.host.links() if name.startswith("tapm")]
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_a_tap_below_ipv6s_mtu_is_configured_in_one_go(lab: Lab,
                                                       monkeypatch: pytest.MonkeyPatch):
    """Below 1280 the kernel takes IPv6 off the link as it sets the MTU: the setting
    that would refuse (after applying the rest) is not asked for."""
    lab.host.ip("link", "add", "br0", "type", "bridge")
    real, refusals = RtnlSocket.changes, []

    def changes(self: RtnlSocket, requests: list[tuple[int, int, bytes]]) -> Any:
        errors = real(self, requests)
        refusals.extend(e for e in errors if e is not None)
        return errors

    monkeypatch.setattr(RtnlSocket, "changes", changes)
    with lab.host.entered():
        lane = Netlink("test-lane")
        try:
            br0 = socket.if_nametoindex("br0")

            async def make() -> None:
                tap = await lane.create_tap(TapSpec(name="tapm0", master=br0, alias="test",
                                                    mac="fe:54:00:00:00:01", mtu=576))
                tun.close_all(tap.fds)

            asyncio.run(make())
        finally:
            lane.close()
    assert refusals == []


class DisturbedSocket:
    """A real netlink socket; after the first datagram of each of the first ``times``
    requests, ``change`` runs, as another program changing links mid-dump would."""

    def __init__(self, change: Callable[[], None], times: int) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._change = change
        self._times = times
        self._fresh = False
        self.requests = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def send(self, data: bytes) -> int:
        self.requests += 1
        self._fresh = True
        return self._sock.send(data)

    def recvmsg(self, size: int) -> Any:
        reply = self._sock.recvmsg(size)
        if self._fresh and self.requests <= self._times:
            self._fresh = False
            self._change()
        return reply


def test_inconsistent_dump_is_taken_again(lab: Lab):
    # Enough links that a dump takes several datagrams (about 2 KB a link, 32 KB each).
    for i in range(24):
        lab.host.ip("link", "add", f"va{i}", "type", "veth", "peer", "name", f"vb{i}")
    added = []

    def add_link() -> None:
        added.append(f"vx{len(added)}")
        lab.host.ip("link", "add", added[-1], "type", "veth", "peer", "name", f"vy{len(added)}")

    with lab.host.entered():
        disturbed = DisturbedSocket(add_link, times=1)
        sock = RtnlSocket(disturbed)  # type: ignore[arg-type]
        try:
            links = sock.dump_links()
        finally:
            sock.close()
        assert disturbed.requests == 2, "the kernel did not mark the dump inconsistent"
        assert sorted(link.name for link in links) == sorted(lab.host.links())
        assert len(links) == len({link.index for link in links})

        disturbed = DisturbedSocket(add_link, times=rtnl.DUMP_ATTEMPTS)
        sock = RtnlSocket(disturbed)  # type: ignore[arg-type]
        try:
            with pytest.raises(DumpInterrupted) as gave_up:
                sock.dump_links()
        finally:
            sock.close()
        assert disturbed.requests == rtnl.DUMP_ATTEMPTS
        assert gave_up.value.errno == errno.EAGAIN


def test_sequence_numbers_wrap_and_stale_replies_are_skipped(lab: Lab):
    with lab.host.entered():
        sock = RtnlSocket()
        try:
            sock._seq = 0xFFFFFFFE
            # A dump nobody reads (seq 2**32-1): its replies arrive before the next ones.
            sock._send(RTM_GETLINK, rtnl.NLM_F_DUMP, rtnl.IFINFOMSG.pack(0, 0, 0, 0, 0))
            with pytest.raises(NetlinkError) as missing:  # seq 1: 0 is skipped
                sock.set_link(999999, up=True)
            assert missing.value.errno == errno.ENODEV
            assert sorted(link.name for link in sock.dump_links()) == sorted(lab.host.links())
            assert sock._seq == 2
        finally:
            sock.close()


def _routes_through(ns: NetNS, name: str) -> list[dict[str, Any]]:
    """iproute2's view of the main-table routes through ``name`` that are not the
    kernel's own, with ``name`` spelt "DEV" so that two interfaces' views compare."""
    found = []
    for family in ("-4", "-6"):
        for route in ns.routes(family, "-d"):
            hops = route.get("nexthops", [])
            if route.get("protocol") == "kernel" or \
                    name not in [route.get("dev")] + [hop["dev"] for hop in hops]:
                continue
            found.append(json.loads(json.dumps(route).replace(f'"{name}"', '"DEV"')))
    return sorted(found, key=lambda r: json.dumps(r, sort_keys=True))


def test_routes_move_to_another_interface_as_they_were(lab: Lab):
    lab.classic_host_config()  # addresses and the default route on eth0
    host = lab.host
    host.ip("link", "add", "br0", "type", "bridge")
    host.ip("link", "set", "br0", "up")
    host.ip("link", "set", "eth0", "master", "br0")  # the bridge gets the uplink's carrier
    host.ip("addr", "add", f"{HOST_V4}/24", "dev", "br0")
    host.ip("addr", "add", f"{HOST_V6}/64", "dev", "br0", "nodad")
    host.ip("link", "add", "vt0", "type", "veth", "peer", "name", "vt1")
    host.ip("link", "set", "vt0", "up")
    host.ip("link", "set", "vt1", "up")
    host.ip("route", "add", "203.0.113.0/24", "via", LAN_V4, "dev", "eth0",
            "mtu", "1400", "advmss", "1300", "onlink")
    host.ip("route", "add", "192.0.2.0/25", "dev", "eth0", "src", HOST_V4, "metric", "50")
    host.ip("route", "add", "203.0.113.128/25", "via", LAN_V4, "dev", "eth0", "tos", "0x10")
    host.ip("route", "add", "192.0.2.128/25", "nexthop", "via", LAN_V4, "dev", "eth0",
            "weight", "2", "nexthop", "via", "198.51.100.254", "dev", "vt0", "onlink")
    host.ip("-6", "route", "add", "2001:db8:5::/48", "via", LAN_V6, "dev", "eth0",
            "metric", "512", "pref", "high", "mtu", "1300")
    host.ip("-6", "route", "add", "2001:db8:6::/48", "nexthop", "via", "fe80::1", "dev",
            "eth0", "nexthop", "via", "fe80::2", "dev", "vt0")
    host.ip("-6", "route", "add", "2001:db8:7::/48", "via", LAN_V6, "dev", "eth0",
            "expires", "300")
    before = _routes_through(host, "eth0")
    assert len(before) == 8
    with host.entered():
        sock = RtnlSocket()
        try:
            eth0, br0 = socket.if_nametoindex("eth0"), socket.if_nametoindex("br0")
            moving = [r for r in sock.routes(eth0) if r.protocol != 2]  # not RTPROT_KERNEL
            assert len(moving) == 8 and sum(bool(r.multipath) for r in moving) == 2
            for route in moving:
                sock.route(br0, route, replace=True, instead_of=eth0)
            # Re-created with the same key (destination, metric, table), each replaced
            # its original in place; what might be left through eth0 is deleted.
            for route in sock.routes(eth0):
                if route.protocol != 2:
                    sock.route(eth0, route, replace=False)
        finally:
            sock.close()
    after = _routes_through(host, "br0")
    assert _routes_through(host, "eth0") == []
    expiring = [(a.pop("expires"), b.pop("expires")) for a, b in zip(after, before, strict=True)
                if "expires" in b]
    assert after == before, "a moved route lost or changed something"
    assert len(expiring) == 1 and abs(expiring[0][0] - expiring[0][1]) <= 5


def test_dynamic_addresses_keep_their_lifetimes_when_moved(lab: Lab):
    host = lab.host
    host.ip("addr", "add", "198.51.100.50/24", "dev", "eth0", "valid_lft", "300",
            "preferred_lft", "200")
    host.ip("addr", "add", "198.51.100.60/24", "dev", "eth0", "noprefixroute")
    host.ip("-6", "addr", "add", "2001:db8::50/64", "dev", "eth0", "valid_lft", "600",
            "preferred_lft", "400", "nodad")
    host.ip("link", "add", "br0", "type", "bridge")
    host.ip("link", "set", "br0", "up")
    with host.entered():
        sock = RtnlSocket()
        lane = Netlink("test-lane")
        try:
            eth0, br0 = socket.if_nametoindex("eth0"), socket.if_nametoindex("br0")
            moving = [a for a in sock.addresses(eth0) if a.is_global]
            leased = {str(a.interface): a for a in moving if not a.is_permanent}
            assert set(leased) == {"198.51.100.50/24", "2001:db8::50/64"}
            assert 195 <= leased["198.51.100.50/24"].preferred_lft <= 200
            assert 295 <= leased["198.51.100.50/24"].valid_lft <= 300

            async def move() -> None:
                for address in moving:
                    await lane.add_address(br0, address, nodad=True)
                    await lane.delete_address(eth0, address.interface)

            asyncio.run(move())
        finally:
            lane.close()
            sock.close()
    shown = json.loads(host.ip("-j", "addr", "show", "dev", "br0").stdout)[0]["addr_info"]
    on_bridge = {f"{a['local']}/{a['prefixlen']}": a for a in shown if a["scope"] == "global"}
    assert set(on_bridge) == {"198.51.100.50/24", "198.51.100.60/24", "2001:db8::50/64"}
    v4, v6 = on_bridge["198.51.100.50/24"], on_bridge["2001:db8::50/64"]
    assert 290 <= v4["valid_life_time"] <= 300 and 190 <= v4["preferred_life_time"] <= 200
    assert 590 <= v6["valid_life_time"] <= 600 and 390 <= v6["preferred_life_time"] <= 400
    assert v4.get("dynamic") and v6.get("dynamic") and not v6.get("tentative")
    static = on_bridge["198.51.100.60/24"]
    assert static.get("noprefixroute") and static["valid_life_time"] == INFINITY_LIFE_TIME
    assert host.addresses("eth0") == set()


def test_monitor_hands_on_every_news_in_order_and_no_port_notices(lab: Lab):
    """A link's news, however soon a newer one follows (a flip over by the next message
    is still news), each removal with the news before it, and the bridge's AF_BRIDGE port
    notices not at all (they are the bridge's view of a port, not the link)."""
    from bridged.kernel.events import LinkEvent, LinkMonitor

    seen: list[LinkEvent] = []
    with lab.host.entered():
        monitor = LinkMonitor(seen.append, on_overrun=lambda: pytest.fail("overran"))

        async def main() -> None:
            lab.host.ip("link", "add", "br9", "type", "bridge")
            lab.host.ip("tuntap", "add", "dev", "tap9", "mode", "tap")
            monitor.start()
            try:
                lab.host.ip("link", "set", "br9", "up")
                lab.host.ip("link", "set", "br9", "down")
                lab.host.ip("link", "set", "br9", "up")
                lab.host.ip("link", "set", "tap9", "master", "br9")  # AF_BRIDGE notices too
                lab.host.ip("link", "set", "tap9", "mtu", "1300")
                lab.host.ip("link", "del", "tap9")
                monitor.drain()
            finally:
                monitor.stop()

        asyncio.run(main())
    br9 = [e.link.up for e in seen if e.link.name == "br9" and not e.removed]
    assert [up for i, up in enumerate(br9) if i == 0 or br9[i - 1] != up] == [True, False, True]
    tap9 = [(e.removed, e.link.mtu) for e in seen if e.link.name == "tap9"]
    assert tap9[-2:] == [(False, 1300), (True, 1300)]
    assert all(e.link.family != rtnl.AF_BRIDGE for e in seen)


def test_a_tap_whose_last_fd_closes_goes_down_without_carrier(lab: Lab):
    """The kernel's news that tells a dying tap from one set down by someone: unregistering
    a tap whose last fd closed, it first reports the tap down (RTM_NEWLINK) and without
    carrier, a few milliseconds before RTM_DELLINK; a tap set down while a fd holds it
    keeps its carrier. bridged puts the second back up and leaves the first alone."""
    from bridged.kernel.events import LinkEvent, LinkMonitor

    seen: list[LinkEvent] = []
    with lab.host.entered():
        monitor = LinkMonitor(seen.append, on_overrun=lambda: pytest.fail("overran"))

        async def main() -> None:
            lab.host.ip("link", "add", "br9", "type", "bridge")
            lab.host.ip("link", "set", "br9", "up")
            fds = [tun.open_tap(name, vnet_hdr=False)[0] for name in ("tap8", "tap9")]
            for name in ("tap8", "tap9"):
                lab.host.ip("link", "set", name, "master", "br9", "up")
            monitor.start()
            try:
                lab.host.ip("link", "set", "tap8", "down")  # someone, with qemu attached
                for fd in fds:
                    os.close(fd)
                monitor.drain()
            finally:
                monitor.stop()

        asyncio.run(main())
    down: dict[str, Link] = {}  # the first news of each tap down
    for e in seen:
        if not e.removed and not e.link.up:
            down.setdefault(e.link.name, e.link)
    assert down["tap8"].carrier is True and down["tap8"].master is not None
    assert down["tap9"].carrier is False and down["tap9"].master is not None
    assert [e.link.name for e in seen if e.removed] == ["tap8", "tap9"]


def test_the_port_notice_filter_drops_those_and_nothing_else(lab: Lab):
    """Two event sockets on the same groups, one with the filter: the filtered one gets
    exactly the other's datagrams, in order, but the bridge's AF_BRIDGE port notices."""
    from bridged.kernel import sockfilter
    from bridged.kernel.events import (
        RTMGRP_IPV4_IFADDR,
        RTMGRP_IPV6_IFADDR,
        RTMGRP_LINK,
        event_socket,
    )

    groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
    with lab.host.entered():
        plain, filtered = event_socket(groups=groups), event_socket(groups=groups)
    sockfilter.drop_port_notices(filtered)
    host = lab.host
    try:
        host.ip("link", "add", "br9", "type", "bridge")
        host.ip("link", "set", "br9", "up")
        host.ip("tuntap", "add", "dev", "tap9", "mode", "tap")
        host.ip("link", "set", "tap9", "master", "br9")
        host.ip("link", "set", "tap9", "up", "mtu", "1400")
        host.ip("addr", "add", "198.51.100.9/24", "dev", "br9")
        host.ip("addr", "add", "2001:db8::9/64", "dev", "br9", "nodad")
        host.ip("link", "set", "tap9", "nomaster")
        host.ip("link", "set", "tap9", "master", "br9")
        host.ip("link", "del", "tap9")
        host.ip("link", "del", "br9")

        def read(sock: socket.socket) -> list[bytes]:
            out = []
            while True:
                try:
                    out.append(sock.recv(1 << 16))
                except BlockingIOError:
                    return out

        got, everything = read(filtered), read(plain)
    finally:
        plain.close()
        filtered.close()
    notices = [d for d in everything if d[16] == rtnl.AF_BRIDGE]
    assert len(notices) >= 4 and all(
        rtnl.messages(d)[0][0] in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK) for d in notices)
    assert got == [d for d in everything if d[16] != rtnl.AF_BRIDGE]
    assert any(rtnl.messages(d)[0][0] == rtnl.RTM_NEWADDR for d in got)


def test_many_changes_at_once_fit_a_default_receive_buffer(lab: Lab):
    """Each request in a batch brings an ack; 3000 at once (a thousand taps released, and
    their group moves) overran a socket with Debian's default net.core.rmem_max (208
    KiB, doubled) until they went in parts."""
    lab.host.ip("link", "add", "br9", "type", "bridge")
    with lab.host.entered():
        sock = RtnlSocket()
        try:
            sock._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 212992)
            index = socket.if_nametoindex("br9")
            errors = sock.changes([rtnl.set_link_request(index, mtu=1400 + n % 2)
                                   for n in range(3000)])
        finally:
            sock.close()
    assert errors == [None] * 3000
