"""Link, address and FDB events from rtnetlink, delivered on the asyncio loop.

Plain AF_NETLINK sockets joined to multicast groups, read with ``loop.add_reader``: no
thread and no polling. Messages are decoded by ``rtnl``, which reads only what the
daemon uses.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridged import pacing
from bridged.kernel import sockfilter
from bridged.kernel.netlink import Address, FdbEntry, Link
from bridged.kernel.rtnl import (
    AF_BRIDGE,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    DecodeError,
    address_index,
    decode_address,
    decode_fdb,
    decode_link,
    messages,
    neigh_header,
)

log = logging.getLogger(__name__)

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_NEIGH = 0x4
RCVBUF = 8 * 1024 * 1024


@dataclass(frozen=True)
class LinkEvent:
    removed: bool
    link: Link


@dataclass(frozen=True)
class AddressEvent:
    removed: bool
    index: int
    address: Address


@dataclass(frozen=True)
class FdbEvent:
    removed: bool
    entry: FdbEntry


def event_socket(protocol: int = socket.NETLINK_ROUTE, groups: int = 0) -> socket.socket:
    """A non-blocking netlink socket for events, with a queue deep enough for bursts."""
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        protocol,
    )
    try:
        # A burst (1000 taps freed at once, FRR installing a fleet's MACs) must not
        # overflow the queue; SO_RCVBUFFORCE needs CAP_NET_ADMIN, which the daemon has,
        # else fall back to what we may set.
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


class EventReader:
    """A netlink event socket read on the event loop (no thread, no polling): each batch
    goes to ``_dispatch``; a queue that overran (events lost) calls ``on_overrun``."""

    # For the overrun's log line: what overran, and what the owner does about it.
    what = "netlink event"
    recovery = "resynchronising"

    def __init__(self, on_overrun: Callable[[], None]) -> None:
        self._on_overrun = on_overrun
        self._sock: socket.socket | None = None

    def _open(self) -> socket.socket:
        raise NotImplementedError

    def _dispatch(self, data: bytes) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._sock is None:
            self._sock = self._open()
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._readable)

    def stop(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def drain(self) -> None:
        """Handle now whatever the kernel has queued (before acting on something that
        events sent earlier may concern)."""
        self._read(until=math.inf)

    def _readable(self) -> None:
        # One slice a turn (see pacing): a hundred taps deleted at once queue ~700
        # events (seven a tap), ~30 ms of handling, and the bus socket is read only
        # between turns. What is left stays queued; the socket is still readable (level-
        # triggered) next turn.
        self._read(until=time.monotonic() + pacing.TURN_BUDGET_S)

    def _read(self, until: float) -> None:
        while self._sock is not None and time.monotonic() < until:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                log.warning("%s queue overran; %s", self.what, self.recovery)
                self._on_overrun()
                continue
            try:
                self._dispatch(data)
            except DecodeError as e:
                # A datagram that does not parse is an event lost like an overrun's:
                # the same recovery, and the events behind it are still read.
                log.warning("%s that does not parse (%s); %s", self.what, e, self.recovery)
                self._on_overrun()


class LinkMonitor(EventReader):
    """Calls ``on_event`` for link events, ``on_address`` for each address event on
    an interface ``watches_addresses_of(index)`` says is of interest, ``on_overrun``
    when events were lost.

    Every RTM_NEWLINK and RTM_DELLINK is passed on, in order. The bridge's AF_BRIDGE port
    notices are not (nothing reads them: they are the bridge's view of a port, not the
    link)."""

    recovery = "resynchronising from a dump"

    def __init__(
        self,
        on_event: Callable[[LinkEvent], None],
        on_overrun: Callable[[], None],
        on_address: Callable[[AddressEvent], None] | None = None,
        watches_addresses_of: Callable[[int], bool] | None = None,
    ) -> None:
        super().__init__(on_overrun)
        self._on_event = on_event
        self._on_address = on_address
        self._watched = watches_addresses_of

    def _open(self) -> socket.socket:
        groups = RTMGRP_LINK
        if self._on_address is not None:
            groups |= RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        sock = event_socket(groups=groups)
        try:
            sockfilter.drop_port_notices(sock)
        except OSError as e:  # then they are read and passed over here, as before
            log.warning("cannot filter the bridge's port notices in the kernel: %s", e,
                        extra={"BRIDGED_EVENT": "port-filter-unavailable"})
        return sock

    def _dispatch(self, data: bytes) -> None:
        """The messages of one datagram (the kernel sends one event in each), in order.
        Every RTM_NEWLINK is handed on, however soon a newer one follows: a flip that is
        over by the next message (the bridge set down and up: its routes and IPv6
        addresses flushed) is news a subscriber must see."""
        for kind, _seq, offset, length in messages(data):
            try:
                if kind in (RTM_NEWLINK, RTM_DELLINK):
                    if _bridge_port_notice(data, offset, length):
                        continue
                    self._on_event(LinkEvent(kind == RTM_DELLINK,
                                             decode_link(data, offset, length)))
                elif kind in (RTM_NEWADDR, RTM_DELADDR) and self._on_address is not None \
                        and self._watched is not None and self._watched(
                            address_index(data, offset)):
                    # Only the watched links': every tap brings address events of its own.
                    decoded = decode_address(data, offset, length)
                    if decoded is not None:
                        self._on_address(AddressEvent(kind == RTM_DELADDR, *decoded))
            except DecodeError:
                raise  # an event lost: the reader resynchronises
            except Exception:
                log.exception("handling netlink event (type %d) failed", kind)


class FdbMonitor(EventReader):
    """Calls ``on_event`` for each change of an FDB entry in the own table (NTF_SELF) of
    a device ``watches(index)`` names, ``on_overrun`` when events were lost.

    The neighbour group also carries every ARP/NDP change and every MAC the bridge
    learns or forgets on any port: those are told apart by their header alone.
    """

    what = "netlink FDB event"
    recovery = "reading the FDB again"

    def __init__(self, on_event: Callable[[FdbEvent], None], on_overrun: Callable[[], None],
                 watches: Callable[[int], bool]) -> None:
        super().__init__(on_overrun)
        self._on_event = on_event
        self._watches = watches

    def _open(self) -> socket.socket:
        return event_socket(groups=RTMGRP_NEIGH)

    def _dispatch(self, data: bytes) -> None:
        for kind, _seq, offset, length in messages(data):
            if kind not in (RTM_NEWNEIGH, RTM_DELNEIGH):
                continue
            try:
                family, index = neigh_header(data, offset)
                if family != AF_BRIDGE or not self._watches(index):
                    continue
                entry = decode_fdb(data, offset, length)
                if entry is not None and entry.own:
                    self._on_event(FdbEvent(kind == RTM_DELNEIGH, entry))
            except DecodeError:
                raise  # an event lost: the reader resynchronises
            except Exception:
                log.exception("handling netlink FDB event (type %d) failed", kind)

def _bridge_port_notice(data: bytes, offset: int, length: int) -> bool:
    """An AF_BRIDGE RTM_NEWLINK/DELLINK: the bridge's view of a port, which nothing here
    reads (its DELLINK means "left the bridge", not "deleted"). Told by the header alone,
    so never decoded. The socket's filter (sockfilter) drops them in the kernel; this
    is for any it lets through."""
    return length >= 16 + IFINFO_HEAD.size and \
        IFINFO_HEAD.unpack_from(data, offset + 16)[0] == AF_BRIDGE


IFINFO_HEAD = struct.Struct("=BxxxI")  # ifinfomsg: family, pad, type, then index


def parse_events(data: bytes) -> list[LinkEvent]:
    """The link events in a batch (for readers of their own, like the benchmark)."""
    return [LinkEvent(removed=kind == RTM_DELLINK, link=decode_link(data, offset, length))
            for kind, _seq, offset, length in messages(data)
            if kind in (RTM_NEWLINK, RTM_DELLINK)]
