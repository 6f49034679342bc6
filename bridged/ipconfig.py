"""The host's IP configuration on the bridge, and moving it off the uplink safely.

The order keeps the host reachable at every step: addresses are added to the bridge
first, then the uplink is enslaved, then routes are pointed at the bridge, and only
then are addresses and routes removed from the uplink. At no moment does the host
lack an address on a link that carries its traffic.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridged.config import IPConfig
from bridged.kernel.netlink import RTPROT_KERNEL, Address, KernelError, Link, Netlink, Route

log = logging.getLogger(__name__)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass
class UplinkSnapshot:
    """What an uplink carried just before it was enslaved (migrate mode)."""

    addresses: list[IPInterface] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)


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
        # migrate mode: what we moved from uplinks, so a recreated bridge gets it back.
        self._migrated = UplinkSnapshot()

    @property
    def manages_ip(self) -> bool:
        return self.config.mode != "none"

    def desired_addresses(self) -> list[IPInterface]:
        if self.config.mode == "static":
            return list(self.config.addresses)
        return list(self._migrated.addresses)

    def desired_routes(self) -> list[Route]:
        if self.config.mode == "static":
            return static_routes(self.config)
        return list(self._migrated.routes)

    async def apply_to_bridge(self, bridge: Link, uplinks: Sequence[Link] = ()) -> None:
        """Put the desired addresses and routes on a (new or adopted) bridge.

        ``uplinks`` are about to be enslaved: addresses they hold skip duplicate
        detection, as in ``before_enslave``.
        """
        if not self.manages_ip:
            return
        held: set[IPInterface] = set()
        for uplink in uplinks:
            try:
                held.update(a.interface for a in await self._netlink.addresses(uplink.index))
            except KernelError as e:
                if e.errno != errno.ENODEV:
                    raise
                # Unplugged since it was listed: it holds nothing; its events say what next.
        for address in self.desired_addresses():
            await self._netlink.add_address(bridge.index, address, nodad=address in held)
        for route in self.desired_routes():
            await self._replace_route(bridge, route)

    async def before_enslave(self, bridge: Link, uplink: Link) -> list[IPInterface]:
        """Step 1: copy the uplink's addresses to the bridge. Returns what was added."""
        if not self.manages_ip:
            return []
        added: list[IPInterface] = []
        on_uplink: set[IPInterface] | None = None
        if self.config.mode == "migrate":
            snapshot = await self._snapshot(uplink)
            on_uplink = set(snapshot.addresses)
            for address in snapshot.addresses:
                if address not in self._migrated.addresses:
                    self._migrated.addresses.append(address)
            for route in snapshot.routes:
                if route not in self._migrated.routes:
                    self._migrated.routes.append(route)
        present = {a.interface for a in await self._netlink.addresses(bridge.index)}
        missing = [a for a in self.desired_addresses() if a not in present]
        if not missing:
            return added  # the usual case after the first uplink: nothing to ask the kernel
        # An address the uplink already holds passed duplicate detection on this very
        # LAN; detecting again would leave it "tentative" (unusable) for a second or two.
        if on_uplink is None:
            on_uplink = {a.interface for a in await self._netlink.addresses(uplink.index)}
        for address in missing:
            await self._netlink.add_address(bridge.index, address, nodad=address in on_uplink)
            added.append(address)
            log.info("address %s added to %s", address, bridge.name,
                     extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "address-added",
                            "BRIDGED_ADDRESS": str(address)})
        return added

    async def undo_before_enslave(self, bridge: Link, added: list[IPInterface]) -> None:
        for address in added:
            await self._netlink.delete_address(bridge.index, address)

    async def after_enslave(self, bridge: Link, uplink: Link) -> None:
        """Steps 3 and 4: routes onto the bridge, then clear the uplink."""
        if not self.manages_ip:
            return
        for route in self.desired_routes():
            await self._replace_route(bridge, route)
        # An enslaved port's own addresses are dead: its frames go to the bridge device.
        for route in _movable_routes(await self._netlink.routes(uplink.index)):
            await self._netlink.delete_route(uplink.index, route)
        for address in await self._netlink.addresses(uplink.index):
            if address.is_global:
                await self._netlink.delete_address(uplink.index, address.interface)
                log.info("address %s moved from %s to %s", address.interface, uplink.name,
                         bridge.name,
                         extra={"INTERFACE": uplink.name, "BRIDGED_EVENT": "address-moved",
                                "BRIDGED_ADDRESS": str(address.interface)})

    async def restore_addresses_to_uplink(self, uplink: Link) -> None:
        """Teardown, first step: the uplink gets the bridge's addresses back (before it
        leaves the bridge, so the host stays reachable)."""
        if not self.manages_ip:
            return
        for address in self.desired_addresses():
            await self._netlink.add_address(uplink.index, address)

    async def restore_routes_to_uplink(self, uplink: Link) -> None:
        """Teardown, last step: the routes, once the bridge (and its routes) are gone."""
        if not self.manages_ip:
            return
        for route in self.desired_routes():
            try:
                await self._netlink.replace_route(uplink.index, route)
            except KernelError as e:
                log.warning("could not restore route %s on %s: %s", route.destination,
                            uplink.name, e)

    async def reload(self, new: IPConfig, bridge: Link | None) -> None:
        """Apply a changed [ip] section: add what is new, remove what is gone.

        Mode "none" hands the bridge's addresses to another tool: switching to it
        removes nothing, whatever bridged had put there.
        """
        old_addresses = set(self.desired_addresses())
        old_routes = self.desired_routes()
        if new.mode != self.config.mode:
            self._migrated = UplinkSnapshot()
        self.config = new
        if bridge is None or not self.manages_ip:
            return
        await self.apply_to_bridge(bridge)
        keep = set(self.desired_addresses())
        for address in old_addresses - keep:
            await self._netlink.delete_address(bridge.index, address)
        for route in old_routes:
            if route not in self.desired_routes():
                await self._netlink.delete_route(bridge.index, route)

    async def _snapshot(self, uplink: Link) -> UplinkSnapshot:
        addresses: list[Address] = await self._netlink.addresses(uplink.index)
        return UplinkSnapshot(
            addresses=[a.interface for a in addresses if a.is_global],
            routes=_movable_routes(await self._netlink.routes(uplink.index)),
        )

    async def _replace_route(self, bridge: Link, route: Route) -> None:
        try:
            await self._netlink.replace_route(bridge.index, route)
        except KernelError as e:
            # A gateway the bridge cannot reach yet (no address in its subnet) is not
            # fatal: it is retried whenever an uplink is enslaved.
            log.warning("route %s via %s on %s not set: %s", route.destination, route.gateway,
                        bridge.name, e,
                        extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "route-failed"})
