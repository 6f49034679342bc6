"""rtnetlink requests: links, the bridge, taps, addresses and routes.

It states no policy: it does what it is asked and returns plain dataclasses. Netlink
requests block, some for long (deleting a tap takes ~16 ms inside the kernel), so each
``Netlink`` owns one worker thread with its own socket (``rtnl.RtnlSocket``) and the
daemon awaits it; several instances give independent lanes, so a slow delete on one
never delays a create on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno as errnos
import fcntl
import ipaddress
import os
import secrets
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from bridged import pacing
from bridged.kernel import nft, tun
from bridged.kernel.link import (
    IPV6_MIN_MTU,
    Address,
    FdbEntry,
    IPAddress,
    Link,
    Route,
    VxlanInfo,
)
from bridged.kernel.rtnl import AF_BRIDGE, DecodeError, RtnlSocket, set_link_request

__all__ = ["AF_BRIDGE", "RTPROT_KERNEL", "Address", "CreatedTap", "FdbEntry", "GuardSpec",
           "KernelError", "Link", "Netlink", "Route", "TapSpec", "VxlanInfo", "VxlanSpec"]

T = TypeVar("T")
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

RTPROT_KERNEL = 2
# Centiseconds per second: the kernel takes bridge timers in clock_t (USER_HZ = 100).
USER_HZ = 100


class KernelError(Exception):
    """A netlink or ioctl request the kernel refused; ``errno`` says why, and
    ``reason`` in the kernel's own words when it gave them (netlink extended ack)."""

    def __init__(self, errno: int, what: str, reason: str | None = None) -> None:
        self.errno = errno
        self.what = what
        self.reason = reason
        text = f"{what}: {_strerror(errno)}"
        super().__init__(f"{text} ({reason})" if reason else text)


def _strerror(errno: int) -> str:
    try:
        return os.strerror(errno)
    except ValueError:
        return f"errno {errno}"


@dataclass(frozen=True)
class GuardSpec:
    """Guards to put on a tap before it goes up (see ``nft``)."""

    log_group: int
    mac: str | None = None  # None: the first MAC the guest uses


@dataclass(frozen=True)
class TapSpec:
    name: str
    master: int
    mac: str
    alias: str
    queues: int = 1
    vnet_hdr: bool = True
    persistent_owner: int | None = None  # uid for TUNSETOWNER; None: lives with its fds
    mtu: int | None = None
    vlan: int | None = None
    isolated: bool = False
    guard: GuardSpec | None = None


@dataclass(frozen=True)
class VxlanSpec:
    """A VXLAN device to create as a bridge port (see ``Netlink.create_vxlan``)."""

    name: str
    vni: int
    local: IPAddress
    port: int
    learning: bool
    master: int
    mtu: int
    alias: str
    bridge_learning: bool  # whether the bridge learns MACs on this port


@dataclass(frozen=True)
class CreatedTap:
    index: int
    mtu: int
    fds: list[int]  # its queues' fds; empty for a persistent tap (they are closed)


PR_SET_NAME = 15
# How long a thread that wants the interpreter lock waits before asking its holder to
# let go. A lane thread gives the lock up at every system call and wants it back when
# the kernel answers; with the default 5 ms, each answer could wait 5 ms for a busy
# event loop (and a ping to the loop as long for a lane in Python). 0.5 ms measured
# best with 32 clients at once; the loop, which holds the lock most, pays nothing
# while no lane is waiting.
SWITCH_INTERVAL_S = 0.0005


def _name_thread(name: str) -> None:
    """Give the lane's thread a kernel-visible name (15 bytes at most): nf_tables names
    the task that commits a transaction, which tells bridged's own changes from others'."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _deliver(future: asyncio.Future[CreatedTap], result: CreatedTap | Exception) -> None:
    if future.done():  # its caller gave up; the tap goes with its fds
        if isinstance(result, CreatedTap):
            tun.close_all(result.fds)
    elif isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


class Netlink:
    """A netlink request lane: one thread, one socket, async methods."""

    def __init__(self, name: str = "netlink") -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name,
                                            initializer=_name_thread,
                                            initargs=(f"{nft.OWN_TASK_PREFIX}{name}",))
        self._local = threading.local()
        self._creating: list[tuple[TapSpec, asyncio.Future[CreatedTap]]] = []
        self._creator: asyncio.Task[None] | None = None
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)

    def _socket(self) -> RtnlSocket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._local.sock = RtnlSocket()
        return sock

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(sock, *args)`` on this lane's thread and translate kernel errors."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args)

    async def run_nft(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(nft_context, *args)`` on this lane's thread (libnftables blocks)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _call_nft, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        what = f"{fn.__name__.lstrip('_')}{args!r}"
        try:
            return fn(self._socket(), *args)
        except OSError as e:  # netlink errors (NetlinkError), tun ioctls, if_nametoindex
            raise KernelError(e.errno or 0, what, getattr(e, "reason", None)) from None
        except DecodeError as e:  # a reply that does not parse: never a crash of the lane
            raise KernelError(errnos.EBADMSG, what, str(e)) from None

    def close(self) -> None:
        def close_socket() -> None:
            sock = getattr(self._local, "sock", None)
            if sock is not None:
                sock.close()
                self._local.sock = None

        self._executor.submit(close_socket)
        self._executor.shutdown(wait=True)

    # --- links -------------------------------------------------------------------

    async def link(self, name: str | None = None, index: int | None = None) -> Link | None:
        return await self.run(_get_link, name, index)

    async def links(self) -> list[Link]:
        return await self.run(RtnlSocket.dump_links)

    async def create_bridge(self, name: str, stp: bool, forward_delay: int) -> Link:
        return await self.run(_create_bridge, name, stp, forward_delay)

    async def set_bridge_options(self, index: int, stp: bool, forward_delay: int) -> None:
        await self.run(_set_bridge_options, index, stp, forward_delay)

    async def set_link(self, index: int, **changes: Any) -> None:
        """One RTM_NEWLINK with the given changes: master, state, mtu, address, ifalias."""
        await self.run(_set_link, index, changes)

    async def delete_link(self, index: int) -> None:
        await self.run(RtnlSocket.delete_link, index)

    async def delete_links(self, indexes: list[int]) -> list[int | None]:
        """Delete several links with one wait in the kernel; an errno (or None) each."""
        return await self.run(_delete_links, indexes)

    async def create_tap(self, spec: TapSpec) -> CreatedTap:
        """Create, configure and attach a tap.

        Returns its index, MTU and open queue fds (already closed for a persistent tap,
        so the list is empty). On any failure the half-made tap is removed. Taps asked
        for while the lane is busy are made together in its next trip: one netlink
        send for all their links, one nf_tables transaction for all their guards.
        """
        future: asyncio.Future[CreatedTap] = asyncio.get_running_loop().create_future()
        self._creating.append((spec, future))
        if self._creator is None or self._creator.done():
            self._creator = asyncio.get_running_loop().create_task(self._create_waiting())
        return await future

    async def _create_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        while self._creating:
            batch, self._creating = self._creating, []
            try:
                results = await loop.run_in_executor(self._executor, self._create_taps,
                                                     [spec for spec, _ in batch])
            except Exception as e:  # the lane itself failed: every waiter hears why
                results = [e] * len(batch)
            # The waiters wake a few a turn (see pacing), each to register its tap and
            # reply: a batch's worth at once was one long turn.
            for (_spec, future), result in zip(batch, results, strict=True):
                pacing.soon(_deliver, future, result)

    def _create_taps(self, specs: list[TapSpec]) -> list[CreatedTap | Exception]:
        results: list[CreatedTap | Exception] = []
        for spec, result in zip(specs, _create_taps(self._socket(), specs), strict=True):
            if isinstance(result, OSError):
                what = f"create_tap({spec.name!r})"
                result = KernelError(result.errno or 0, what, getattr(result, "reason", None))
            elif isinstance(result, DecodeError):
                result = KernelError(errnos.EBADMSG, f"create_tap({spec.name!r})", str(result))
            results.append(result)
        return results

    async def create_vxlan(self, spec: VxlanSpec) -> Link:
        """Create a VXLAN device, mark it, put it on the bridge and up, in one trip to
        the lane's thread; on any failure the half-made device is removed."""
        return await self.run(_create_vxlan, spec)

    async def vxlan(self, index: int) -> VxlanInfo | None:
        return await self.run(RtnlSocket.vxlan, index)

    async def set_vxlan(self, index: int, local: IPAddress, learning: bool) -> None:
        await self.run(_set_vxlan, index, local, learning)

    async def set_port_learning(self, index: int, learning: bool) -> None:
        await self.run(_set_port_learning, index, learning)

    async def attach_tap(self, index: int, master: int, isolated: bool, vlan: int,
                         joining: bool) -> None:
        """Put a tap (back) on the bridge and up (``joining``), with its port settings,
        or only set those again: a port that left the bridge lost them (isolation, its
        VLAN), and joining again does not bring them back. ``vlan`` 0: none."""
        await self.run(_attach_tap, index, master, isolated, vlan, joining)

    async def fdb(self, index: int) -> list[FdbEntry]:
        """The device's own FDB entries (a VXLAN device's: MAC -> remote VTEP)."""
        return await self.run(RtnlSocket.fdb, index)

    async def add_fdb(self, index: int, mac: str, dst: IPAddress) -> None:
        """One more permanent entry for ``mac`` (an all-zeros one floods to ``dst``)."""
        await self.run(_fdb_entry, index, mac, dst, True)

    async def delete_fdb(self, index: int, mac: str, dst: IPAddress) -> None:
        await self.run(_fdb_entry, index, mac, dst, False)

    async def address_owner(self, ip: IPAddress) -> int | None:
        """The index of the interface holding ``ip``, or None."""
        return await self.run(RtnlSocket.address_owner, ip)

    async def bridge_vlan_filtering(self, index: int) -> bool:
        return await self.run(RtnlSocket.vlan_filtering, index)

    # --- addresses and routes ------------------------------------------------------

    async def addresses(self, index: int) -> list[Address]:
        return await self.run(RtnlSocket.addresses, index)

    async def add_address(self, index: int, interface: Interface | Address,
                          nodad: bool = False) -> None:
        """Add an address. Given an ``Address`` (as read from another link), its flags,
        remaining lifetimes, broadcast and metric come with it: a leased address stays
        leased instead of becoming permanent."""
        await self.run(_add_address, index, interface, nodad)

    async def delete_address(self, index: int, interface: Interface) -> None:
        await self.run(_delete_address, index, interface)

    async def routes(self, index: int) -> list[Route]:
        return await self.run(RtnlSocket.routes, index)

    async def replace_route(self, index: int, route: Route, *,
                            instead_of: int | None = None) -> None:
        """Add or change ``route`` via ``index``. With ``instead_of``, a route read from
        that interface (``routes(instead_of)``) is re-created via ``index`` as it was:
        its hops through ``instead_of`` go through ``index``, the rest is kept."""
        await self.run(_replace_route, index, route, instead_of)

    async def delete_route(self, index: int, route: Route) -> None:
        await self.run(_delete_route, index, route)


# The functions below run on a lane's thread with that thread's socket.


def _call_nft(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    return fn(nft.context(), *args)


def _get_link(sock: RtnlSocket, name: str | None, index: int | None) -> Link | None:
    return sock.get_link(index or 0, name if index is None else None)


def _create_bridge(sock: RtnlSocket, name: str, stp: bool, forward_delay: int) -> Link:
    sock.create_bridge(name, stp, forward_delay * USER_HZ)
    link = sock.get_link(name=name)
    if link is None:
        raise OSError(errnos.ENODEV, "bridge vanished right after creation")
    return link


def _set_bridge_options(sock: RtnlSocket, index: int, stp: bool, forward_delay: int) -> None:
    # The kernel checks the forward delay against the STP state in force, so the
    # order matters: switch STP off before a short delay, set a long one before STP on.
    if stp:
        sock.set_bridge(index, forward_delay_cs=forward_delay * USER_HZ)
        sock.set_bridge(index, stp=True)
    else:
        sock.set_bridge(index, stp=False)
        sock.set_bridge(index, forward_delay_cs=forward_delay * USER_HZ)


def _set_link(sock: RtnlSocket, index: int, changes: dict[str, Any]) -> None:
    state = changes.get("state")
    mtu = changes.get("mtu")
    if mtu is not None:
        _make_bridge_mtu_stick(sock, index, mtu)
    sock.set_link(index, address=changes.get("address"), alias=changes.get("ifalias"),
                  master=changes.get("master"), mtu=changes.get("mtu"),
                  up=None if state is None else state == "up")


def _make_bridge_mtu_stick(sock: RtnlSocket, index: int, mtu: int) -> None:
    """Make the MTU about to be set on a bridge one the kernel keeps.

    A bridge holds on to its MTU only when setting it changed it (the kernel marks it
    "set by the user" in its change_mtu callback, which an unchanged value never
    reaches); until then every port added lowers it to the smallest port's, so a tap's
    mtu 68 became the bridge's and the host's. A bridge already at ``mtu`` is moved one
    byte up first (up: one below 1280 would take IPv6 off it), and the set that follows
    brings it back and marks it.
    """
    link = sock.get_link(index)
    if link is not None and link.kind == "bridge" and link.mtu == mtu:
        sock.set_link(index, mtu=mtu + 1 if mtu < 65535 else mtu - 1)


def _delete_links(sock: RtnlSocket, indexes: list[int]) -> list[int | None]:
    if len(indexes) == 1:
        try:
            sock.delete_link(indexes[0])
        except OSError as e:
            return [e.errno]
        return [None]
    # A group of their own for this batch (random, high: nobody else's), then one
    # delete for the whole group.
    group = 0x80000000 | secrets.randbits(31)
    errors: list[int | None] = [None if error is None else error.errno for error in
                                sock.changes([set_link_request(index, group=group)
                                              for index in indexes])]
    if any(error is None for error in errors):
        try:
            sock.delete_group(group)
        except OSError as e:
            errors = [e.errno if error is None else error for error in errors]
    return errors


class _Making:
    """One tap on its way through ``_create_taps``."""

    def __init__(self, spec: TapSpec) -> None:
        self.spec = spec
        self.fds: list[int] = []
        self.index = 0
        self.mtu = spec.mtu or 0
        self.guarded = False
        self.error: Exception | None = None

    def undo(self) -> None:
        spec = self.spec
        if self.fds and spec.persistent_owner is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.fds[0], tun.TUNSETPERSIST, 0)
        if self.guarded:
            with contextlib.suppress(nft.NftError):
                nft.unguard_port(nft.context(), spec.name, spec.guard.mac if spec.guard else None)
        tun.close_all(self.fds)
        self.fds = []


def _create_taps(sock: RtnlSocket, specs: list[TapSpec]) -> list[CreatedTap | Exception]:
    """Create, configure and attach taps: an error or the tap for each, in order. Each
    step is taken for all of them at once; a tap that fails a step is undone, and the
    others go on."""
    making = [_Making(spec) for spec in specs]

    def open_tap(tap: _Making) -> None:
        tap.fds = tun.open_tap(tap.spec.name, tap.spec.queues, tap.spec.vnet_hdr)
        if tap.spec.persistent_owner is not None:
            tun.make_persistent(tap.fds[0], tap.spec.persistent_owner)
        tap.index = socket.if_nametoindex(tap.spec.name)

    def read_mtu(tap: _Making) -> None:
        if not tap.mtu:  # none asked for: the one the kernel gave it
            link = sock.get_link(tap.index)
            if link is None:
                raise OSError(errnos.ENODEV, "tap vanished while being configured")
            tap.mtu = link.mtu

    _each(making, open_tap)
    # Before a tap is up: its first frame already meets the guards.
    _guard_all([tap for tap in making if tap.error is None and tap.spec.guard is not None])

    def configure(tap: _Making, no_link_local: bool) -> tuple[int, int, bytes]:
        # Below IPv6's minimum MTU the kernel takes IPv6 off the link as it sets the MTU,
        # then refuses the setting with the rest of the request applied: not asked.
        return set_link_request(tap.index, address=tap.spec.mac, alias=tap.spec.alias,
                                master=tap.spec.master, mtu=tap.spec.mtu,
                                no_link_local=no_link_local and
                                (tap.spec.mtu or IPV6_MIN_MTU) >= IPV6_MIN_MTU)

    # Everything but "up" first: the port settings are in place before it forwards a
    # frame, and it gets no IPv6 address of its own. A bridge port needs none, and each
    # would cost an address with its routes, duplicate address detection and two events
    # more per tap. A kernel without IPv6 (ipv6.disable=1) refuses the setting
    # (EAFNOSUPPORT) before applying anything: such a tap is configured without it.
    refused = _request_each(sock, making, lambda tap: configure(tap, True),
                            tolerated=errnos.EAFNOSUPPORT)
    _request_each(sock, refused, lambda tap: configure(tap, False))
    _each(making, lambda tap: _port_settings(sock, tap.index, tap.spec.isolated,
                                             tap.spec.vlan or 0))
    _request_each(sock, making, lambda tap: set_link_request(tap.index, up=True))
    _each(making, read_mtu)
    for tap in making:
        if tap.error is None and tap.spec.persistent_owner is not None:
            tun.close_all(tap.fds)
            tap.fds = []
    return [tap.error if tap.error is not None else
            CreatedTap(tap.index, tap.mtu, tap.fds) for tap in making]


def _each(making: list[_Making], step: Callable[[_Making], None]) -> None:
    """``step`` for each tap still going; one that fails it is undone."""
    for tap in making:
        if tap.error is None:
            try:
                step(tap)
            except Exception as e:
                tap.error = e
                tap.undo()


def _request_each(sock: RtnlSocket, making: list[_Making],
                  request: Callable[[_Making], tuple[int, int, bytes]],
                  tolerated: int | None = None) -> list[_Making]:
    """One request for each tap still going, all in one send; one refused is undone,
    unless with errno ``tolerated``: those are returned. Should the send itself fail (the
    acks overran our socket, say), every tap in it is undone: what each got is unknown."""
    going = [tap for tap in making if tap.error is None]
    refused: list[_Making] = []
    if not going:
        return refused
    try:
        errors: Sequence[OSError | None] = sock.changes([request(tap) for tap in going])
    except OSError as e:
        errors = [e] * len(going)
    for tap, error in zip(going, errors, strict=True):
        if error is not None and error.errno == tolerated:
            refused.append(tap)
        elif error is not None:
            tap.error = error
            tap.undo()
    return refused


def _guard_all(taps: list[_Making]) -> None:
    """Every tap's guards, in one transaction; if that is refused, one by one, so only
    the taps whose guards fail fail."""
    if not taps:
        return
    context = nft.context()
    log_group = taps[0].spec.guard.log_group if taps[0].spec.guard is not None else 0
    if len(taps) > 1:
        try:
            nft.guard_ports(context, log_group, [(tap.spec.name, tap.spec.guard.mac)
                                                 for tap in taps if tap.spec.guard is not None])
            for tap in taps:
                tap.guarded = True
            return
        except nft.NftError:
            pass

    def guard_one(tap: _Making) -> None:
        guard = tap.spec.guard
        assert guard is not None
        nft.guard_port(context, guard.log_group, tap.spec.name, guard.mac)
        tap.guarded = True

    _each(taps, guard_one)


def _create_vxlan(sock: RtnlSocket, spec: VxlanSpec) -> Link:
    sock.create_vxlan(spec.name, spec.vni, spec.local, spec.port, spec.learning)
    link = sock.get_link(name=spec.name)
    if link is None:
        raise OSError(errnos.ENODEV, f"{spec.name} vanished right after creation")
    try:
        # The mark first, with the master: the first event showing it on the bridge
        # already shows it as bridged's, so nobody takes it for a foreign port.
        sock.set_link(link.index, alias=spec.alias, master=spec.master, mtu=spec.mtu)
        sock.set_port_learning(link.index, spec.bridge_learning)
        sock.set_link(link.index, up=True)
        configured = sock.get_link(link.index)
        if configured is None:
            raise OSError(errnos.ENODEV, f"{spec.name} vanished while being configured")
    except BaseException:
        with contextlib.suppress(OSError):
            sock.delete_link(link.index)
        raise
    return configured


def _set_vxlan(sock: RtnlSocket, index: int, local: IPAddress, learning: bool) -> None:
    sock.set_vxlan(index, local, learning)


def _set_port_learning(sock: RtnlSocket, index: int, learning: bool) -> None:
    sock.set_port_learning(index, learning)


def _attach_tap(sock: RtnlSocket, index: int, master: int, isolated: bool, vlan: int,
                joining: bool) -> None:
    settings = bool(isolated or vlan)
    if joining:
        # With settings, on the bridge but down until they are in place: should they
        # fail, the tap stays down rather than forwarding without them.
        _set_link(sock, index, {"master": master, "state": "down" if settings else "up"})
    if settings:
        _port_settings(sock, index, isolated, vlan)
        if joining:
            _set_link(sock, index, {"state": "up"})


def _port_settings(sock: RtnlSocket, index: int, isolated: bool, vlan: int) -> None:
    """A tap's bridge port settings (a port joining the bridge starts without them):
    isolated or not, and its VLAN (0: none) as its only one, untagged."""
    if isolated:
        sock.set_port_isolated(index)
    if vlan:
        sock.port_vlan(index, vlan, add=True, pvid_untagged=True)
        if vlan != 1:
            try:
                sock.port_vlan(index, 1, add=False)  # the bridge's default, given on joining
            except OSError as e:
                if e.errno != errnos.ENOENT:  # not there (a bridge with another default)
                    raise


def _fdb_entry(sock: RtnlSocket, index: int, mac: str, dst: IPAddress, add: bool) -> None:
    try:
        sock.fdb_entry(index, mac, dst, add=add)
    except OSError as e:
        # Already there (adding), already gone (deleting): what we wanted.
        if e.errno != (errnos.EEXIST if add else errnos.ENOENT):
            raise


def _add_address(sock: RtnlSocket, index: int, interface: Interface | Address,
                 nodad: bool) -> None:
    try:
        if isinstance(interface, Address):
            address = interface
            sock.address(index, address.interface, add=True,
                         nodad=nodad and address.interface.version == 6, flags=address.flags,
                         scope=address.scope, preferred_lft=address.preferred_lft,
                         valid_lft=address.valid_lft, broadcast=address.broadcast,
                         metric=address.metric)
        else:
            sock.address(index, interface, add=True, nodad=nodad and interface.version == 6)
    except OSError as e:
        if e.errno != errnos.EEXIST:  # already there, which is what we want
            raise


def _delete_address(sock: RtnlSocket, index: int, interface: Interface) -> None:
    try:
        sock.address(index, interface, add=False)
    except OSError as e:
        if e.errno not in (errnos.EADDRNOTAVAIL, errnos.ENODEV):  # already gone
            raise


def _replace_route(sock: RtnlSocket, index: int, route: Route, instead_of: int | None) -> None:
    sock.route(index, route, replace=True, instead_of=instead_of)


def _delete_route(sock: RtnlSocket, index: int, route: Route) -> None:
    try:
        sock.route(index, route, replace=False)
    except OSError as e:
        if e.errno not in (errnos.ESRCH, errnos.ENODEV):  # already gone
            raise
