"""An in-memory kernel behind the ``Netlink`` methods the daemon calls: no root, no
threads, the same run every time.

``FakeKernel`` holds links, addresses and routes. Every change queues the events the
real kernel would send on the monitor socket (RTM_NEWLINK with the link's whole
state, RTM_DELLINK, and the bridge's AF_BRIDGE port notices); ``deliver()`` hands them
to the monitor, ``lose_events()`` drops them and reports an overrun (ENOBUFS).
``FakeNetlink`` is one request lane over it, with the same methods and errors as
``bridged.kernel.netlink.Netlink``; ``FakeMonitor`` stands in for ``LinkMonitor``.

A test changes the kernel between the daemon's steps with hooks: ``on(method, action)``
runs ``action`` when a request of that kind is made, before or after the kernel acts
on it (a dump's snapshot is taken at "after": what an "after" hook changes is newer
than the dump); ``at_request(n, action)`` runs it at the n-th request, whatever it is,
so a test can sweep a disturbance across every step of a sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bridged.kernel.events import AddressEvent, LinkEvent
from bridged.kernel.netlink import AF_BRIDGE, Address, CreatedTap, KernelError, Link, Route, TapSpec

T = TypeVar("T")
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Action = Callable[[tuple[Any, ...]], None]


@dataclass
class Hook:
    method: str | None  # None: any request (with ``nth``)
    when: str  # "before" or "after"
    action: Action
    match: Callable[[tuple[Any, ...]], bool] | None = None
    times: int = 1
    nth: int | None = None  # the request number (0-based) it fires at


@dataclass
class FakeKernel:
    links: dict[int, Link] = field(default_factory=dict)
    addresses: dict[int, list[Address]] = field(default_factory=dict)
    routes: dict[int, list[Route]] = field(default_factory=dict)
    bridge_options: dict[int, tuple[bool, int]] = field(default_factory=dict)
    # Events the monitor socket holds, in the kernel's order.
    queue: list[LinkEvent | AddressEvent] = field(default_factory=list)
    # Every request made, as (lane, method, args).
    requests: list[tuple[str, str, tuple[Any, ...]]] = field(default_factory=list)
    # Deliver queued events whenever a request returns (the monitor keeps up).
    auto_deliver: bool = True
    monitor: FakeMonitor | None = None
    hooks: list[Hook] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)  # fds handed out for OpenTap taps
    _next_index: int = 1

    # --- reading ----------------------------------------------------------------------

    def by_name(self, name: str) -> Link | None:
        return next((link for link in self.links.values() if link.name == name), None)

    def index(self, name: str) -> int:
        link = self.by_name(name)
        assert link is not None, f"no link {name} in the fake kernel"
        return link.index

    def bridged_taps(self) -> set[str]:
        """What ListTaps must equal: links whose ifalias says a client's tap."""
        return {link.name for link in self.links.values()
                if (link.alias or "").startswith("bridged:uid=")}

    # --- changing it (as another tool, a client or the kernel itself would) --------------

    def add(self, name: str, kind: str | None = "tun", *, master: int | None = None,
            up: bool = False, alias: str | None = None, mtu: int = 1500,
            address: str | None = None, perm_address: str | None = None,
            index: int | None = None) -> Link:
        if self.by_name(name) is not None:
            raise KernelError(errno.EEXIST, f"add {name}")
        if index is None:
            index = self._next_index
        assert index not in self.links, f"index {index} in use"
        self._next_index = max(self._next_index, index + 1)
        link = Link(index=index, name=name, kind=kind, master=None, up=up,
                    operstate="UP" if up else "DOWN",
                    address=address or f"02:00:00:00:{index >> 8 & 0xff:02x}:{index & 0xff:02x}",
                    perm_address=perm_address, alias=alias, mtu=mtu)
        self.links[index] = link
        self.addresses[index] = []
        self.routes[index] = []
        self.queue.append(LinkEvent(False, link))
        if master is not None:
            link = self.change(index, master=master)
        return link

    def change(self, index: int, **fields: Any) -> Link:
        old = self.links.get(index)
        if old is None:
            raise KernelError(errno.ENODEV, f"change {index}")
        if "up" in fields:
            fields["operstate"] = "UP" if fields["up"] else "DOWN"
        new = dataclasses.replace(old, **fields)
        if new.master is not None and new.master != old.master:
            bridge = self.links.get(new.master)
            if bridge is None or bridge.kind != "bridge":
                raise KernelError(errno.EINVAL, f"set master of {old.name} to {new.master}")
        self.links[index] = new
        if old.master is not None and new.master != old.master:
            self.queue.append(LinkEvent(True, dataclasses.replace(old, family=AF_BRIDGE)))
        self.queue.append(LinkEvent(False, new))
        if new.master is not None:
            self.queue.append(LinkEvent(False, dataclasses.replace(new, family=AF_BRIDGE)))
        return new

    def rename(self, index: int, name: str) -> Link:
        if self.by_name(name) is not None:
            raise KernelError(errno.EEXIST, f"rename to {name}")
        return self.change(index, name=name)

    def delete(self, index: int) -> None:
        link = self.links.get(index)
        if link is None:
            raise KernelError(errno.ENODEV, f"delete {index}")
        if link.kind == "bridge":
            for port in [p for p in self.links.values() if p.master == index]:
                self.change(port.index, master=None)
        if link.master is not None:
            self.queue.append(LinkEvent(True, dataclasses.replace(link, family=AF_BRIDGE)))
        del self.links[index]
        self.addresses.pop(index, None)
        self.routes.pop(index, None)
        self.queue.append(LinkEvent(True, link))

    def add_address(self, index: int, interface: Interface | Address) -> None:
        if index not in self.links:
            raise KernelError(errno.ENODEV, f"add address to {index}")
        if isinstance(interface, Address):
            address = interface
        else:
            address = Address(interface, 0 if not interface.is_link_local else 253)
        if address not in self.addresses[index]:
            self.addresses[index].append(address)
            self.queue.append(AddressEvent(False, index, address))

    # --- the monitor socket -----------------------------------------------------------

    def deliver(self) -> None:
        """Hand every queued event to the monitor, in order (none to a monitor not yet
        listening: those the first dump covers)."""
        while self.queue:
            event = self.queue.pop(0)
            if self.monitor is not None:
                self.monitor.receive(event)

    def lose_events(self) -> None:
        """The monitor socket overran: what was queued is lost, and ENOBUFS says so."""
        self.queue.clear()
        if self.monitor is not None:
            self.monitor.overran()

    # --- hooks --------------------------------------------------------------------------

    def on(self, method: str, action: Action, *, when: str = "before",
           match: Callable[[tuple[Any, ...]], bool] | None = None, times: int = 1) -> None:
        self.hooks.append(Hook(method, when, action, match, times))

    def at_request(self, nth: int, action: Action, *, when: str = "after") -> None:
        """Run ``action`` at request number ``nth`` (0-based, counted from now)."""
        self.hooks.append(Hook(None, when, action, nth=len(self.requests) + nth))

    def _run_hooks(self, method: str, when: str, number: int, args: tuple[Any, ...]) -> None:
        for hook in list(self.hooks):
            if hook.when != when or hook.times <= 0:
                continue
            if hook.nth is not None:
                if hook.nth != number:
                    continue
            elif hook.method != method or (hook.match is not None and not hook.match(args)):
                continue
            hook.times -= 1
            if hook.times <= 0:
                self.hooks.remove(hook)
            hook.action(args)

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


class FakeMonitor:
    """``LinkMonitor``'s interface, fed by ``FakeKernel.deliver``."""

    def __init__(self, kernel: FakeKernel, on_event: Callable[[LinkEvent], None],
                 on_overrun: Callable[[], None],
                 on_address: Callable[[AddressEvent], None] | None = None,
                 watches_addresses_of: Callable[[int], bool] | None = None) -> None:
        self._kernel = kernel
        self._on_event = on_event
        self._on_overrun = on_overrun
        self._on_address = on_address
        self._watched = watches_addresses_of

    def start(self) -> None:
        self._kernel.monitor = self

    def stop(self) -> None:
        if self._kernel.monitor is self:
            self._kernel.monitor = None

    def receive(self, event: LinkEvent | AddressEvent) -> None:
        if isinstance(event, LinkEvent):
            self._on_event(event)
        elif self._on_address is not None and self._watched is not None and \
                self._watched(event.index):
            self._on_address(event)

    def overran(self) -> None:
        self._on_overrun()


class FakeNetlink:
    """A request lane: ``Netlink``'s methods, answered by a ``FakeKernel``."""

    def __init__(self, kernel: FakeKernel, name: str = "netlink") -> None:
        self.kernel = kernel
        self.name = name
        self.closed = False

    async def _request(self, method: str, args: tuple[Any, ...], act: Callable[[], T]) -> T:
        kernel = self.kernel
        number = len(kernel.requests)
        kernel.requests.append((self.name, method, args))
        kernel._run_hooks(method, "before", number, args)
        await asyncio.sleep(0)  # the trip to the lane's thread
        try:
            result = act()
            kernel._run_hooks(method, "after", number, args)
        finally:
            await asyncio.sleep(0)
            if kernel.auto_deliver:
                kernel.deliver()
        return result

    def _link(self, index: int, what: str) -> Link:
        link = self.kernel.links.get(index)
        if link is None:
            raise KernelError(errno.ENODEV, f"{what}({index})")
        return link

    def close(self) -> None:
        self.closed = True

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """A raw socket function (neighbour probes...): the fake kernel has no sockets,
        and the tests' daemon must never send anything for real."""
        raise AssertionError(f"{fn.__name__}{args!r} asked of the fake kernel")

    async def run_nft(self, fn: Callable[..., T], *args: Any) -> T:
        """libnftables: absent here, as on a host without python3-nftables (the tests
        run with taps.guard = false), so nothing can reach the machine's ruleset."""
        from bridged.kernel import nft
        raise nft.NftError("no libnftables in the fake kernel")

    # --- links -------------------------------------------------------------------------

    async def link(self, name: str | None = None, index: int | None = None) -> Link | None:
        def act() -> Link | None:
            if index is not None:
                return self.kernel.links.get(index)
            return self.kernel.by_name(name or "")
        return await self._request("link", (name, index), act)

    async def links(self) -> list[Link]:
        return await self._request("links", (), lambda: sorted(
            self.kernel.links.values(), key=lambda link: link.index))

    async def create_bridge(self, name: str, stp: bool, forward_delay: int) -> Link:
        def act() -> Link:
            link = self.kernel.add(name, "bridge")
            self.kernel.bridge_options[link.index] = (stp, forward_delay)
            return link
        return await self._request("create_bridge", (name, stp, forward_delay), act)

    async def set_bridge_options(self, index: int, stp: bool, forward_delay: int) -> None:
        def act() -> None:
            self._link(index, "set_bridge_options")
            self.kernel.bridge_options[index] = (stp, forward_delay)
        await self._request("set_bridge_options", (index, stp, forward_delay), act)

    async def set_link(self, index: int, **changes: Any) -> None:
        def act() -> None:
            link = self._link(index, "set_link")
            fields: dict[str, Any] = {}
            if "master" in changes:
                fields["master"] = changes["master"] or None
            if "state" in changes:
                fields["up"] = changes["state"] == "up"
            if "mtu" in changes:
                fields["mtu"] = changes["mtu"]
            if "address" in changes:
                fields["address"] = changes["address"]
            if "ifalias" in changes:
                fields["alias"] = changes["ifalias"]
            if {k: v for k, v in fields.items() if getattr(link, k) != v}:
                self.kernel.change(index, **fields)
        await self._request("set_link", (index, tuple(sorted(changes.items()))), act)

    async def attach_tap(self, index: int, master: int, isolated: bool, vlan: int,
                         joining: bool) -> None:
        # Port settings are not modelled here (tests/test_dbus.py has the kernel's).
        if joining:
            await self.set_link(index, master=master, state="up")

    async def delete_link(self, index: int) -> None:
        await self._request("delete_link", (index,), lambda: self.kernel.delete(index))

    async def delete_links(self, indexes: list[int]) -> list[int | None]:
        def act() -> list[int | None]:
            out: list[int | None] = []
            for index in indexes:
                try:
                    self.kernel.delete(index)
                    out.append(None)
                except KernelError as e:
                    out.append(e.errno)
            return out
        return await self._request("delete_links", (tuple(indexes),), act)

    async def create_tap(self, spec: TapSpec) -> CreatedTap:
        def act() -> CreatedTap:
            link = self.kernel.add(spec.name, "tun")
            try:
                link = self.kernel.change(link.index, address=spec.mac, alias=spec.alias,
                                          master=spec.master, mtu=spec.mtu or link.mtu,
                                          up=True)
            except KernelError:
                self.kernel.delete(link.index)  # the half-made tap goes
                raise
            if spec.persistent_owner is not None:
                return CreatedTap(link.index, link.mtu, [])
            fds = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(spec.queues)]
            self.kernel.fds.extend(fds)
            return CreatedTap(link.index, link.mtu, fds)
        return await self._request("create_tap", (spec,), act)

    async def bridge_vlan_filtering(self, index: int) -> bool:
        def act() -> bool:
            self._link(index, "bridge_vlan_filtering")
            return False
        return await self._request("bridge_vlan_filtering", (index,), act)

    # --- addresses and routes: a dump filtered to a missing link is ENODEV, as with
    # strict checking in the kernel -------------------------------------------------------

    async def addresses(self, index: int) -> list[Address]:
        def act() -> list[Address]:
            self._link(index, "addresses")
            return list(self.kernel.addresses[index])
        return await self._request("addresses", (index,), act)

    async def add_address(self, index: int, interface: Interface | Address,
                          nodad: bool = False) -> None:
        await self._request("add_address", (index, interface, nodad),
                            lambda: self.kernel.add_address(index, interface))

    async def delete_address(self, index: int, interface: Interface) -> None:
        def act() -> None:
            held = self.kernel.addresses.get(index, [])
            for address in [a for a in held if a.interface == interface]:
                held.remove(address)
                self.kernel.queue.append(AddressEvent(True, index, address))
        await self._request("delete_address", (index, interface), act)

    async def routes(self, index: int) -> list[Route]:
        def act() -> list[Route]:
            self._link(index, "routes")
            return list(self.kernel.routes[index])
        return await self._request("routes", (index,), act)

    async def replace_route(self, index: int, route: Route, *,
                            instead_of: int | None = None) -> None:
        def act() -> None:
            self._link(index, "replace_route")
            new = route.via(index, instead_of) if instead_of is not None else \
                dataclasses.replace(route, oif=index)
            for held in self.kernel.routes.values():
                for old in [r for r in held if r.destination == new.destination
                            and r.priority == new.priority and r.table == new.table]:
                    held.remove(old)
            self.kernel.routes[index].append(new)
        await self._request("replace_route", (index, route, instead_of), act)

    async def delete_route(self, index: int, route: Route) -> None:
        def act() -> None:
            held = self.kernel.routes.get(index, [])
            if route in held:
                held.remove(route)
        await self._request("delete_route", (index, route), act)
