"""rtnetlink requests: links, addresses and routes.

The only module that calls pyroute2's request API (``rtnl`` does the few raw requests
of the tap hot path). It states no policy: it does what it is asked and returns plain
dataclasses.

pyroute2's synchronous ``IPRoute`` is the one API that Debian 12 (0.7.2), Debian 13
(0.7.7) and PyPI (0.9.x) share. In 0.9.x it drives an event loop of its own, so it
cannot be called from the asyncio thread; and netlink requests block (deleting a tap
takes ~16 ms in the kernel). So every ``Netlink`` owns one worker thread with its own
socket, and the daemon awaits it. Several instances give independent lanes: a slow
delete on one never delays a create on another.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bridged.kernel import tun
from bridged.kernel.link import Link
from bridged.kernel.rtnl import LinkSocket

__all__ = ["KernelError", "Link", "Netlink", "TapSpec"]

T = TypeVar("T")

IFF_UP = 0x1
IFA_F_NODAD = 0x2
AF_BRIDGE = 7
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
# Centiseconds per second: the kernel takes bridge timers in clock_t (USER_HZ = 100).
USER_HZ = 100


class KernelError(Exception):
    """A netlink or ioctl request the kernel refused; ``errno`` says why."""

    def __init__(self, errno: int, what: str) -> None:
        self.errno = errno
        self.what = what
        super().__init__(f"{what}: {_strerror(errno)}")


def _strerror(errno: int) -> str:
    try:
        return os.strerror(errno)
    except ValueError:
        return f"errno {errno}"



@dataclass(frozen=True)
class Address:
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    scope: int

    @property
    def is_global(self) -> bool:
        return self.scope == RT_SCOPE_UNIVERSE


@dataclass(frozen=True)
class Route:
    destination: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    priority: int | None = None
    protocol: int = 3  # RTPROT_BOOT, what `ip route add` uses
    scope: int = RT_SCOPE_UNIVERSE

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0


def link_from_msg(msg: Any) -> Link:
    """Build a Link from a pyroute2 ifinfmsg (a reply or an event)."""
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME") or "",
        kind=kind,
        master=msg.get_attr("IFLA_MASTER") or None,
        up=bool(msg["flags"] & IFF_UP),
        operstate=msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN",
        address=msg.get_attr("IFLA_ADDRESS"),
        perm_address=_perm_address(msg),
        alias=msg.get_attr("IFLA_IFALIAS") or None,
        mtu=msg.get_attr("IFLA_MTU") or 0,
        family=msg["family"],
    )


def _perm_address(msg: Any) -> str | None:
    # IFLA_PERM_ADDRESS (kernel 5.5+) is not in pyroute2 0.7.2's attribute table.
    try:
        value = msg.get_attr("IFLA_PERM_ADDRESS")
    except (KeyError, ValueError):
        return None
    if not value or value == "00:00:00:00:00:00":
        return None
    return str(value)


def _is_unicast_route(msg: Any) -> bool:
    return bool(msg["type"] == RTN_UNICAST and msg["table"] == RT_TABLE_MAIN)


class Netlink:
    """A netlink request lane: one thread, one socket, async methods."""

    def __init__(self, name: str = "netlink") -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._local = threading.local()
        self._name = name

    def _ipr(self) -> Any:
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            ipr = self._local.ipr = IPRoute()
        return ipr

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(ipr, *args)`` on this lane's thread and translate kernel errors."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(self._ipr(), *args)
        except NetlinkError as e:
            raise KernelError(e.code, f"{fn.__name__.lstrip('_')}{args!r}") from None
        except OSError as e:  # tun ioctls, if_nametoindex
            raise KernelError(e.errno or 0, f"{fn.__name__.lstrip('_')}{args!r}") from None

    def close(self) -> None:
        def close_socket() -> None:
            ipr = getattr(self._local, "ipr", None)
            if ipr is not None:
                ipr.close()
                self._local.ipr = None

        self._executor.submit(close_socket)
        self._executor.shutdown(wait=True)

    # --- links -------------------------------------------------------------------

    async def link(self, name: str | None = None, index: int | None = None) -> Link | None:
        return await self.run(_get_link, name, index)

    async def links(self) -> list[Link]:
        return await self.run(_dump_links)

    async def create_bridge(self, name: str, stp: bool, forward_delay: int) -> Link:
        return await self.run(_create_bridge, name, stp, forward_delay)

    async def set_bridge_options(self, index: int, stp: bool, forward_delay: int) -> None:
        await self.run(_set_bridge_options, index, stp, forward_delay)

    async def set_link(self, index: int, **changes: Any) -> None:
        """One RTM_NEWLINK with the given changes: master, state, mtu, address, ifalias."""
        await self.run(_set_link, index, changes)

    async def delete_link(self, index: int) -> None:
        await self.run(_delete_link, index)

    async def create_tap(self, spec: TapSpec) -> tuple[Link, list[int]]:
        """Create, configure and attach a tap in one trip to the lane's thread.

        Returns the link and its open queue fds (already closed for a persistent tap,
        so the list is empty). On any failure the half-made tap is removed.
        """
        return await self.run(_create_tap, spec)

    async def bridge_vlan_filtering(self, index: int) -> bool:
        return await self.run(_bridge_vlan_filtering, index)

    # --- addresses and routes ------------------------------------------------------

    async def addresses(self, index: int) -> list[Address]:
        return await self.run(_addresses, index)

    async def add_address(
        self, index: int, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
        nodad: bool = False,
    ) -> None:
        await self.run(_add_address, index, interface, nodad)

    async def delete_address(
        self, index: int, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> None:
        await self.run(_delete_address, index, interface)

    async def routes(self, index: int) -> list[Route]:
        return await self.run(_routes, index)

    async def replace_route(self, index: int, route: Route) -> None:
        await self.run(_replace_route, index, route)

    async def delete_route(self, index: int, route: Route) -> None:
        await self.run(_delete_route, index, route)


# The functions below run on a lane's thread with that thread's IPRoute.


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


_raw = threading.local()


def _link_socket() -> LinkSocket:
    """This lane thread's raw rtnetlink socket."""
    sock = getattr(_raw, "sock", None)
    if sock is None:
        sock = _raw.sock = LinkSocket()
    return sock


def _create_tap(ipr: Any, spec: TapSpec) -> tuple[Link, list[int]]:
    fds = tun.open_tap(spec.name, spec.queues, spec.vnet_hdr)
    try:
        if spec.persistent_owner is not None:
            tun.make_persistent(fds[0], spec.persistent_owner)
        index = socket.if_nametoindex(spec.name)
        raw = _link_socket()
        try:
            raw.set_link(index, address=spec.mac, alias=spec.alias, master=spec.master,
                         mtu=spec.mtu, up=True)
            if spec.isolated:
                ipr.brport("set", index=index, isolated=1)
            if spec.vlan is not None:
                ipr.vlan_filter("add", index=index,
                                vlan_info={"vid": spec.vlan, "flags": ["pvid", "untagged"]})
                if spec.vlan != 1:
                    ipr.vlan_filter("del", index=index, vlan_info={"vid": 1})
            link = raw.get_link(index)
        except BaseException:
            if spec.persistent_owner is not None:
                fcntl.ioctl(fds[0], tun.TUNSETPERSIST, 0)
            raise
    except BaseException:
        tun.close_all(fds)
        raise
    if spec.persistent_owner is not None:
        tun.close_all(fds)
        fds = []
    return link, fds


def _bridge_vlan_filtering(ipr: Any, index: int) -> bool:
    info = ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    return bool(data is not None and data.get_attr("IFLA_BR_VLAN_FILTERING"))


def _get_link(ipr: Any, name: str | None, index: int | None) -> Link | None:
    try:
        if index is None:
            found = ipr.link_lookup(ifname=name)
            if not found:
                return None
            index = found[0]
        return link_from_msg(ipr.get_links(index)[0])
    except NetlinkError as e:
        if e.code == 19:  # ENODEV: gone between lookup and get
            return None
        raise


def _dump_links(ipr: Any) -> list[Link]:
    return [link_from_msg(m) for m in ipr.get_links()]


def _create_bridge(ipr: Any, name: str, stp: bool, forward_delay: int) -> Link:
    ipr.link(
        "add", ifname=name, kind="bridge",
        br_stp_state=int(stp), br_forward_delay=forward_delay * USER_HZ,
    )
    link = _get_link(ipr, name, None)
    if link is None:
        raise NetlinkError(19, "bridge vanished right after creation")
    return link


def _set_bridge_options(ipr: Any, index: int, stp: bool, forward_delay: int) -> None:
    # The kernel checks the forward delay against the STP state in force, so the
    # order matters: switch STP off before a short delay, set a long one before STP on.
    stp_change = {"br_stp_state": int(stp)}
    delay_change = {"br_forward_delay": forward_delay * USER_HZ}
    for change in ((stp_change, delay_change) if not stp else (delay_change, stp_change)):
        ipr.link("set", index=index, kind="bridge", **change)


def _set_link(ipr: Any, index: int, changes: dict[str, Any]) -> None:
    ipr.link("set", index=index, **changes)


def _delete_link(ipr: Any, index: int) -> None:
    ipr.link("del", index=index)


def _addresses(ipr: Any, index: int) -> list[Address]:
    out = []
    for msg in ipr.get_addr(index=index):
        text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        out.append(Address(ipaddress.ip_interface(f"{text}/{msg['prefixlen']}"), msg["scope"]))
    return out


def _add_address(
    ipr: Any, index: int, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    nodad: bool,
) -> None:
    extra = {"flags": IFA_F_NODAD} if nodad and interface.version == 6 else {}
    try:
        ipr.addr("add", index=index, address=str(interface.ip),
                 prefixlen=interface.network.prefixlen, **extra)
    except NetlinkError as e:
        if e.code != 17:  # EEXIST: already there, which is what we want
            raise


def _delete_address(
    ipr: Any, index: int, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> None:
    try:
        ipr.addr("del", index=index, address=str(interface.ip),
                 prefixlen=interface.network.prefixlen)
    except NetlinkError as e:
        if e.code not in (99, 19):  # EADDRNOTAVAIL, ENODEV: already gone
            raise


def _routes(ipr: Any, index: int) -> list[Route]:
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family, oif=index, table=RT_TABLE_MAIN):
            if not _is_unicast_route(msg) or msg.get_attr("RTA_OIF") != index:
                continue
            dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            gateway = msg.get_attr("RTA_GATEWAY")
            out.append(Route(
                destination=ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False),
                gateway=ipaddress.ip_address(gateway) if gateway else None,
                priority=msg.get_attr("RTA_PRIORITY"),
                protocol=msg["proto"],
                scope=msg["scope"],
            ))
    return out


def _route_args(index: int, route: Route) -> dict[str, Any]:
    args: dict[str, Any] = {
        "dst": str(route.destination),
        "oif": index,
        "family": socket.AF_INET if route.destination.version == 4 else socket.AF_INET6,
        "proto": route.protocol,
        "scope": route.scope,
        "table": RT_TABLE_MAIN,
    }
    if route.gateway is not None:
        args["gateway"] = str(route.gateway)
    if route.priority is not None:
        args["priority"] = route.priority
    return args


def _replace_route(ipr: Any, index: int, route: Route) -> None:
    ipr.route("replace", **_route_args(index, route))


def _delete_route(ipr: Any, index: int, route: Route) -> None:
    try:
        ipr.route("del", **_route_args(index, route))
    except NetlinkError as e:
        if e.code not in (3, 19):  # ESRCH, ENODEV: already gone
            raise
