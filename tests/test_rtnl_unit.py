"""The rtnetlink codec without root: recorded kernel bytes, decoded and compared field by
field with pyroute2 and with what iproute2 showed of the same objects; and the request
loop (dump errors, inconsistent dumps, extended acks, sequence numbers) against a
scripted socket replaying recorded kernel replies.

The bytes come from tests/data/netlink/record.py (run as root to re-record).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import json
import pickle
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bridged.kernel import rtnl
from bridged.kernel.link import INFINITY_LIFE_TIME, RTNH_F_ONLINK, NextHop, Route
from bridged.kernel.netlink import KernelError, Netlink
from bridged.kernel.rtnl import (
    NLMSGHDR,
    DecodeError,
    DumpInterrupted,
    NetlinkError,
    RtnlSocket,
    decode_address,
    decode_error,
    decode_link,
    decode_metrics,
    decode_route,
    encode_route,
    messages,
)

DATA = Path(__file__).resolve().parent / "data" / "netlink"
# linux/rtnetlink.h: RTAX_* in order, as pyroute2 names them.
RTAX_NAMES = ["RTAX_UNSPEC", "RTAX_LOCK", "RTAX_MTU", "RTAX_WINDOW", "RTAX_RTT", "RTAX_RTTVAR",
              "RTAX_SSTHRESH", "RTAX_CWND", "RTAX_ADVMSS", "RTAX_REORDERING", "RTAX_HOPLIMIT",
              "RTAX_INITCWND", "RTAX_FEATURES", "RTAX_RTO_MIN", "RTAX_INITRWND",
              "RTAX_QUICKACK", "RTAX_CC_ALGO", "RTAX_FASTOPEN_NO_COOKIE"]
# What iproute2 calls the numbers (its rt_tables, rt_protos, rt_scopes, route types).
TABLES = {253: "default", 254: "main", 255: "local"}
PROTOCOLS = {2: "kernel", 3: "boot", 4: "static", 9: "ra", 16: "dhcp"}
SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
         6: "blackhole", 7: "unreachable", 8: "prohibit"}
PREFS = {0: "medium", 1: "high", 3: "low"}
RTNH_F_LINKDOWN = 0x10


def recorded(name: str) -> list[bytes]:
    """Each message of a recorded file, on its own."""
    data = (DATA / name).read_bytes()
    found = messages(data)
    assert found, f"{name} holds no messages"
    end = found[-1][2] + found[-1][3]
    assert end + (-end % 4) == len(data), f"{name} has bytes after its last message"
    return [data[offset:offset + length] for _kind, _seq, offset, length in found]


def oracle(name: str) -> Any:
    return json.loads((DATA / name).read_text())


@pytest.fixture(scope="module")
def pyroute2() -> ModuleType:
    module = pytest.importorskip("pyroute2")
    # The message classes pyroute2 decodes rtnetlink with (0.7 and 0.9 alike).
    from pyroute2.netlink.rtnl import ifaddrmsg, ifinfmsg, rtmsg  # noqa: F401
    return module


def _p2(cls_path: str, message: bytes) -> Any:
    module_name, cls_name = cls_path.rsplit(".", 1)
    module = __import__(module_name, fromlist=[cls_name])
    msg = getattr(module, cls_name)(message)
    msg.decode()
    return msg


# --- decoded against pyroute2 ---------------------------------------------------------


def test_links_agree_with_pyroute2(pyroute2: ModuleType) -> None:
    checked = 0
    for name in ("links.bin", "bridge-ports.bin"):
        for message in recorded(name):
            link = decode_link(message, 0, len(message))
            ref = _p2("pyroute2.netlink.rtnl.ifinfmsg.ifinfmsg", message)
            mac = ref.get_attr("IFLA_ADDRESS")
            perm = ref.get_attr("IFLA_PERM_ADDRESS")
            assert (link.index, link.name, link.family) == \
                (ref["index"], ref.get_attr("IFLA_IFNAME"), ref["family"])
            assert link.kind == ref.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"), link.name
            assert link.master == (ref.get_attr("IFLA_MASTER") or None), link.name
            assert link.up == bool(ref["flags"] & 1), link.name
            assert link.operstate == (ref.get_attr("IFLA_OPERSTATE") or "UNKNOWN"), link.name
            assert link.mtu == (ref.get_attr("IFLA_MTU") or 0), link.name
            assert link.address == (mac if mac and len(mac) == 17 else None), link.name
            assert link.perm_address == (perm if perm and perm != "00:00:00:00:00:00"
                                         else None), link.name
            assert link.alias == (ref.get_attr("IFLA_IFALIAS") or None), link.name
            checked += 1
    assert checked == len(oracle("links.json")) + 2  # and the two bridge ports


def test_permanent_address_agrees_with_pyroute2(pyroute2: ModuleType) -> None:
    # Virtual links have none, so a recorded message gets one appended.
    message = recorded("links.bin")[1]
    message += rtnl._attr(rtnl.IFLA_PERM_ADDRESS, bytes.fromhex("0a1b2c3d4e5f"))
    message = NLMSGHDR.pack(len(message), *NLMSGHDR.unpack_from(message)[1:]) + message[16:]
    ref = _p2("pyroute2.netlink.rtnl.ifinfmsg.ifinfmsg", message)
    assert decode_link(message, 0, len(message)).perm_address == \
        ref.get_attr("IFLA_PERM_ADDRESS") == "0a:1b:2c:3d:4e:5f"


def test_addresses_agree_with_pyroute2(pyroute2: ModuleType) -> None:
    for message in recorded("addresses.bin"):
        decoded = decode_address(message, 0, len(message))
        assert decoded is not None
        index, address = decoded
        ref = _p2("pyroute2.netlink.rtnl.ifaddrmsg.ifaddrmsg", message)
        ip = ref.get_attr("IFA_LOCAL") or ref.get_attr("IFA_ADDRESS")
        cache = ref.get_attr("IFA_CACHEINFO")
        assert index == ref["index"]
        assert address.interface == ipaddress.ip_interface(f"{ip}/{ref['prefixlen']}")
        assert address.interface.version == (4 if ref["family"] == socket.AF_INET else 6)
        assert address.scope == ref["scope"]
        flags = ref.get_attr("IFA_FLAGS")
        assert address.flags == (flags if flags is not None else ref["flags"]), ip
        assert (address.preferred_lft, address.valid_lft) == \
            (cache["ifa_preferred"], cache["ifa_valid"]), ip
        broadcast = ref.get_attr("IFA_BROADCAST")
        assert address.broadcast == (ipaddress.ip_address(broadcast) if broadcast else None)
        if any(name == "IFA_RT_PRIORITY" for name, _type in ref.nla_map):  # 0.7 lacks it
            assert address.metric == ref.get_attr("IFA_RT_PRIORITY")


def _p2_gateway(msg: Any) -> Any:
    gateway = msg.get_attr("RTA_GATEWAY")
    if gateway is None and msg.get_attr("RTA_VIA") is not None:
        gateway = msg.get_attr("RTA_VIA")["addr"]
    return ipaddress.ip_address(gateway) if gateway is not None else None


def test_routes_agree_with_pyroute2(pyroute2: ModuleType) -> None:
    seen = {"metrics": 0, "multipath": 0, "prefsrc": 0, "onlink": 0, "expires": 0, "via": 0}
    for message in recorded("routes.bin"):
        route = decode_route(message, 0, len(message))
        assert route is not None
        ref = _p2("pyroute2.netlink.rtnl.rtmsg.rtmsg", message)
        dst = ref.get_attr("RTA_DST") or ("0.0.0.0" if ref["family"] == socket.AF_INET else "::")
        assert route.destination == ipaddress.ip_network(f"{dst}/{ref['dst_len']}")
        assert route.gateway == _p2_gateway(ref), route
        assert route.oif == ref.get_attr("RTA_OIF"), route
        assert route.priority == ref.get_attr("RTA_PRIORITY"), route
        assert route.table == (ref.get_attr("RTA_TABLE") or ref["table"]), route
        assert (route.protocol, route.scope, route.type, route.tos, route.flags) == \
            (ref["proto"], ref["scope"], ref["type"], ref["tos"], ref["flags"]), route
        prefsrc = ref.get_attr("RTA_PREFSRC")
        assert route.prefsrc == (ipaddress.ip_address(prefsrc) if prefsrc else None), route
        assert route.pref == ref.get_attr("RTA_PREF"), route
        metrics = ref.get_attr("RTA_METRICS")
        assert decode_metrics(route.metrics) == \
            {RTAX_NAMES.index(k): v for k, v in (metrics["attrs"] if metrics else [])}, route
        hops = ref.get_attr("RTA_MULTIPATH") or []
        assert [(h.index, h.weight, h.flags, h.gateway) for h in route.multipath] == \
            [(h["oif"], h["hops"] + 1, h["flags"], _p2_gateway(h)) for h in hops], route
        cache = ref.get_attr("RTA_CACHEINFO")
        expires = cache["rta_expires"] // 100 if cache and cache["rta_expires"] else None
        assert route.expires == expires, route
        seen["metrics"] += bool(metrics)
        seen["multipath"] += bool(hops)
        seen["prefsrc"] += bool(prefsrc)
        seen["onlink"] += route.onlink or any(h.onlink for h in route.multipath)
        seen["expires"] += expires is not None
        seen["via"] += ref.get_attr("RTA_VIA") is not None
    assert min(seen.values()) >= 1, f"the recording lacks a kind of route: {seen}"
    assert seen["multipath"] >= 2 and seen["metrics"] >= 2  # IPv4 and IPv6


def test_errors_agree_with_pyroute2(pyroute2: ModuleType) -> None:
    from pyroute2.netlink import nlmsgerr
    errors = recorded("errors.bin")
    half = len(errors) // 2  # recorded twice: with NETLINK_CAP_ACK, then without
    texts = 0
    for capped, uncapped in zip(errors[:half], errors[half:], strict=True):
        ref = nlmsgerr(uncapped)
        ref.decode()
        ours = decode_error(uncapped, 0, len(uncapped))
        if ref["error"] == 0:
            assert ours is None
            continue
        assert ours is not None and ours.errno == -ref["error"]
        assert ours.ext_ack == ref.get_attr("NLMSGERR_ATTR_MSG")
        assert ours.ext_ack_offset == ref.get_attr("NLMSGERR_ATTR_OFFS")
        texts += ours.ext_ack is not None
        # pyroute2 reads no extended ack from a capped error (it never asks for one);
        # ours must read the same from both.
        assert (NLMSGHDR.unpack_from(capped)[2] & rtnl.NLM_F_CAPPED) or \
            NLMSGHDR.unpack_from(capped)[1] == rtnl.NLMSG_DONE
        twin = decode_error(capped, 0, len(capped))
        assert twin is not None
        assert (twin.errno, twin.ext_ack, twin.ext_ack_offset) == \
            (ours.errno, ours.ext_ack, ours.ext_ack_offset)
    assert texts >= 4


# --- decoded against iproute2 (what `ip -j` showed of the same objects) ---------------


def test_links_agree_with_iproute2() -> None:
    shown = {link["ifindex"]: link for link in oracle("links.json")}
    names = {index: link["ifname"] for index, link in shown.items()}
    decoded = [decode_link(m, 0, len(m)) for m in recorded("links.bin")]
    assert {link.index for link in decoded} == set(shown)
    for link in decoded:
        ref = shown[link.index]
        assert link.name == ref["ifname"]
        assert link.kind == ref.get("linkinfo", {}).get("info_kind")
        assert (names[link.master] if link.master else None) == ref.get("master")
        assert link.up == ("UP" in ref["flags"]) and link.mtu == ref["mtu"]
        assert link.operstate == ref["operstate"]
        mac = ref.get("address", "")
        assert link.address == (mac if len(mac) == 17 else None)
        assert link.perm_address == ref.get("permaddr")
        assert link.alias == ref.get("ifalias")


def test_addresses_agree_with_iproute2() -> None:
    shown = {(link["ifindex"], f"{a['local']}/{a['prefixlen']}"): a
             for link in oracle("addresses.json") for a in link["addr_info"]}
    decoded = [decode_address(m, 0, len(m)) for m in recorded("addresses.bin")]
    assert {(index, str(a.interface)) for index, a in filter(None, decoded)} == set(shown)
    for index, address in filter(None, decoded):
        ref = shown[index, str(address.interface)]
        assert SCOPES[address.scope] == ref["scope"]
        # Read a moment apart: lifetimes may have ticked by a second or two.
        for ours, theirs in ((address.valid_lft, ref["valid_life_time"]),
                             (address.preferred_lft, ref["preferred_life_time"])):
            assert theirs - 2 <= ours <= theirs + 2 or ours == theirs == INFINITY_LIFE_TIME
        flags = {"secondary": 0x01, "nodad": 0x02, "deprecated": 0x20, "tentative": 0x40,
                 "noprefixroute": 0x200}
        if address.interface.version == 6:
            flags["temporary"] = flags.pop("secondary")
        for name, bit in flags.items():
            assert bool(address.flags & bit) == ref.get(name, False), (address, name)
        assert (not address.flags & 0x80) == ref.get("dynamic", False)  # IFA_F_PERMANENT
        assert (str(address.broadcast) if address.broadcast else None) == ref.get("broadcast")
        assert address.metric == ref.get("metric")


def _iproute2_route(ref: dict[str, Any], names: dict[str, int]) -> tuple[Any, ...]:
    dst = ref["dst"]
    family = 6 if ":" in dst or ":" in ref.get("gateway", "") or ref.get("pref") else 4
    if dst == "default":
        dst = "0.0.0.0/0" if family == 4 else "::/0"
    metrics = {k: v for entry in ref.get("metrics", []) for k, v in entry.items()}
    gateway = ref.get("gateway") or ref.get("via", {}).get("host")
    hops = tuple((names[h["dev"]], h.get("gateway"), h.get("weight", 1),
                  "onlink" in h.get("flags", [])) for h in ref.get("nexthops", []))
    table = ref.get("table", "main")
    return (str(ipaddress.ip_network(dst)), names.get(ref.get("dev", "")), gateway,
            ref.get("metric"), table, ref.get("type", "unicast"), ref["protocol"], ref["scope"],
            int(ref.get("tos", "0"), 16), "onlink" in ref["flags"], "linkdown" in ref["flags"],
            ref.get("prefsrc"),
            tuple(sorted(metrics.items())), hops, ref.get("pref"))


def _our_route(route: Route) -> tuple[Any, ...]:
    names = {2: "mtu", 8: "advmss", 10: "hoplimit"}
    metrics = {names[k]: v for k, v in decode_metrics(route.metrics).items()}
    hops = tuple((h.index, str(h.gateway) if h.gateway else None, h.weight, h.onlink)
                 for h in route.multipath)
    return (str(route.destination), route.oif, str(route.gateway) if route.gateway else None,
            route.priority, TABLES.get(route.table, str(route.table)), TYPES[route.type],
            PROTOCOLS[route.protocol], SCOPES[route.scope], route.tos, route.onlink,
            bool(route.flags & RTNH_F_LINKDOWN), str(route.prefsrc) if route.prefsrc else None,
            tuple(sorted(metrics.items())),
            hops, PREFS[route.pref] if route.pref is not None else None)


def test_routes_agree_with_iproute2() -> None:
    names = {link["ifname"]: link["ifindex"] for link in oracle("links.json")}
    shown = oracle("routes.json")
    decoded = [r for r in (decode_route(m, 0, len(m)) for m in recorded("routes.bin")) if r]
    assert sorted(map(repr, map(_our_route, decoded))) == \
        sorted(repr(_iproute2_route(ref, names)) for ref in shown)
    expiring = [r for r in decoded if r.expires is not None]
    assert len(expiring) == 1
    ref = next(r for r in shown if "expires" in r)
    assert ref["expires"] - 2 <= expiring[0].expires <= ref["expires"] + 2  # type: ignore[operator]


# --- the encoder, against the decoder -------------------------------------------------


def _as_message(body: bytes, kind: int = rtnl.RTM_NEWROUTE) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, 0, 0, 0) + body


def test_encoded_routes_decode_to_themselves() -> None:
    routes = [r for r in (decode_route(m, 0, len(m)) for m in recorded("routes.bin")) if r]
    assert any(r.flags & RTNH_F_LINKDOWN for r in routes)  # the kernel's to say
    for route in routes:
        body = encode_route(route)
        sendable = dataclasses.replace(
            route, flags=route.flags & RTNH_F_ONLINK,
            multipath=tuple(dataclasses.replace(h, flags=h.flags & RTNH_F_ONLINK)
                            for h in route.multipath))
        assert decode_route(_as_message(body), 0, len(body) + 16) == sendable, route
        # The kernel reports an expiry in RTA_CACHEINFO and takes it as RTA_EXPIRES.
        sent = _sent_attributes(_as_message(body), rtnl.RTMSG.size).get(rtnl.RTA_EXPIRES)
        assert sent == (struct.pack("=I", route.expires) if route.expires else None), route
        assert rtnl.RTA_EXPIRES not in _sent_attributes(
            _as_message(encode_route(route, delete=True)), rtnl.RTMSG.size)
    moved = Route(ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_address("fe80::1"),
                  flags=0x10 | RTNH_F_ONLINK, oif=3,  # linkdown: only the kernel says so
                  multipath=(NextHop(3, None, 300, 0x11),))
    body = encode_route(moved)
    again = decode_route(_as_message(body), 0, len(body) + 16)
    assert again is not None and again.flags == RTNH_F_ONLINK and again.gateway == moved.gateway
    assert again.multipath == (NextHop(3, None, 256, 0x1 & RTNH_F_ONLINK),)  # weight: a u8


def test_route_via_moves_only_what_went_through_the_old_interface() -> None:
    hops = (NextHop(4, ipaddress.ip_address("198.51.100.1"), 2, RTNH_F_ONLINK),
            NextHop(7, ipaddress.ip_address("198.51.100.9")))
    route = Route(ipaddress.ip_network("203.0.113.0/24"), None, 100, multipath=hops,
                  metrics=b"\x08\x00\x02\x00x\x05\x00\x00")
    moved = route.via(9, 4)
    assert moved.multipath == (NextHop(9, hops[0].gateway, 2, RTNH_F_ONLINK), hops[1])
    assert (moved.metrics, moved.priority, moved.oif) == (route.metrics, 100, None)
    assert moved.leaves_via(9) and not moved.leaves_via(4) and moved.leaves_via(7)
    single = Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("198.51.100.1"),
                   oif=4, flags=RTNH_F_ONLINK)
    assert single.via(9, 4).oif == 9 and single.via(9, 5).oif == 4
    assert single.via(9, 4).onlink
    # The configured-route constructor the daemon uses keeps working.
    plain = Route(ipaddress.ip_network("::/0"), ipaddress.ip_address("2001:db8::1"))
    assert (plain.priority, plain.protocol, plain.scope, plain.is_default) == (None, 3, 0, True)


# --- the request loop, against a scripted socket ---------------------------------------


PORT = 4242


def restamp(message: bytes, seq: int, *, flags: int = 0, port: int = PORT,
            kind: int | None = None) -> bytes:
    length, old_kind, old_flags, _seq, _port = NLMSGHDR.unpack_from(message)
    return NLMSGHDR.pack(length, old_kind if kind is None else kind, old_flags | flags, seq,
                         port) + message[16:] + bytes(-length % 4)


def done(seq: int, error: int = 0, *, flags: int = 0) -> bytes:
    return NLMSGHDR.pack(20, rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI | flags, seq, PORT) + \
        struct.pack("=i", error)


def ack(seq: int) -> bytes:
    return NLMSGHDR.pack(36, rtnl.NLMSG_ERROR, rtnl.NLM_F_CAPPED, seq, PORT) + \
        struct.pack("=i", 0) + bytes(16)


Reply = Callable[[int, bytes], list[bytes]]


class ScriptedSocket:
    """Stands in for the kernel's socket: each request is answered by the next step of
    a script, a function of the request's seq and bytes returning datagrams."""

    def __init__(self, *script: Reply) -> None:
        self.script = list(script)
        self.sent: list[bytes] = []
        self.queue: list[tuple[bytes, int]] = []

    def setsockopt(self, *args: Any) -> None:
        pass

    def bind(self, address: Any) -> None:
        pass

    def getsockname(self) -> tuple[int, int]:
        return PORT, 0

    def close(self) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        seq = NLMSGHDR.unpack_from(data)[3]
        self.queue += [(d, 0) for d in self.script.pop(0)(seq, data)]
        return len(data)

    def recvmsg(self, size: int) -> tuple[bytes, list[Any], int, None]:
        data, flags = self.queue.pop(0)
        if len(data) > size:
            data, flags = data[:size], socket.MSG_TRUNC
        return data, [], flags, None

    @property
    def seqs(self) -> list[int]:
        return [NLMSGHDR.unpack_from(d)[3] for d in self.sent]


def dumped(messages_: list[bytes], *, intr_at: int | None = None) -> Reply:
    """A dump's answer in two datagrams, NLM_F_DUMP_INTR on message ``intr_at``."""
    def reply(seq: int, _request: bytes) -> list[bytes]:
        parts = [restamp(m, seq, flags=rtnl.NLM_F_MULTI
                         | (rtnl.NLM_F_DUMP_INTR if i == intr_at else 0))
                 for i, m in enumerate(messages_)]
        half = len(parts) // 2
        return [b"".join(parts[:half]), b"".join(parts[half:]) + done(seq)]
    return reply


@pytest.fixture(scope="module")
def links() -> list[bytes]:
    return recorded("links.bin")


def test_dump_reads_every_datagram_until_done(links: list[bytes]) -> None:
    sock = RtnlSocket(ScriptedSocket(dumped(links)))  # type: ignore[arg-type]
    assert [link.name for link in sock.dump_links()] == \
        [decode_link(m, 0, len(m)).name for m in links]


def test_failed_dump_raises_the_kernels_error_and_words(links: list[bytes]) -> None:
    failed = next(m for m in recorded("errors.bin")
                  if NLMSGHDR.unpack_from(m)[1] == rtnl.NLMSG_DONE)
    scripted = ScriptedSocket(lambda seq, _r: [b"".join(restamp(m, seq) for m in links[:3])
                                               + restamp(failed, seq)])
    sock = RtnlSocket(scripted)  # type: ignore[arg-type]
    with pytest.raises(NetlinkError) as raised:
        sock.dump_links()
    assert raised.value.errno == errno.EINVAL and isinstance(raised.value, OSError)
    assert raised.value.ext_ack == "ipv4: Invalid values in header for address dump request"
    assert str(raised.value) == "[Errno 22] Invalid argument: " + raised.value.ext_ack
    # Without words, NLMSG_DONE's errno alone.
    sock = RtnlSocket(ScriptedSocket(lambda seq, _r: [done(seq, -errno.EBUSY)]))  # type: ignore[arg-type]
    with pytest.raises(NetlinkError) as raised:
        sock.dump_links()
    assert raised.value.errno == errno.EBUSY and raised.value.ext_ack is None


def test_error_message_inside_a_dump_raises(links: list[bytes]) -> None:
    refused = recorded("errors.bin")[0]  # "Can not enslave a bridge to a bridge"
    scripted = ScriptedSocket(lambda seq, _r: [b"".join(restamp(m, seq) for m in links[:2]),
                                               restamp(refused, seq)])
    with pytest.raises(NetlinkError) as raised:
        RtnlSocket(scripted).dump_links()  # type: ignore[arg-type]
    assert raised.value.errno == errno.ELOOP
    assert raised.value.ext_ack == "Can not enslave a bridge to a bridge"


def test_inconsistent_dump_is_taken_again(links: list[bytes]) -> None:
    scripted = ScriptedSocket(dumped(links, intr_at=len(links) - 1), dumped(links[:4]))
    assert len(RtnlSocket(scripted).dump_links()) == 4  # type: ignore[arg-type]
    assert len(scripted.sent) == 2
    # The mark on NLMSG_DONE alone counts too.
    scripted = ScriptedSocket(
        lambda seq, _r: [done(seq, flags=rtnl.NLM_F_DUMP_INTR)], dumped(links[:1]))
    assert len(RtnlSocket(scripted).dump_links()) == 1  # type: ignore[arg-type]


def test_dump_inconsistent_every_time_gives_up(links: list[bytes]) -> None:
    scripted = ScriptedSocket(*[dumped(links, intr_at=0)] * rtnl.DUMP_ATTEMPTS)
    with pytest.raises(DumpInterrupted) as raised:
        RtnlSocket(scripted).dump_links()  # type: ignore[arg-type]
    assert len(scripted.sent) == rtnl.DUMP_ATTEMPTS
    assert raised.value.errno == errno.EAGAIN and "NLM_F_DUMP_INTR" in str(raised.value)
    assert raised.value.ext_ack is None  # not the kernel's words: ours
    assert str(pickle.loads(pickle.dumps(raised.value))) == str(raised.value)


def test_replies_to_other_requests_or_sockets_are_ignored(links: list[bytes]) -> None:
    def reply(seq: int, _request: bytes) -> list[bytes]:
        return [restamp(links[0], seq - 1) + restamp(links[1], seq, port=PORT + 1),
                done(seq - 1, -errno.EINVAL) + restamp(links[2], seq) + done(seq)]
    assert [link.name for link in RtnlSocket(ScriptedSocket(reply)).dump_links()] == \
        [decode_link(links[2], 0, len(links[2])).name]  # type: ignore[arg-type]


def test_sequence_numbers_wrap_and_skip_zero(links: list[bytes]) -> None:
    scripted = ScriptedSocket(*[lambda seq, _r: [restamp(links[1], seq)]] * 3)
    sock = RtnlSocket(scripted)  # type: ignore[arg-type]
    sock._seq = 0xFFFFFFFE
    for _ in range(3):
        assert sock.get_link(2) is not None
    assert scripted.seqs == [0xFFFFFFFF, 1, 2]


def test_refused_request_raises_with_the_kernels_words() -> None:
    refused = recorded("errors.bin")[2]  # capped, with NLMSGERR_ATTR_OFFS
    scripted = ScriptedSocket(lambda seq, _r: [restamp(refused, seq)],
                              lambda seq, _r: [ack(seq)])
    sock = RtnlSocket(scripted)  # type: ignore[arg-type]
    with pytest.raises(OSError) as raised:
        sock.set_link(2, mtu=1)
    assert isinstance(raised.value, NetlinkError)
    assert (raised.value.errno, raised.value.ext_ack, raised.value.ext_ack_offset) == \
        (errno.ERANGE, "Attribute failed policy validation", 32)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (type(copy), str(copy), copy.ext_ack_offset) == \
        (NetlinkError, str(raised.value), 32)
    sock.set_link(2, up=True)  # a bare ack is success


def test_truncated_datagram_is_an_error_not_a_short_answer(links: list[bytes]) -> None:
    big = b"".join(restamp(m, 1) for m in links) * 6
    assert len(big) > 1 << 16
    scripted = ScriptedSocket(lambda seq, _r: [big])
    with pytest.raises(NetlinkError) as raised:
        RtnlSocket(scripted).get_link(1)  # type: ignore[arg-type]
    assert raised.value.errno == errno.EMSGSIZE and raised.value.ext_ack is None
    assert "longer than 65536 bytes" in str(raised.value)


def test_kernel_error_carries_the_reason() -> None:
    lane = Netlink("test-lane")

    def refused(_sock: RtnlSocket) -> None:
        raise NetlinkError(errno.ELOOP, "Can not enslave a bridge to a bridge")

    def garbled(_sock: RtnlSocket) -> None:
        decode_link(b"\x10\x00", 0, 2)

    try:
        with pytest.raises(KernelError) as raised:
            asyncio.run(lane.run(refused))
        assert raised.value.errno == errno.ELOOP
        assert raised.value.reason == "Can not enslave a bridge to a bridge"
        assert str(raised.value) == ("refused(): Too many levels of symbolic links "
                                     "(Can not enslave a bridge to a bridge)")
        with pytest.raises(KernelError) as raised:
            asyncio.run(lane.run(garbled))
        assert raised.value.errno == errno.EBADMSG and raised.value.reason
    finally:
        lane.close()


def _sent_attributes(request: bytes, fixed: int) -> dict[int, bytes]:
    spans = rtnl.attributes(request, 16 + fixed, len(request))
    return {kind: request[start:end] for kind, (start, end) in spans.items()}


def test_address_request_keeps_lifetimes_and_drops_kernel_flags() -> None:
    scripted = ScriptedSocket(*[lambda seq, _r: [ack(seq)]] * 3)
    sock = RtnlSocket(scripted)  # type: ignore[arg-type]
    interface = ipaddress.ip_interface("198.51.100.50/24")
    kernel_only = 0x01 | 0x08 | 0x20 | 0x40 | 0x80  # secondary dadfailed deprecated ...
    sock.address(3, interface, add=True, flags=kernel_only | rtnl.IFA_F_NOPREFIXROUTE,
                 preferred_lft=200, valid_lft=300, metric=77,
                 broadcast=ipaddress.IPv4Address("198.51.100.255"))
    sock.address(3, interface, add=True, preferred_lft=9, valid_lft=0)  # about to expire
    sock.address(3, interface, add=True)
    first, expiring, permanent = (_sent_attributes(r, rtnl.IFADDRMSG.size)
                                  for r in scripted.sent)
    assert struct.unpack("=I", first[rtnl.IFA_FLAGS]) == (rtnl.IFA_F_NOPREFIXROUTE,)
    assert struct.unpack("=IIII", first[rtnl.IFA_CACHEINFO])[:2] == (200, 300)
    assert struct.unpack("=I", first[rtnl.IFA_RT_PRIORITY]) == (77,)
    assert first[rtnl.IFA_BROADCAST] == bytes([198, 51, 100, 255])
    assert struct.unpack("=IIII", expiring[rtnl.IFA_CACHEINFO])[:2] == (1, 1)
    assert rtnl.IFA_CACHEINFO not in permanent


def test_routes_are_those_leaving_through_the_link_with_multipath_hops() -> None:
    by_family: dict[int, list[bytes]] = {socket.AF_INET: [], socket.AF_INET6: []}
    for message in recorded("routes.bin"):
        by_family[message[16]].append(message)

    def answer(seq: int, request: bytes) -> list[bytes]:
        # A kernel without strict checking: everything, for the caller to filter.
        return [b"".join(restamp(m, seq) for m in by_family[request[16]]) + done(seq)]

    names = {link["ifname"]: link["ifindex"] for link in oracle("links.json")}
    expected = sorted(
        ref["dst"] for ref in oracle("routes.json")
        if ref.get("table", "main") == "main" and ref.get("type", "unicast") == "unicast"
        and "br0" in [ref.get("dev")] + [h["dev"] for h in ref.get("nexthops", [])])
    routes = RtnlSocket(ScriptedSocket(answer, answer)).routes(names["br0"])  # type: ignore[arg-type]
    assert sorted("default" if r.is_default else
                  str(r.destination.network_address if r.destination.prefixlen ==
                      r.destination.max_prefixlen else r.destination)
                  for r in routes) == expected
    assert sum(bool(r.multipath) for r in routes) == 2


def test_nothing_but_decode_error_on_short_or_absurd_input() -> None:
    cases: Iterator[tuple[Callable[..., Any], tuple[Any, ...]]] = iter([
        (decode_link, (b"", 0, 0)), (decode_link, (bytes(40), 0, 400)),
        (decode_link, (bytes(40), -8, 32)), (decode_address, (bytes(20), 0, 20)),
        (decode_route, (bytes(27), 0, 28)), (decode_error, (bytes(16), 0, 16)),
        (messages, (NLMSGHDR.pack(8, 0, 0, 0, 0),)), (messages, (NLMSGHDR.pack(99, 0, 0, 0, 0),)),
        (rtnl.attributes, (b"\x03\x00\x01\x00", 0, 4)), (rtnl.attributes, (b"", 0, 9)),
        (rtnl.address_index, (bytes(10), 0)), (decode_metrics, (b"\x05\x00\x02\x00x",)),
    ])
    for fn, args in cases:
        with pytest.raises(DecodeError):
            fn(*args)
    # An attribute whose payload is empty where a value belongs, last in its message.
    link = recorded("links.bin")[1][:16 + rtnl.IFINFOMSG.size] \
        + rtnl._attr(rtnl.IFLA_OPERSTATE, b"")
    route = recorded("routes.bin")[2][:16 + rtnl.RTMSG.size] + rtnl._attr(rtnl.RTA_VIA, b"\x0a")
    for fn, message in ((decode_link, link), (decode_route, route)):
        message = NLMSGHDR.pack(len(message), *NLMSGHDR.unpack_from(message)[1:]) + message[16:]
        with pytest.raises(DecodeError):
            fn(message, 0, len(message))
    assert messages(b"\x00" * 15) == []  # shorter than a header: padding, as for the kernel
