"""The host's address and links, handed over to the bridge, verified, and given back.

Three things that must happen in one order, so they live together:

- Other network managers are told which links are bridged's (``managers``): the bridge
  and the taps before the bridge exists, the uplinks only once their addresses are on
  the bridge (told earlier, NetworkManager and networkd drop an uplink's address or
  release its lease before there is anything to move), and given back by a rollback.
- The bridge's address is leased by systemd-networkd (ip.mode "dhcp", or leases that
  migrate mode finds on the uplink): networkd takes the bridge before the addresses
  arrive on it, so it keeps them; without a DHCP client the uplinks are left alone.
- Every move is verified: the gateway must answer through the bridge within
  ip.probe_timeout (``probe``), else the host is put back as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from bridged import pacing, probe
from bridged.bridge import BridgeManager
from bridged.config import Config
from bridged.ipconfig import IPManager
from bridged.kernel.linktable import LinkTable
from bridged.kernel.netlink import KernelError, Netlink
from bridged.managers import ClaimedNames, ManagerClaims

log = logging.getLogger(__name__)


class Handover:
    def __init__(self, config: Config, ip: IPManager, bridge: BridgeManager,
                 netlink: Netlink, links: LinkTable, on_change: Callable[[], None]) -> None:
        self.config = config
        self._ip = ip
        self._bridge = bridge
        self._netlink = netlink
        self._links = links
        self._on_change = on_change
        self.claims: ManagerClaims | None = None  # None without a bus (--no-bus)
        # systemd-networkd leases the bridge's address.
        self.leasing = False
        self._uplink_has_leases = False  # migrate mode: the uplink's address is leased
        # Why the last reload was rolled back to the configuration before it (the
        # bridge manager keeps a rolled-back move's reason itself).
        self.rolled_back: str | None = None
        self.last_failure = ""
        self._tasks: set[asyncio.Task[None]] = set()

    # --- start ---------------------------------------------------------------------------

    async def before_start(self) -> None:
        """Before the bridge exists: conflicts named (once, with their fixes), the bridge
        and taps claimed, the lease arranged or the uplinks held off."""
        if self.config.ip.mode == "migrate":
            self._uplink_has_leases = await self._uplinks_have_leases()
        if self.claims is not None:
            await self.claims.conflicts(self.config)
        await self.claim(uplinks=False)
        if self._will_lease():
            why = await self._lease()
            if why is not None:
                self._bridge.hold(f"no DHCP client for {self.config.bridge.name}'s "
                                  f"lease: {why}")

    async def after_start(self) -> None:
        """After the bridge enslaved what it found: the uplinks claimed, the move
        verified (or rolled back)."""
        if not self._bridge.enslaved_count:
            return
        await self._lease_moved_leases()
        await self.claim()
        if not await self.verified("start"):
            await self.roll_back()

    # --- verifying a move, and rolling it back ---------------------------------------------

    async def verified(self, after: str) -> bool:
        """Does the host still reach its gateway through the bridge (neighbour probe)?"""
        self.last_failure = ""
        timeout = self.config.ip.probe_timeout
        bridge = self._bridge.bridge
        if not self._ip.manages_ip or not timeout or bridge is None:
            return True
        deadline = time.monotonic() + timeout
        uplinks = self._bridge.enslaved_uplinks()
        gateways = self._ip.gateways()
        if not gateways and self.leasing and uplinks:
            gateways = await self._leased_gateways(bridge.index, deadline)
            if not gateways:
                return self._failed(f"no DHCP lease with a gateway on {bridge.name} within "
                                    f"{timeout:g} s after the {after}", bridge.name)
            timeout = max(0.5, deadline - time.monotonic())
        if not gateways or not uplinks:
            return True  # nothing to reach, or nothing moved onto the bridge
        if not any(u.operstate in ("UP", "UNKNOWN") for u in uplinks):
            log.info("not probing the gateway after the %s: %s has no carrier", after,
                     ", ".join(u.name for u in uplinks),
                     extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "probe-skipped"})
            return True
        if self.config.bridge.stp:
            timeout += 2 * self.config.bridge.forward_delay  # listening, then learning
        answers = await asyncio.gather(*(probe.reachable(self._netlink, bridge.index, gw,
                                                         timeout) for gw in gateways))
        silent = [str(gw) for gw, answered in zip(gateways, answers, strict=True)
                  if not answered]
        if silent:
            return self._failed(f"gateway {', '.join(silent)} did not answer through "
                                f"{bridge.name} within {timeout:g} s after the {after}",
                                bridge.name)
        log.info("gateway %s reachable through %s after the %s",
                 ", ".join(map(str, gateways)), bridge.name, after,
                 extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "probe-ok"})
        return True

    def _failed(self, why: str, bridge: str) -> bool:
        self.last_failure = why
        log.error("%s", why, extra={"INTERFACE": bridge, "BRIDGED_EVENT": "probe-failed"})
        return False

    async def _leased_gateways(self, index: int, deadline: float) -> list[probe.Address]:
        """The gateways of the default routes the DHCP client put on the bridge, once it
        has (the lease's own gateway is what the host must reach)."""
        while True:
            routes = await self._netlink.routes(index)
            found = [r.gateway for r in routes if r.is_default and r.gateway is not None]
            if found or time.monotonic() >= deadline:
                return list(dict.fromkeys(found))
            await asyncio.sleep(0.2)  # a bounded wait for one lease, not a poll loop

    async def roll_back(self) -> None:
        """The move failed: the host as it was before it, the uplinks their old managers'
        again (their DHCP clients, profiles)."""
        why = self.last_failure
        await self.unlease()
        await self._bridge.roll_back(why)
        await self.claim(uplinks=False)
        log.error("rolled back: the uplinks have their own addresses and routes again and "
                  "stay off %s until the config is reloaded or 'bridgectl retry'",
                  self.config.bridge.name,
                  extra={"BRIDGED_EVENT": "rolled-back", "BRIDGED_STATE": "rolled-back"})
        self._on_change()

    def moved(self, busy: Callable[[], bool]) -> None:
        """Addresses moved onto the bridge after start (an uplink plugged in): verify,
        unless ``busy`` (a reload verifies what it moves itself)."""
        async def verify() -> None:
            if not busy() and not await self.verified("move"):
                await self.roll_back()

        pacing.spawn(verify(), self._tasks)

    # --- reload ------------------------------------------------------------------------------

    async def before_reload(self, new: Config) -> str | None:
        """What would make ``new`` unsafe to apply now (None: nothing)."""
        if new.ip.mode == "dhcp" and not self.leasing:
            # Before anything moves: without a DHCP client on the bridge, leased
            # addresses moved onto it would just run out.
            why = await self._lease()
            if why is not None:
                return f'ip.mode = "dhcp" has no DHCP client for {new.bridge.name}: {why}'
        return None

    async def apply(self, config: Config) -> None:
        """Part of a reload: the lease ended if no longer wanted; conflicts named; the
        claims made to fit the new configuration."""
        self.config = config
        if config.ip.mode not in ("dhcp", "migrate"):
            await self.unlease()
        if self.claims is not None:
            await self.claims.conflicts(config)
            await self.claim()

    async def withdraw(self) -> None:
        """The bridge is torn down: the lease and the claims go with it."""
        await self.unlease()
        if self.claims is not None:
            await self.claims.withdraw()

    # --- other network managers: told which links are bridged's ------------------------

    async def claim(self, uplinks: bool | None = None) -> None:
        if self.claims is not None:
            await self.claims.claim(self._claimed_names(uplinks))

    def uplink_changed(self, name: str, state: str) -> None:
        # A new uplink (matched by a glob or MAC) is named to the managers; claim() does
        # nothing for names they were told already.
        if state == "enslaved" and self.claims is not None:
            pacing.spawn(self.claim(), self._tasks)

    def _claimed_names(self, uplinks: bool | None = None) -> ClaimedNames:
        """The bridge (unless networkd leases its address), the uplinks and the taps,
        present ones by name (globs and the tap prefix cover those to come, where a
        manager takes globs). With ``uplinks`` false, only the uplinks already enslaved
        to the bridge (a restart): the others keep their manager until their addresses
        are on the bridge, or get it back after a rollback (the default then)."""
        if uplinks is None:
            uplinks = self._bridge.rolled_back is None
        config = self.config
        prefix = config.taps.prefix
        bridge_link = self._links.by_name(config.bridge.name)
        names = []
        for link in self._links:
            tap = link.kind == "tun" and link.name.startswith(prefix)
            uplink = config.bridge.is_uplink(link.name, link.address, link.perm_address) and (
                uplinks or (bridge_link is not None and link.master == bridge_link.index
                            and self._bridge.rolled_back is None))
            if tap or uplink:
                names.append(link.name)
        if config.vxlan is not None:  # the overlay's port is bridged's as much as a tap
            names.append(config.vxlan.device_name)
        bridge = None if self.leasing or self._will_lease() else config.bridge.name
        return ClaimedNames(bridge, config.bridge.uplinks if uplinks else (), prefix,
                            tuple(dict.fromkeys(names)))

    # --- the bridge's address by DHCP: systemd-networkd leases it -------------------------

    def _will_lease(self) -> bool:
        return self.config.ip.mode == "dhcp" or \
            (self.config.ip.mode == "migrate" and self._uplink_has_leases)

    async def _uplinks_have_leases(self) -> bool:
        """migrate mode: does an uplink (not yet enslaved) carry a leased address? Then
        the bridge leases it on: moved and frozen, it would just run out."""
        for link in self._links:
            if link.master is None and self.config.bridge.is_uplink(
                    link.name, link.address, link.perm_address):
                try:
                    if any(a.is_global and not a.is_permanent
                           for a in await self._netlink.addresses(link.index)):
                        return True
                except KernelError:
                    continue  # gone meanwhile
        return False

    async def _lease(self) -> str | None:
        """Have systemd-networkd lease the bridge's address; None, or why it cannot."""
        if self.claims is None:
            return "no system bus (--no-bus) to ask systemd-networkd over"
        why = await self.claims.lease(self.config.bridge.name)
        if why is None:
            self.leasing = True
        return why

    async def unlease(self) -> None:
        if self.leasing and self.claims is not None:
            self.leasing = False
            await self.claims.unlease()

    async def _lease_moved_leases(self) -> None:
        """migrate mode moved leased addresses: a DHCP client must renew them on the
        bridge, or they run out (the issue with freezing them)."""
        if self.config.ip.mode != "migrate" or not self._ip.moved_leases or self.leasing:
            return
        why = await self._lease()
        if why is None:
            # The bridge is networkd's now: no longer claimed (the uplinks: after this).
            await self.claim(uplinks=False)
        else:
            log.error("the addresses moved off the uplink are leases that nothing renews on "
                      "%s now (%s): they will run out; set ip.mode = \"dhcp\" with "
                      "systemd-networkd, or ip.mode = \"static\"", self.config.bridge.name,
                      why, extra={"BRIDGED_EVENT": "dhcp-failed"})

