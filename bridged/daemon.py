"""The daemon: parse the command line, build the objects, run the loop.

Objects are built here and passed to each other explicitly; nothing is looked up
through globals.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from bridged import __version__, journal, probe, udev
from bridged.api import BUS_NAME
from bridged.auth import Authorizer
from bridged.bridge import BridgeManager, State
from bridged.bus.service import BusService, NameTaken, bus_address_from_env
from bridged.config import DEFAULT_PATH, Config, check_reload, load
from bridged.errors import BridgeUnavailable, ConfigError
from bridged.guards import Guards, GuardsUnavailable
from bridged.ipconfig import IPManager
from bridged.kernel.events import AddressEvent, LinkMonitor
from bridged.kernel.linktable import LinkTable
from bridged.kernel.netlink import KernelError, Netlink
from bridged.managers import ClaimedNames, ClaimPaths, ManagerClaims
from bridged.notify import Notifier
from bridged.overlay import Overlay
from bridged.resolved import set_link_dns
from bridged.taps import TapRegistry

log = logging.getLogger("bridged.daemon")

EX_OK = 0
EX_SOFTWARE = 70
EX_UNAVAILABLE = 69
EX_CONFIG = 78


class Daemon:
    def __init__(self, config: Config, args: argparse.Namespace) -> None:
        self.config = config
        self.args = args
        self.notifier = Notifier()
        self.netlink = Netlink("netlink")
        self.reaper = Netlink("reaper")
        # The one picture of the links; the bridge manager and the tap registry both
        # read it and hear of its changes, wired here and nowhere else.
        self.links = LinkTable(self.netlink.links)
        self.ip = IPManager(config.ip, self.netlink)
        self.bridge = BridgeManager(config.bridge, self.ip, self.netlink, self.links)
        self.authorizer = Authorizer(config.taps, config.auth, self._polkit_allows)
        # Guards go in on the lane that creates taps, before a tap is up.
        self.guards = Guards(self.netlink, self.reaper, config.taps.guard)
        self.taps = TapRegistry(config.taps, self.bridge, self.authorizer, self.netlink,
                                self.reaper, self.links, self.guards)
        # The VXLAN port, beside the bridge manager rather than inside it.
        self.overlay = Overlay(config.vxlan, self.bridge, self.netlink, self.links)
        self.links.subscribe(self.bridge.link_changed)
        self.links.subscribe(self.taps.link_changed)
        self.links.subscribe(self.overlay.link_changed)
        self.bridge.is_own_port = lambda link: self.taps.owns(link) or self.overlay.owns(link)
        self.monitor = LinkMonitor(self.links.event, self._events_lost, self._address_event,
                                   self._watches_addresses_of)
        self.service: BusService | None = None
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None
        self._status_pending = False
        self._exit_code = EX_OK
        self._bus_watch: asyncio.Task[None] | None = None
        # Why the last IP change was rolled back (State "rolled-back"); None when the
        # running configuration is the file's and the host reaches its gateway.
        self.rolled_back: str | None = None
        self._verifying: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_probe_failure = ""
        self.claims: ManagerClaims | None = None
        # systemd-networkd leases the bridge's address (ip.mode "dhcp", or leases that
        # migrate mode moved off the uplink).
        self.leasing = False
        self._uplink_has_leases = False  # migrate mode: the uplink's address is leased

    @property
    def bus(self) -> MessageBus | None:
        return self.service.bus if self.service else None

    def _events_lost(self) -> None:
        self.links.overrun()
        self.bridge.addresses_lost()
        self.overlay.reload_underlay()

    def _watches_addresses_of(self, index: int) -> bool:
        return self.bridge.watches_addresses_of(index) or \
            self.overlay.watches_addresses_of(index)

    def _address_event(self, event: AddressEvent) -> None:
        self.bridge.handle_address_event(event)
        self.overlay.address_event(event)

    async def _polkit_allows(self, sender: str, action: str) -> bool:
        return self.service is not None and await self.service.polkit_allows(sender, action)

    def state(self) -> str:
        if self.rolled_back is not None and not self.bridge.held_not_tried:
            return "rolled-back"
        state = self.bridge.state
        if state == State.READY and self.overlay.problem is not None:
            return State.DEGRADED.value
        return state.value

    def status_line(self) -> str:
        count = len(self.taps.taps)
        line = f"{self.bridge.status_line()}, {count} tap{'' if count == 1 else 's'}"
        overlay = self.overlay.status_line()
        if overlay is not None:
            line += f", {overlay}"
        if self.rolled_back is not None and self.bridge.rolled_back is None:
            line += f"; reload rolled back: {self.rolled_back}"
        return line

    def _status_changed(self) -> None:
        # Once per loop iteration, however many events asked for it.
        if not self._status_pending:
            self._status_pending = True
            asyncio.get_running_loop().call_soon(self._send_status)

    def _send_status(self) -> None:
        self._status_pending = False
        if self.bridge.state != State.STARTING:
            self.notifier.status(self.status_line())
        if self.service is not None:
            self.service.properties_changed()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # Start listening before the first dump, so no event falls between the two.
        self.monitor.start()
        if self.args.udev_rules:
            udev.write(self.args.udev_rules, self.config)
        if not self.args.no_bus:
            self.service = BusService(bus_address_from_env(self.args.bus_address),
                                      self.bridge, self.taps, self.state, self.retry,
                                      self.status_line, self.overlay)
            try:
                await self.service.connect()
            except (OSError, ValueError, DBusError) as e:
                log.error("cannot connect to the system bus: %s", e,
                          extra={"BRIDGED_EVENT": "start-failed"})
                return EX_UNAVAILABLE
            self.claims = ManagerClaims(self.service.bus, ClaimPaths(
                self.args.networkmanager_conf, self.args.networkd_network,
                self.args.networkd_dhcp))
        try:
            await self.links.sync()
            # Other network managers hear that the bridge and the taps are bridged's
            # before the bridge exists; that the uplinks are too, once their addresses
            # are on the bridge (told earlier, some drop the address or its lease at
            # once, and there would be nothing left to move).
            if self.config.ip.mode == "migrate":
                self._uplink_has_leases = await self._uplinks_have_leases()
            if self.claims is not None:
                await self.claims.conflicts(self.config)  # named once, with their fixes
            await self._claim_links(uplinks=False)
            if self._will_lease():
                # networkd takes the bridge before its addresses arrive: it then keeps
                # them (taken over later, it would drop them first as another's).
                why = await self._lease()
                if why is not None:
                    self.bridge.hold(f"no DHCP client for {self.config.bridge.name}'s "
                                     f"lease: {why}")
            await self.bridge.start()
        except BridgeUnavailable as e:
            log.error("%s", e, extra={"BRIDGED_EVENT": "start-failed"})
            await self.bridge.undo_start()
            return EX_UNAVAILABLE
        except KernelError as e:
            log.error("cannot set up bridge %s: %s", self.config.bridge.name, e,
                      extra={"BRIDGED_EVENT": "start-failed"})
            await self.bridge.undo_start()
            return EX_UNAVAILABLE
        if self.bridge.enslaved_count:
            await self._lease_moved_leases()
            await self._claim_links()
            if not await self._move_verified("start"):
                await self._roll_back_move()
        self.bridge.on_moved.append(self._moved)
        await self.overlay.start()
        self.taps.adopt()
        try:
            await self.guards.start()
        except GuardsUnavailable as e:
            log.error("%s", e, extra={"BRIDGED_EVENT": "start-failed"})
            return EX_UNAVAILABLE
        self.taps.start()
        if self.service is not None:
            self.taps.on_added.append(self.service.tap_added)
            self.taps.on_removed.append(self.service.tap_removed)
            self.taps.on_changed.append(self.service.tap_changed)
            self.bridge.on_change.append(self.service.properties_changed)
            self.bridge.on_uplink_changed.append(self.service.uplink_changed)
            self.overlay.on_change.append(self.service.properties_changed)
            try:
                await self.service.serve()
            except (OSError, NameTaken, DBusError) as e:
                log.error("cannot serve %s on the system bus: %s", BUS_NAME, e,
                          extra={"BRIDGED_EVENT": "start-failed"})
                return EX_UNAVAILABLE
            self._bus_watch = asyncio.create_task(self._watch_bus())
        if self.claims is not None:
            # The adopted taps too; then each uplink that gets enslaved.
            await self.claims.claim(self._claimed_names())
            self.bridge.on_uplink_changed.append(self._uplink_claimed)
        await self._apply_dns()
        self.bridge.on_change.append(self._status_changed)
        self.overlay.on_change.append(self._status_changed)
        self.taps.on_added.append(lambda _tap: self._status_changed())
        self.taps.on_removed.append(lambda _tap: self._status_changed())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        self.notifier.ready(self.status_line())
        self.notifier.start_watchdog()
        log.info("bridged %s ready: %s", __version__, self.status_line(),
                 extra={"BRIDGED_EVENT": "ready", "BRIDGED_STATE": self.state()})
        await self._stop.wait()

        log.info("stopping", extra={"BRIDGED_EVENT": "stopping"})
        self.notifier.stopping()
        self.notifier.stop_watchdog()
        if self._reloading is not None:
            await self._reloading
        # The overlay first: the bridge's teardown takes its port off, which is no news.
        await self.overlay.stop(self.config.bridge.teardown_on_stop)
        await self.bridge.stop()
        await self.taps.stop()
        # The guards' table stays: the taps stay, and so must what guards them.
        self.guards.stop()
        if self.claims is not None and self.config.bridge.teardown_on_stop:
            await self._unlease()
            await self.claims.withdraw()  # the bridge is gone: so is the claim
        if self.service is not None:
            self.service.stop()
        self.monitor.stop()
        self.netlink.close()
        self.reaper.close()
        return self._exit_code

    async def _watch_bus(self) -> None:
        assert self.service is not None and self.service.bus is not None
        try:
            await self.service.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            why = "the bus closed the connection"
        except Exception as e:  # the reason the connection broke
            why = str(e) or type(e).__name__
        if self._stop.is_set():
            return  # our own disconnect on the way out
        # Without the bus no client can reach us or release a tap. Exit non-zero, so
        # systemd restarts us (Restart=on-failure) and the next start adopts every tap.
        log.error("lost the connection to the system bus (%s); exiting to be restarted", why,
                  extra={"BRIDGED_EVENT": "bus-lost"})
        self._exit_code = EX_UNAVAILABLE
        self._stop.set()

    def _request_reload(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self._reload())

    async def _reload(self) -> None:
        """All or nothing: the new file is read and checked in full before anything is
        applied, and READY=1 follows RELOADING=1 whatever happens."""
        self.notifier.reloading()
        try:
            await self._apply_new_config()
        finally:
            self.notifier.ready(self.status_line())

    async def _apply_new_config(self) -> None:
        loop = asyncio.get_running_loop()
        old = self.config
        try:
            # Off the loop: the path may name something slow to read.
            new = await loop.run_in_executor(None, load, old.path)
            check_reload(old, new)
        except ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", e,
                      extra={"BRIDGED_EVENT": "reload-failed", "CONFIG_FILE": e.path})
            return
        if new.ip.mode == "dhcp" and not self.leasing:
            # Before anything moves: without a DHCP client on the bridge, leased
            # addresses moved onto it would just run out.
            why = await self._lease()
            if why is not None:
                log.error('reload refused, keeping the running configuration: ip.mode = '
                          '"dhcp" has no DHCP client for %s: %s', new.bridge.name, why,
                          extra={"BRIDGED_EVENT": "reload-failed", "CONFIG_FILE": new.path})
                return
        moves = self.bridge.enslaved_count
        retrying = self.bridge.rolled_back is not None
        if retrying:
            self.bridge.retry()
        try:
            await self._apply(new)
            await self.bridge.settled()
            await self.overlay.settled()
        except Exception as e:
            log.error("applying %s failed (%s); putting the previous configuration back",
                      new.path, e, exc_info=not isinstance(e, (KernelError, BridgeUnavailable)),
                      extra={"BRIDGED_EVENT": "reload-failed", "CONFIG_FILE": new.path})
            await self._restore(old)
            return
        changed = retrying or new.ip != old.ip or new.bridge.uplinks != old.bridge.uplinks \
            or self.bridge.enslaved_count != moves
        if changed and not await self._move_verified("reload"):
            if retrying:  # the move itself failed again: the uplinks go back off
                await self._roll_back_move()
            else:  # the previous configuration worked: back to it
                why = self._last_probe_failure
                await self._restore(old)
                self.rolled_back = f"{why}; running the previous configuration"
                self._status_changed()
            return
        self.rolled_back = None
        log.info("configuration reloaded from %s", new.path,
                 extra={"BRIDGED_EVENT": "reloaded", "CONFIG_FILE": new.path})

    async def _restore(self, old: Config) -> None:
        try:
            await self._apply(old)
            await self.bridge.settled()
            await self.overlay.settled()
        except Exception:
            log.exception("restoring the previous configuration failed",
                          extra={"BRIDGED_EVENT": "reload-restore-failed"})

    # --- verifying an IP move, and rolling it back -------------------------------------

    async def _move_verified(self, after: str) -> bool:
        """Does the host still reach its gateway through the bridge (neighbour probe)?"""
        self._last_probe_failure = ""
        timeout = self.config.ip.probe_timeout
        bridge = self.bridge.bridge
        if not self.ip.manages_ip or not timeout or bridge is None:
            return True
        deadline = time.monotonic() + timeout
        uplinks = self.bridge.enslaved_uplinks()
        gateways = self.ip.gateways()
        if not gateways and self.leasing and uplinks:
            gateways = await self._leased_gateways(bridge.index, deadline)
            if not gateways:
                self._last_probe_failure = (f"no DHCP lease with a gateway on {bridge.name} "
                                            f"within {timeout:g} s after the {after}")
                log.error("%s", self._last_probe_failure,
                          extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "probe-failed"})
                return False
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
        answers = await asyncio.gather(*(probe.reachable(self.netlink, bridge.index, gw, timeout)
                                         for gw in gateways))
        silent = [str(gw) for gw, answered in zip(gateways, answers, strict=True)
                  if not answered]
        if not silent:
            log.info("gateway %s reachable through %s after the %s",
                     ", ".join(map(str, gateways)), bridge.name, after,
                     extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "probe-ok"})
            return True
        self._last_probe_failure = (f"gateway {', '.join(silent)} did not answer through "
                                    f"{bridge.name} within {timeout:g} s after the {after}")
        log.error("%s", self._last_probe_failure,
                  extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "probe-failed"})
        return False

    async def _leased_gateways(self, index: int, deadline: float) -> list[probe.Address]:
        """The gateways of the default routes the DHCP client put on the bridge, once it
        has (the lease's own gateway is what the host must reach)."""
        while True:
            routes = await self.netlink.routes(index)
            found = [r.gateway for r in routes if r.is_default and r.gateway is not None]
            if found or time.monotonic() >= deadline:
                return list(dict.fromkeys(found))
            await asyncio.sleep(0.2)  # a bounded wait for one lease, not a poll loop

    async def _roll_back_move(self) -> None:
        why = self._last_probe_failure
        await self._unlease()
        await self.bridge.roll_back(why)
        # The uplinks are their old managers' again (their DHCP clients, profiles).
        await self._claim_links(uplinks=False)
        self.rolled_back = why
        log.error("rolled back: the uplinks have their own addresses and routes again and "
                  "stay off %s until the config is reloaded or 'bridgectl retry'",
                  self.config.bridge.name,
                  extra={"BRIDGED_EVENT": "rolled-back", "BRIDGED_STATE": "rolled-back"})
        self._status_changed()

    def _moved(self) -> None:
        """Addresses moved onto the bridge after start (an uplink plugged in): verify."""
        if self._verifying is None or self._verifying.done():
            self._verifying = asyncio.create_task(self._verify_later())

    async def _verify_later(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            return  # the reload verifies what it moved
        if not await self._move_verified("move"):
            await self._roll_back_move()

    async def retry(self) -> None:
        """bridgectl retry: the config file again, uplinks enslaved again, verified."""
        if self._reloading is not None and not self._reloading.done():
            await self._reloading
        self._reloading = asyncio.create_task(self._reload())
        await self._reloading

    async def _apply(self, config: Config) -> None:
        self.config = config
        if self.args.udev_rules:
            udev.write(self.args.udev_rules, config)
        self.taps.config = config.taps
        for tap in await self.guards.reload(config.taps.guard, list(self.taps.taps.values())):
            if self.service is not None:
                self.service.tap_changed(tap)
        self.authorizer.taps, self.authorizer.auth = config.taps, config.auth
        await self.ip.reload(config.ip, self.bridge.bridge, self.bridge.uplinks())
        if config.ip.mode not in ("dhcp", "migrate"):
            await self._unlease()
        await self.bridge.reload(config.bridge)
        if self.claims is not None:
            await self.claims.conflicts(config)
            await self.claims.claim(self._claimed_names())
        await self.overlay.reload(config.vxlan)
        await self._apply_dns()

    # --- other network managers: told which links are bridged's ------------------------

    async def _claim_links(self, uplinks: bool | None = None) -> None:
        if self.claims is not None:
            await self.claims.claim(self._claimed_names(uplinks))

    def _claimed_names(self, uplinks: bool | None = None) -> ClaimedNames:
        """The bridge (unless networkd leases its address), the uplinks and the taps,
        present ones by name (globs and the tap prefix cover those to come, where a
        manager takes globs). With ``uplinks`` false, only the uplinks already enslaved
        to the bridge (a restart): the others keep their manager until their addresses
        are on the bridge, or get it back after a rollback (the default then)."""
        if uplinks is None:
            uplinks = self.bridge.rolled_back is None
        config = self.config
        prefix = config.taps.prefix
        bridge_link = self.links.by_name(config.bridge.name)
        names = []
        for link in self.links:
            tap = link.kind == "tun" and link.name.startswith(prefix)
            uplink = config.bridge.is_uplink(link.name, link.address, link.perm_address) and (
                uplinks or (bridge_link is not None and link.master == bridge_link.index
                            and self.bridge.rolled_back is None))
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
        for link in self.links:
            if link.master is None and self.config.bridge.is_uplink(
                    link.name, link.address, link.perm_address):
                try:
                    if any(a.is_global and not a.is_permanent
                           for a in await self.netlink.addresses(link.index)):
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

    async def _unlease(self) -> None:
        if self.leasing and self.claims is not None:
            self.leasing = False
            await self.claims.unlease()

    async def _lease_moved_leases(self) -> None:
        """migrate mode moved leased addresses: a DHCP client must renew them on the
        bridge, or they run out (the issue with freezing them)."""
        if self.config.ip.mode != "migrate" or not self.ip.moved_leases or self.leasing:
            return
        why = await self._lease()
        if why is None:
            # The bridge is networkd's now: no longer claimed (the uplinks: after this).
            await self._claim_links(uplinks=False)
        else:
            log.error("the addresses moved off the uplink are leases that nothing renews on "
                      "%s now (%s): they will run out; set ip.mode = \"dhcp\" with "
                      "systemd-networkd, or ip.mode = \"static\"", self.config.bridge.name,
                      why, extra={"BRIDGED_EVENT": "dhcp-failed"})

    def _uplink_claimed(self, name: str, state: str) -> None:
        # A new uplink (matched by a glob or MAC) is named to the managers; claim() does
        # nothing for names they were told already.
        if state == "enslaved" and self.claims is not None:
            self._spawn(self.claims.claim(self._claimed_names()))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply_dns(self) -> None:
        bridge = self.bridge.bridge
        if bridge is not None and self.config.ip.mode == "static":
            await set_link_dns(self.bus, bridge.name, bridge.index, self.config.ip.dns)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridged",
        description="Own a Linux bridge, keep its uplink enslaved, move the host's IP onto it "
                    "safely, and hand TAP devices to unprivileged VMs over D-Bus.",
        epilog="Exit status: 0 stopped cleanly, 69 the bridge could not be set up, "
               "78 the configuration is invalid. See bridged(8) and bridged.toml(5).",
    )
    parser.add_argument("--config", metavar="PATH", default=DEFAULT_PATH,
                        help=f"configuration file (default: {DEFAULT_PATH})")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration file and exit")
    parser.add_argument("--bus-address", metavar="ADDRESS",
                        help="D-Bus address of the system bus (default: "
                             "$DBUS_SYSTEM_BUS_ADDRESS, else the system bus)")
    parser.add_argument("--no-bus", action="store_true",
                        help="manage the bridge only; serve no D-Bus API (no taps)")
    parser.add_argument("--udev-rules", metavar="PATH",
                        help="write udev rules marking the bridge, uplinks and taps as "
                             "bridged's for other network managers (bridged.service: "
                             "/run/bridged/90-bridged.rules, linked from /run/udev/rules.d)")
    parser.add_argument("--networkmanager-conf", metavar="PATH",
                        help="write the NetworkManager drop-in naming the bridge, uplinks "
                             "and taps unmanaged (bridged.service: /run/bridged/"
                             "networkmanager.conf, linked from /run/NetworkManager/conf.d)")
    parser.add_argument("--networkd-network", metavar="PATH",
                        help="write the systemd-networkd .network marking the bridge, "
                             "uplinks and taps Unmanaged=yes (bridged.service: /run/bridged/"
                             "networkd.network, linked from /run/systemd/network)")
    parser.add_argument("--networkd-dhcp", metavar="PATH",
                        help='write the systemd-networkd .network that leases the bridge\'s '
                             'address in ip.mode "dhcp" (bridged.service: /run/bridged/'
                             "networkd-dhcp.network, linked from /run/systemd/network)")
    parser.add_argument("--log-target", choices=("auto", "journal", "console"), default="auto",
                        help="where logs go; auto picks the journal when systemd connected "
                             "stderr to it (default: auto)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default="info", help="lowest level logged (default: info)")
    parser.add_argument("--version", action="version", version=f"bridged {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"bridged: {e}", file=sys.stderr)
        return EX_CONFIG
    if args.check_config:
        print(f"{config.path}: ok")
        return EX_OK
    journal.setup(args.log_target, getattr(logging, args.log_level.upper()))
    if os.geteuid() != 0 and not _has_net_admin():
        print("bridged: needs CAP_NET_ADMIN (run as root or from bridged.service)",
              file=sys.stderr)
        return EX_UNAVAILABLE

    async def run() -> int:
        return await Daemon(config, args).run()

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return EX_OK


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except OSError:
        pass
    return False
