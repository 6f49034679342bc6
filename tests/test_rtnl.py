"""The link-message decoder agrees with pyroute2's on real kernel messages."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

from bridged.kernel.events import NLMSG_HDR, RTM_NEWLINK
from bridged.kernel.netlink import link_from_msg
from bridged.kernel.rtnl import LinkSocket, decode_link
from tests.lab import Lab

pytestmark = pytest.mark.root


DUMP = """
import socket, struct, sys
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
# nlmsghdr (RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP) + an empty ifinfomsg
sock.send(struct.pack("=IHHII", 32, 18, 0x301, 1, 0) + bytes(16))
out, done = b"", False
while not done:
    chunk = sock.recv(1 << 20)
    out += chunk
    offset = 0
    while offset < len(chunk):
        length, kind = struct.unpack_from("=IH", chunk, offset)
        done |= kind == 3  # NLMSG_DONE
        offset += (length + 3) & ~3
sys.stdout.buffer.write(out)
"""


def dump_links(netns: str) -> bytes:
    """An RTM_GETLINK dump of every link in ``netns``, as the kernel's raw bytes."""
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", DUMP],
                          capture_output=True, check=True).stdout


def test_decoder_matches_pyroute2_on_every_link(lab: Lab):
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    lab.host.ip("link", "add", "br0", "type", "bridge")
    lab.host.ip("link", "set", "eth0", "master", "br0")
    lab.host.ip("link", "set", "eth0", "alias", "uplink: the LAN")
    lab.host.ip("tuntap", "add", "dev", "tap7", "mode", "tap")
    data = dump_links(lab.host.name)
    offset, seen = 0, 0
    while offset + NLMSG_HDR.size <= len(data):
        length, kind, *_ = NLMSG_HDR.unpack_from(data, offset)
        if kind == RTM_NEWLINK:
            msg = ifinfmsg(data[offset:offset + length])
            msg.decode()
            assert decode_link(data, offset, length) == link_from_msg(msg)
            seen += 1
        offset += (length + 3) & ~3
    assert seen >= 4  # lo, eth0, br0, tap7


def test_link_socket_sets_and_reads_back_and_reports_errors(lab: Lab):
    lab.host.ip("link", "add", "br0", "type", "bridge")
    lab.host.ip("link", "add", "vt0", "type", "veth", "peer", "name", "vt1")
    with lab.host.entered():
        sock = LinkSocket()
        try:
            br0 = sock.get_link(socket.if_nametoindex("br0"))
            dummy = socket.if_nametoindex("vt0")
            sock.set_link(dummy, address="fe:00:00:00:00:01", alias="bridged:test",
                          master=br0.index, mtu=1400, up=True)
            link = sock.get_link(dummy)
            assert (link.name, link.address, link.alias, link.master, link.mtu, link.up) == \
                ("vt0", "fe:00:00:00:00:01", "bridged:test", br0.index, 1400, True)
            with pytest.raises(OSError) as missing:
                sock.set_link(999999, up=True)
            assert missing.value.errno == errno.ENODEV, os.strerror(missing.value.errno)
        finally:
            sock.close()
