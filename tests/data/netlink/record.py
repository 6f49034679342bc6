#!/usr/bin/python3
"""Records the kernel's rtnetlink bytes that tests/test_rtnl_unit.py decodes without root.

Run as root: ``tests/data/netlink/record.py``. It moves itself into a network namespace
of its own (nothing on the machine's network is touched, and the namespace dies with
the process), builds links, addresses and routes of the kinds the daemon meets, then
writes next to itself:

- ``links.bin``, ``bridge-ports.bin``, ``addresses.bin``, ``routes.bin``: every message
  of a dump, as the kernel sent it (netlink messages back to back, 4-byte aligned);
- ``errors.bin``: the kernel's refusals, acks and a failed dump's NLMSG_DONE, read from
  a socket with extended acks on (with and without NETLINK_CAP_ACK);
- ``*.json``: what iproute2 (``ip -j``) showed of the same objects, a second oracle;
- ``fdb.bin`` / ``fdb.json``: then, with VXLAN forwarding database entries added (flood
  entries, an ``extern_learn`` MAC as FRR installs them, other ports and VNIs, an IPv6
  VXLAN device), every AF_BRIDGE neighbour, and what bridge(8) showed of them.

Re-running it replaces them all; lifetimes and ifindexes will differ, which the tests
allow for since they compare each file with its own oracles.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent.parent))

from bridged.kernel import rtnl  # noqa: E402

CLONE_NEWNET = 0x40000000
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def enter_own_namespace() -> None:
    before = os.stat("/proc/self/ns/net").st_ino
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) (run as root)")
    assert os.stat("/proc/self/ns/net").st_ino != before, "still in the machine's namespace"


def build() -> None:
    ip("link", "set", "lo", "up")
    ip("link", "add", "br0", "address", "02:00:00:00:01:00", "type", "bridge")
    ip("link", "add", "vt0", "address", "02:00:00:00:02:00", "type", "veth",
       "peer", "name", "vt1", "address", "02:00:00:00:02:01")
    ip("link", "set", "vt0", "master", "br0", "alias", "uplink: the LAN")
    ip("tuntap", "add", "dev", "tap0", "mode", "tap")
    ip("link", "set", "tap0", "address", "02:00:00:00:03:00", "master", "br0",
       "alias", "bridged:1000:vm0", "mtu", "1400")
    ip("link", "add", "mv0", "link", "vt1", "type", "macvlan", "mode", "bridge")
    ip("link", "add", "mvt0", "link", "vt1", "type", "macvtap", "mode", "bridge")
    ip("link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789",
       "local", "192.0.2.1", "nolearning")
    ip("link", "add", "ifb0", "type", "ifb")
    for name in ("br0", "vt0", "vt1", "tap0", "mv0"):
        ip("link", "set", name, "up")
    # Addresses: permanent, dynamic (lifetimes), deprecated, no prefix route, metric.
    ip("addr", "add", "198.51.100.2/24", "brd", "+", "dev", "br0")
    ip("addr", "add", "198.51.100.50/24", "dev", "br0", "valid_lft", "300",
       "preferred_lft", "200")
    ip("addr", "add", "198.51.100.60/24", "dev", "br0", "valid_lft", "100",
       "preferred_lft", "0")
    ip("addr", "add", "192.0.2.1/24", "dev", "vt1", "noprefixroute")
    ip("addr", "add", "192.0.2.200/25", "dev", "mv0", "metric", "77")
    ip("-6", "addr", "add", "2001:db8::2/64", "dev", "br0", "nodad")
    ip("-6", "addr", "add", "2001:db8::50/64", "dev", "br0", "nodad", "valid_lft", "600",
       "preferred_lft", "300")
    ip("-6", "addr", "add", "2001:db8:1::9/64", "dev", "vt1")  # duplicate detection runs
    ip("-6", "addr", "add", "2001:db8:9::1/64", "dev", "tap0")  # tentative: no carrier
    # Routes: gateway, metrics + onlink, prefsrc, multipath, an IPv6 gateway for IPv4,
    # another table, a blackhole; IPv6 with pref, expiry, multipath, metrics.
    ip("route", "add", "default", "via", "198.51.100.1", "dev", "br0", "proto", "static",
       "metric", "100")
    ip("route", "add", "203.0.113.0/24", "via", "198.51.100.254", "dev", "br0",
       "mtu", "1400", "advmss", "1300", "onlink")
    ip("route", "add", "192.0.2.128/25", "dev", "br0", "src", "198.51.100.2")
    ip("route", "add", "192.0.2.64/26", "nexthop", "via", "198.51.100.1", "dev", "br0",
       "weight", "1", "nexthop", "via", "192.0.2.254", "dev", "vt1", "onlink", "weight", "3")
    ip("route", "add", "192.0.2.32/27", "via", "inet6", "fe80::1", "dev", "br0")
    ip("route", "add", "203.0.113.128/25", "via", "198.51.100.1", "dev", "br0", "tos", "0x10")
    ip("route", "add", "198.51.100.128/25", "dev", "br0", "table", "100")
    ip("route", "add", "blackhole", "203.0.113.200/32")
    ip("-6", "route", "add", "2001:db8:1::/48", "via", "2001:db8::1", "dev", "br0",
       "metric", "512", "pref", "high")
    ip("-6", "route", "add", "2001:db8:2::/48", "via", "2001:db8::1", "dev", "br0",
       "expires", "600")
    ip("-6", "route", "add", "2001:db8:3::/48", "nexthop", "via", "fe80::1", "dev", "br0",
       "nexthop", "via", "fe80::2", "dev", "vt1")
    ip("-6", "route", "add", "2001:db8:4::/48", "dev", "br0", "mtu", "1300", "hoplimit", "10")
    ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "br0", "proto", "ra")


def build_fdb() -> None:
    """After the other recordings (which therefore do not show vx6)."""
    ip("link", "add", "vx6", "type", "vxlan", "id", "43", "dstport", "4789",
       "local", "2001:db8::1", "nolearning")
    ip("link", "set", "vx0", "master", "br0")
    for args in (
            ("append", "00:00:00:00:00:00", "dev", "vx0", "dst", "192.0.2.5", "self",
             "permanent"),
            ("append", "00:00:00:00:00:00", "dev", "vx0", "dst", "192.0.2.6", "self",
             "permanent"),
            ("add", "02:00:00:00:05:01", "dev", "vx0", "dst", "192.0.2.5", "self",
             "extern_learn"),
            ("add", "02:00:00:00:05:02", "dev", "vx0", "dst", "192.0.2.6", "self",
             "permanent", "port", "4790", "vni", "44"),
            ("add", "02:00:00:00:05:03", "dev", "vx0", "master", "static"),
            ("append", "00:00:00:00:00:00", "dev", "vx6", "dst", "2001:db8::5", "self",
             "permanent")):
        bridge("fdb", *args)


def bridge(*args: str) -> str:
    done = subprocess.run(["bridge", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bridge {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def wait_for_duplicate_detection() -> None:
    """Until only the address on the link without carrier is still tentative."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tentative = [a["local"] for link in json.loads(ip("-j", "addr", "show"))
                     for a in link["addr_info"] if a.get("tentative")]
        if tentative == ["2001:db8:9::1"]:
            return
        time.sleep(0.1)
    raise SystemExit(f"duplicate detection did not finish: {tentative} still tentative")


def dump(sock: rtnl.RtnlSocket, msg_type: int, body: bytes) -> bytes:
    out = b""
    for data, offset, length in sock.dump(msg_type, body):
        message = data[offset:offset + length]
        out += message + bytes(-len(message) % 4)
    return out


class RawSocket:
    """A netlink socket with extended acks, returning the kernel's reply bytes as-is."""

    def __init__(self, cap_ack: bool) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(rtnl.SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.setsockopt(rtnl.SOL_NETLINK, NETLINK_CAP_ACK, int(cap_ack))
        self.sock.setsockopt(rtnl.SOL_NETLINK, rtnl.NETLINK_GET_STRICT_CHK, 1)
        self.sock.bind((0, 0))
        self.seq = 1000

    def ask(self, msg_type: int, flags: int, body: bytes) -> bytes:
        """The last message answering one request (the ack, the error or the DONE)."""
        self.seq += 1
        self.sock.send(rtnl.NLMSGHDR.pack(rtnl.NLMSGHDR.size + len(body), msg_type,
                                          rtnl.NLM_F_REQUEST | flags, self.seq, 0) + body)
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind in (rtnl.NLMSG_ERROR, rtnl.NLMSG_DONE):
                    message = data[offset:offset + length]
                    return message + bytes(-len(message) % 4)
                offset += (length + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + bytes(-len(payload) % 4)


def record_errors() -> bytes:
    br0 = socket.if_nametoindex("br0")
    own_master = rtnl.IFINFOMSG.pack(0, 0, br0, 0, 0) + attr(rtnl.IFLA_MASTER,
                                                             struct.pack("=I", br0))
    too_big_mtu = rtnl.IFINFOMSG.pack(0, 0, br0, 0, 0) + attr(rtnl.IFLA_MTU,
                                                              struct.pack("=I", 99999))
    unreachable_gateway = (
        rtnl.RTMSG.pack(socket.AF_INET, 24, 0, 0, rtnl.RT_TABLE_MAIN, 3, 0, rtnl.RTN_UNICAST, 0)
        + attr(rtnl.RTA_DST, bytes([203, 0, 113, 0]))
        + attr(rtnl.RTA_OIF, struct.pack("=I", br0))
        + attr(rtnl.RTA_GATEWAY, bytes([192, 0, 2, 99])))
    short_mtu = rtnl.IFINFOMSG.pack(0, 0, br0, 0, 0) + attr(rtnl.IFLA_MTU, b"\x01\x02")
    bad_dump_filter = rtnl.IFADDRMSG.pack(socket.AF_INET, 8, 0, 0, 0)
    out = b""
    for cap_ack in (True, False):
        sock = RawSocket(cap_ack)
        out += sock.ask(rtnl.RTM_NEWLINK, rtnl.NLM_F_ACK, own_master)
        out += sock.ask(rtnl.RTM_NEWLINK, rtnl.NLM_F_ACK, too_big_mtu)
        out += sock.ask(rtnl.RTM_NEWLINK, rtnl.NLM_F_ACK, short_mtu)  # points at the byte
        out += sock.ask(rtnl.RTM_NEWROUTE, rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE,
                        unreachable_gateway)
        out += sock.ask(rtnl.RTM_GETADDR, rtnl.NLM_F_DUMP, bad_dump_filter)
        out += sock.ask(rtnl.RTM_NEWLINK, rtnl.NLM_F_ACK,  # a plain ack
                        rtnl.IFINFOMSG.pack(0, 0, br0, rtnl.IFF_UP, rtnl.IFF_UP))
        sock.sock.close()
    return out


def iproute2_view() -> dict[str, object]:
    return {
        "links.json": json.loads(ip("-j", "-d", "link", "show")),
        "addresses.json": json.loads(ip("-j", "addr", "show")),
        "routes.json": json.loads(ip("-j", "-d", "-4", "route", "show", "table", "all"))
        + json.loads(ip("-j", "-d", "-6", "route", "show", "table", "all")),
    }


def settled(view: dict[str, object]) -> str:
    """The view without what counts down, to see whether anything changed meanwhile."""
    text = json.dumps(view, sort_keys=True)
    text = re.sub(r'"(valid_life_time|preferred_life_time|expires|\w+_timer)": [\d.]+',
                  r'"\1": 0', text)
    return text


def main() -> None:
    enter_own_namespace()
    build()
    wait_for_duplicate_detection()
    # The bytes and iproute2's view must show the same state: take both until nothing
    # (duplicate detection, link-local addresses) changed between two views around them.
    for _attempt in range(20):
        before = iproute2_view()
        files = record()
        oracles = iproute2_view()
        if settled(before) == settled(oracles):
            break
        time.sleep(0.2)
    else:
        raise SystemExit("the namespace kept changing; nothing recorded")
    build_fdb()
    sock = rtnl.RtnlSocket()
    files["fdb.bin"] = dump(sock, rtnl.RTM_GETNEIGH, rtnl.NDMSG.pack(rtnl.AF_BRIDGE, 0, 0, 0, 0))
    sock.close()
    oracles["fdb.json"] = {"fdb": json.loads(bridge("-j", "-d", "fdb", "show")),
                           "ifindex": {link["ifname"]: link["ifindex"]
                                       for link in json.loads(ip("-j", "link", "show"))}}
    for name, data in files.items():
        (HERE / name).write_bytes(data)
    for name, value in oracles.items():
        (HERE / name).write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    print("recorded:", ", ".join(f"{n} ({len(d)} bytes)" for n, d in files.items()))


def record() -> dict[str, bytes]:
    sock = rtnl.RtnlSocket()
    files = {
        "links.bin": dump(sock, rtnl.RTM_GETLINK, rtnl.IFINFOMSG.pack(0, 0, 0, 0, 0)),
        "bridge-ports.bin": dump(sock, rtnl.RTM_GETLINK,
                                 rtnl.IFINFOMSG.pack(rtnl.AF_BRIDGE, 0, 0, 0, 0)),
        "addresses.bin": dump(sock, rtnl.RTM_GETADDR, rtnl.IFADDRMSG.pack(0, 0, 0, 0, 0)),
        "routes.bin": b"".join(
            dump(sock, rtnl.RTM_GETROUTE, rtnl.RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))
            for family in (socket.AF_INET, socket.AF_INET6)),
        "errors.bin": record_errors(),
    }
    sock.close()
    return files


if __name__ == "__main__":
    main()
