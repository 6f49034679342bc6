"""Raw rtnetlink for the tap hot path: decode link messages, set and get one link.

pyroute2 stays the netlink library for everything else. Here it was the cost: decoding
each link event with its generic ``ifinfmsg`` took about 1 ms of Python on the event
loop (a tap's life brings half a dozen events), and configuring a new tap through
``IPRoute.link("set")`` plus ``get_links`` took more than the kernel work itself. The
profile of an OpenTap loop put both on top. These few messages are encoded and decoded
straight from bytes (layouts from linux/netlink.h, rtnetlink.h and if_link.h: stable
kernel ABI), reading only the attributes the daemon uses.
"""

from __future__ import annotations

import os
import socket
import struct

from bridged.kernel.link import Link

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTATTR = struct.Struct("=HH")  # length, type
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
IFF_UP = 0x1

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_PERM_ADDRESS = 54
IFLA_INFO_KIND = 1
NLMSG_ERROR = 2
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")


def _attributes(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """type -> (offset, end) of each attribute's payload in data[start:end]."""
    found: dict[int, tuple[int, int]] = {}
    offset = start
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or offset + length > end:
            break
        found[kind & NLA_TYPE_MASK] = (offset + RTATTR.size, offset + length)
        offset += (length + 3) & ~3
    return found


def _string(data: bytes, span: tuple[int, int]) -> str:
    return data[span[0]:span[1]].split(b"\0", 1)[0].decode(errors="replace")


def _mac(data: bytes, span: tuple[int, int]) -> str | None:
    raw = data[span[0]:span[1]]
    return ":".join(f"{b:02x}" for b in raw) if len(raw) == 6 else None


def decode_link(data: bytes, offset: int, length: int) -> Link:
    """The Link in the netlink message at data[offset:offset+length] (header included)."""
    body = offset + 16  # after struct nlmsghdr
    family, _type, index, flags, _change = IFINFOMSG.unpack_from(data, body)
    attrs = _attributes(data, body + IFINFOMSG.size, offset + length)
    kind = None
    if IFLA_LINKINFO in attrs:
        info = _attributes(data, *attrs[IFLA_LINKINFO])
        if IFLA_INFO_KIND in info:
            kind = _string(data, info[IFLA_INFO_KIND])
    master = struct.unpack_from("=I", data, attrs[IFLA_MASTER][0])[0] \
        if IFLA_MASTER in attrs else 0
    operstate = data[attrs[IFLA_OPERSTATE][0]] if IFLA_OPERSTATE in attrs else 0
    perm = _mac(data, attrs[IFLA_PERM_ADDRESS]) if IFLA_PERM_ADDRESS in attrs else None
    alias = _string(data, attrs[IFLA_IFALIAS]) if IFLA_IFALIAS in attrs else ""
    return Link(
        index=index,
        name=_string(data, attrs[IFLA_IFNAME]) if IFLA_IFNAME in attrs else "",
        kind=kind,
        master=master or None,
        up=bool(flags & IFF_UP),
        operstate=OPERSTATES[operstate] if operstate < len(OPERSTATES) else "UNKNOWN",
        address=_mac(data, attrs[IFLA_ADDRESS]) if IFLA_ADDRESS in attrs else None,
        perm_address=None if perm in (None, "00:00:00:00:00:00") else perm,
        alias=alias or None,
        mtu=struct.unpack_from("=I", data, attrs[IFLA_MTU][0])[0] if IFLA_MTU in attrs else 0,
        family=family,
    )


def _attr(kind: int, payload: bytes) -> bytes:
    length = RTATTR.size + len(payload)
    return RTATTR.pack(length, kind) + payload + bytes((4 - length % 4) % 4)


class LinkSocket:
    """One rtnetlink socket for synchronous requests (used from a lane's thread)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _request(self, msg_type: int, flags: int, body: bytes) -> bytes:
        self._seq += 1
        seq = self._seq
        self._sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type,
                                      NLM_F_REQUEST | flags, seq, 0) + body)
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, kind, _flags, got_seq, _pid = NLMSGHDR.unpack_from(data, offset)
                if got_seq == seq:
                    if kind == NLMSG_ERROR:
                        error = struct.unpack_from("=i", data, offset + NLMSGHDR.size)[0]
                        if error:
                            raise OSError(-error, os.strerror(-error))
                        return b""
                    return data[offset:offset + length]
                offset += (length + 3) & ~3

    def set_link(self, index: int, *, address: str | None = None, alias: str | None = None,
                 master: int | None = None, mtu: int | None = None, up: bool = False) -> None:
        """One RTM_NEWLINK changing what is given; waits for the kernel's ack."""
        attrs = b""
        if address is not None:
            attrs += _attr(IFLA_ADDRESS, bytes.fromhex(address.replace(":", "")))
        if alias is not None:
            attrs += _attr(IFLA_IFALIAS, alias.encode() + b"\0")
        if master is not None:
            attrs += _attr(IFLA_MASTER, struct.pack("=I", master))
        if mtu is not None:
            attrs += _attr(IFLA_MTU, struct.pack("=I", mtu))
        flags, change = (IFF_UP, IFF_UP) if up else (0, 0)
        self._request(RTM_NEWLINK, NLM_F_ACK,
                      IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs)

    def get_link(self, index: int) -> Link:
        reply = self._request(RTM_GETLINK, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))
        return decode_link(reply, 0, len(reply))
