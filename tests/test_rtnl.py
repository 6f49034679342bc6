"""The rtnetlink encoder/decoder against the real kernel, checked with iproute2."""

from __future__ import annotations

import errno
import ipaddress
import socket

import pytest

from bridged.kernel.link import Route
from bridged.kernel.rtnl import NLMSGHDR, RTM_GETLINK, RTM_NEWLINK, RtnlSocket, decode_link
from tests.lab import Lab

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
