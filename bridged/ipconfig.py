"""The host's IP configuration on the bridge, and moving it off the uplink safely.

The order keeps the host reachable at every step: addresses are added to the bridge
first, then the uplink is enslaved, then routes are pointed at the bridge, and only
then are addresses and routes removed from the uplink. At no moment does the host
lack an address on a link that carries its traffic.

What an uplink carried is taken as the kernel reports it: a leased (DHCP) or
autoconfigured address keeps its remaining lifetime and flags, a route its metrics,
preferred source, onlink flag and multipath hops. What the uplink carried before the
move is kept too, so that a rollback gives it back exactly.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridged.config import IPConfig
from bridged.kernel.link import INFINITY_LIFE_TIME
from bridged.kernel.netlink import RTPROT_KERNEL, Address, KernelError, Link, Netlink, Route

log = logging.getLogger(__name__)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Stands for the bridge's interface index in the routes bridged keeps for it: a bridge
# deleted and made again has a new index, and the routes go with it.
BRIDGE = -1


@dataclass
class UplinkSnapshot:
    """What an uplink carried just before it was enslaved: what migrate mode moves, and
    what a rollback gives back."""

    addresses: list[Address] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    taken_at: float = field(default_factory=time.monotonic)

    def aged(self) -> list[Address]:
        """The addresses with what is left of their lifetimes now."""
        spent = int(time.monotonic() - self.taken_at)
        return [_aged(a, spent) for a in self.addresses]


def _aged(address: Address, seconds: int) -> Address:
    def left(lifetime: int) -> int:
        return lifetime if lifetime == INFINITY_LIFE_TIME else max(0, lifetime - seconds)

    return dataclasses.replace(address, preferred_lft=left(address.preferred_lft),
                               valid_lft=max(1, left(address.valid_lft)))


def _movable_routes(routes: list[Route]) -> list[Route]:
    # Routes the kernel made for an address come back by themselves with the address.
    return [r for r in routes if r.protocol != RTPROT_KERNEL]


def static_routes(config: IPConfig) -> list[Route]:
    return [
        Route(destination=ipaddress.ip_network("0.0.0.0/0" if gw.version == 4 else "::/0"),
              gateway=gw)
        for gw in config.gateways
    ]


class IPManager:
    """Holds the addresses and routes the bridge should carry and applies them."""

    def __init__(self, config: IPConfig, netlink: Netlink) -> None:
        self.config = config
        self._netlink = netlink
        # migrate and dhcp modes: what was moved from uplinks (routes via BRIDGE), so a
        # recreated bridge gets it back.
        self._moved = UplinkSnapshot()
        # uplink index -> what it carried before its first move: a rollback's target.
        self.before_move: dict[int, UplinkSnapshot] = {}

    @property
    def manages_ip(self) -> bool:
        return self.config.mode != "none"

    @property
    def moves_uplink_config(self) -> bool:
        """The bridge takes what the uplink has (migrate; dhcp until its lease lands)."""
        return self.config.mode in ("migrate", "dhcp")

    @property
    def moved_leases(self) -> bool:
        """Did a leased or autoconfigured address move? Then a DHCP client must renew it
        on the bridge: frozen, it would just run out."""
        return any(not a.is_permanent for a in self._moved.addresses)

    def desired_addresses(self) -> list[IPInterface]:
        if self.config.mode == "static":
            return list(self.config.addresses)
        return [a.interface for a in self._moved.addresses]

    def _addresses_to_add(self) -> list[Address | IPInterface]:
        if self.config.mode == "static":
            return list(self.config.addresses)
        return list(self._moved.aged())

    def desired_routes(self) -> list[Route]:
        """The bridge's routes, with BRIDGE for its interface (see ``_on``)."""
        if self.config.mode == "static":
            return static_routes(self.config)
        return list(self._moved.routes)

    def gateways(self) -> list[IPAddress]:
        """The gateways the host should reach through the bridge after a move."""
        routes = self.desired_routes()
        defaults = [r.gateway for r in routes if r.is_default and r.gateway is not None]
        everything = [hop.gateway for r in routes for hop in r.multipath if hop.gateway]
        everything += [r.gateway for r in routes if r.gateway is not None]
        return list(dict.fromkeys(defaults or everything))

    # --- the move ----------------------------------------------------------------------

    async def apply_to_bridge(self, bridge: Link, uplinks: Sequence[Link] = ()) -> None:
        """Put the desired addresses on a (new or adopted) bridge, and its routes unless
        ``uplinks`` are still to be enslaved (then the routes follow the enslaving: a
        route replaced now would take the uplink's own away before the bridge can carry
        its traffic).

        Addresses the uplinks hold skip duplicate detection, as in ``before_enslave``.
        """
        if not self.manages_ip:
            return
        pending = [u for u in uplinks if u.master != bridge.index]
        held: set[IPInterface] = set()
        for uplink in pending:
            try:
                held |= {a.interface for a in (await self._remember(uplink)).addresses}
            except KernelError as e:
                if e.errno != errno.ENODEV:
                    raise
                # Unplugged since it was listed: it holds nothing; its events say what next.
        for address in self._addresses_to_add():
            await self._netlink.add_address(bridge.index, address,
                                            nodad=_interface(address) in held)
        if not pending:
            for route in self.desired_routes():
                await self._replace_route(bridge, route)

    async def before_enslave(self, bridge: Link, uplink: Link) -> list[IPInterface]:
        """Step 1: copy the uplink's addresses to the bridge. Returns what was added."""
        if not self.manages_ip:
            return []
        snapshot = await self._remember(uplink)
        on_uplink = {a.interface for a in snapshot.addresses}
        if self.moves_uplink_config:
            self._take(snapshot, uplink)
        present = {a.interface for a in await self._netlink.addresses(bridge.index)}
        missing = [a for a in self._addresses_to_add() if _interface(a) not in present]
        added: list[IPInterface] = []
        # An address the uplink already holds passed duplicate detection on this very
        # LAN; detecting again would leave it "tentative" (unusable) for a second or two.
        for address in missing:
            interface = _interface(address)
            await self._netlink.add_address(bridge.index, address, nodad=interface in on_uplink)
            added.append(interface)
            log.info("address %s added to %s", interface, bridge.name,
                     extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "address-added",
                            "BRIDGED_ADDRESS": str(interface)})
        return added

    async def undo_before_enslave(self, bridge: Link, added: list[IPInterface]) -> None:
        for address in added:
            await self._netlink.delete_address(bridge.index, address)

    async def after_enslave(self, bridge: Link, uplink: Link) -> int:
        """Steps 3 and 4: routes onto the bridge, then clear the uplink. Returns how many
        addresses left the uplink."""
        if not self.manages_ip:
            return 0
        for route in self.desired_routes():
            await self._replace_route(bridge, route)
        return await self.clear_uplink(bridge, uplink)

    async def clear_uplink(self, bridge: Link, uplink: Link) -> int:
        """An enslaved port's own addresses are dead (its frames go to the bridge device)
        and its routes lead nowhere: remove them. Returns how many addresses went.

        Routes are read again rather than taken from the snapshot: re-created on the
        bridge, most replaced the uplink's in place, and an IPv6 multipath route is
        deleted hop by hop, so deleting a stale copy would take the bridge's hops too.
        """
        if not self.manages_ip:
            return 0
        for route in _movable_routes(await self._netlink.routes(uplink.index)):
            await self._netlink.delete_route(uplink.index, route)
        on_bridge = set(self.desired_addresses())
        moved = 0
        for address in await self._netlink.addresses(uplink.index):
            if not address.is_global:
                continue
            await self._netlink.delete_address(uplink.index, address.interface)
            moved += 1
            if address.interface in on_bridge:
                log.info("address %s moved from %s to %s", address.interface, uplink.name,
                         bridge.name, extra={"INTERFACE": uplink.name,
                                             "BRIDGED_EVENT": "address-moved",
                                             "BRIDGED_ADDRESS": str(address.interface)})
            else:
                log.info("address %s removed from %s (enslaved to %s, which carries the "
                         "configured addresses)", address.interface, uplink.name,
                         bridge.name, extra={"INTERFACE": uplink.name,
                                             "BRIDGED_EVENT": "address-removed",
                                             "BRIDGED_ADDRESS": str(address.interface)})
        return moved

    # --- rollback ------------------------------------------------------------------------

    async def give_back(self, bridge: Link, uplink: Link) -> None:
        """Rollback, first step, with the uplink still enslaved: its own addresses back
        (dead until it leaves the bridge, live the moment it does)."""
        snapshot = self.before_move.get(uplink.index)
        for address in snapshot.aged() if snapshot is not None else []:
            await self._netlink.add_address(uplink.index, address, nodad=True)

    async def give_back_routes(self, bridge: Link, uplink: Link) -> None:
        """Rollback, last steps, with the uplink off the bridge: bridged's addresses and
        routes leave the bridge, then the uplink's routes come back. In that order: the
        kernel drops routes that depend on an address when a copy of it is deleted
        elsewhere, so routes restored earlier would vanish with the bridge's copy."""
        await self.clear_bridge(bridge)
        snapshot = self.before_move.pop(uplink.index, None)
        for route in snapshot.routes if snapshot is not None else []:
            try:
                await self._netlink.replace_route(uplink.index, route)
            except KernelError as e:
                log.warning("could not restore route %s on %s: %s", route.destination,
                            uplink.name, e, extra={"INTERFACE": uplink.name,
                                                   "BRIDGED_EVENT": "route-failed"})
        if self.moves_uplink_config:
            self._moved = UplinkSnapshot()  # the uplink has it again, not the bridge

    async def clear_bridge(self, bridge: Link) -> None:
        """Take bridged's addresses and routes off the bridge (mode none: nothing)."""
        if not self.manages_ip:
            return
        for route in self.desired_routes():
            await self._netlink.delete_route(bridge.index, route.via(bridge.index, BRIDGE))
        for address in self.desired_addresses():
            await self._netlink.delete_address(bridge.index, address)

    # --- teardown (bridge.teardown_on_stop) ----------------------------------------------

    async def restore_addresses_to_uplink(self, uplink: Link) -> None:
        """Teardown, first step: the uplink gets the bridge's addresses back (before it
        leaves the bridge, so the host stays reachable)."""
        if not self.manages_ip:
            return
        for address in self._addresses_to_add():
            await self._netlink.add_address(uplink.index, address)

    async def restore_routes_to_uplink(self, uplink: Link) -> None:
        """Teardown, last step: the routes, once the bridge (and its routes) are gone."""
        if not self.manages_ip:
            return
        for route in self.desired_routes():
            try:
                await self._netlink.replace_route(uplink.index, route, instead_of=BRIDGE)
            except KernelError as e:
                log.warning("could not restore route %s on %s: %s", route.destination,
                            uplink.name, e)

    # --- reload --------------------------------------------------------------------------

    async def reload(self, new: IPConfig, bridge: Link | None,
                     uplinks: Sequence[Link] = ()) -> None:
        """Apply a changed [ip] section: add what is new, remove what is gone.

        Mode "none" hands the bridge's addresses to another tool: switching to it
        removes nothing, whatever bridged had put there.
        """
        old_addresses = set(self.desired_addresses())
        old_routes = self.desired_routes()
        if self.moves_uplink_config != (new.mode in ("migrate", "dhcp")):
            self._moved = UplinkSnapshot()
        self.config = new
        if bridge is None or not self.manages_ip:
            return
        await self.apply_to_bridge(bridge, uplinks)
        keep = set(self.desired_addresses())
        for address in old_addresses - keep:
            await self._netlink.delete_address(bridge.index, address)
        for route in old_routes:
            if route not in self.desired_routes():
                await self._netlink.delete_route(bridge.index, route.via(bridge.index, BRIDGE))

    # --- helpers -------------------------------------------------------------------------

    async def _remember(self, uplink: Link) -> UplinkSnapshot:
        """What ``uplink`` carries now; the first time, kept as what a rollback restores."""
        snapshot = UplinkSnapshot(
            addresses=[a for a in await self._netlink.addresses(uplink.index) if a.is_global],
            routes=_movable_routes(await self._netlink.routes(uplink.index)))
        if uplink.index not in self.before_move and (snapshot.addresses or snapshot.routes):
            self.before_move[uplink.index] = snapshot
        return snapshot

    def _take(self, snapshot: UplinkSnapshot, uplink: Link) -> None:
        """migrate/dhcp: the bridge will carry what ``uplink`` carries."""
        known = {a.interface for a in self._moved.addresses}
        self._moved.addresses = self._moved.aged() + [a for a in snapshot.aged()
                                                      if a.interface not in known]
        self._moved.taken_at = time.monotonic()
        for route in snapshot.routes:
            on_bridge = route.via(BRIDGE, uplink.index)
            if on_bridge not in self._moved.routes:
                self._moved.routes.append(on_bridge)

    async def _replace_route(self, bridge: Link, route: Route) -> None:
        try:
            await self._netlink.replace_route(bridge.index, route, instead_of=BRIDGE)
        except KernelError as e:
            # A gateway the bridge cannot reach yet (no address in its subnet) is not
            # fatal: it is retried whenever an uplink is enslaved.
            log.warning("route %s via %s on %s not set: %s", route.destination, route.gateway,
                        bridge.name, e,
                        extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "route-failed"})


def _interface(address: Address | IPInterface) -> IPInterface:
    return address.interface if isinstance(address, Address) else address
