"""Neighbour (ARP / NDP) resolution through the kernel: does a host answer on a link?

The daemon has no raw sockets (its unit allows netlink and unix sockets only) and
needs none: asking the kernel to "use" a neighbour entry (RTM_NEWNEIGH with NTF_USE)
makes it send ARP requests or neighbour solicitations on that link, exactly as a
packet to that address would, and nothing beyond the link. The entry's state changes
arrive as RTM_NEWNEIGH notifications.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable

from bridged.kernel.events import EventReader, event_socket
from bridged.kernel.link import NUD_PERMANENT
from bridged.kernel.rtnl import (
    NDA_DST,
    NDMSG,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NLMSGHDR,
    RTM_GETNEIGH,
    RTM_NEWNEIGH,
    RtnlSocket,
    _attr,
    attributes,
    messages,
)

RTMGRP_NEIGH = 0x4
NTF_USE = 0x01
NUD_INCOMPLETE, NUD_REACHABLE, NUD_FAILED = 0x01, 0x02, 0x20
NUD_NOARP = 0x40
# States that mean "the neighbour answered" (or needs no answer).
ANSWERED = NUD_REACHABLE | NUD_NOARP | NUD_PERMANENT

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _family(address: Address) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def solicit(sock: RtnlSocket, index: int, address: Address) -> None:
    """Make the kernel resolve ``address`` on link ``index`` now (ARP / NS)."""
    body = NDMSG.pack(_family(address), index, 0, NTF_USE, 0) + _attr(NDA_DST, address.packed)
    sock.change(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body)


def state(sock: RtnlSocket, index: int, address: Address) -> int:
    """The NUD state of ``address`` on ``index`` (0 if there is no entry)."""
    body = NDMSG.pack(_family(address), index, 0, 0, 0) + _attr(NDA_DST, address.packed)
    try:
        reply = sock.request(RTM_GETNEIGH, 0, body)
    except OSError:
        return 0
    return _decode(reply, 0, len(reply))[2] if reply else 0


def _decode(data: bytes, offset: int, length: int) -> tuple[int, Address | None, int]:
    """(ifindex, destination, state) of an RTM_NEWNEIGH message."""
    body = offset + NLMSGHDR.size
    if length < NLMSGHDR.size + NDMSG.size or offset + length > len(data):
        return 0, None, 0
    _, index, nud, _, _ = NDMSG.unpack_from(data, body)
    attrs = attributes(data, body + NDMSG.size, offset + length)
    dst = None
    if NDA_DST in attrs:
        start, end = attrs[NDA_DST]
        with contextlib.suppress(ValueError):
            dst = ipaddress.ip_address(bytes(data[start:end]))
    return index, dst, nud


class NeighbourWatch(EventReader):
    """Neighbour state changes on the event loop, for as long as it is open."""

    what = "neighbour event"
    recovery = "asking again"  # the probe re-solicits on its own schedule anyway

    def __init__(self, on_change: Callable[[int, Address, int], None]) -> None:
        super().__init__(lambda: None)
        self._on_change = on_change
        self.start()

    def _open(self) -> socket.socket:
        return event_socket(groups=RTMGRP_NEIGH)

    def _dispatch(self, data: bytes) -> None:
        for kind, _seq, offset, length in messages(data):
            if kind == RTM_NEWNEIGH:
                index, dst, nud = _decode(data, offset, length)
                if dst is not None:
                    self._on_change(index, dst, nud)

    def close(self) -> None:
        self.stop()
