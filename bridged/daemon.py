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

from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from bridged import __version__, journal, udev
from bridged.api import BUS_NAME
from bridged.auth import Authorizer
from bridged.bridge import BridgeManager, State
from bridged.bus.service import BusService, NameTaken, bus_address_from_env
from bridged.config import DEFAULT_PATH, Config, check_reload, load
from bridged.errors import BridgeUnavailable, ConfigError
from bridged.guards import Guards, GuardsUnavailable
from bridged.handover import Handover
from bridged.ipconfig import IPManager
from bridged.kernel.events import AddressEvent, LinkMonitor
from bridged.kernel.linktable import LinkTable
from bridged.kernel.netlink import KernelError, Netlink
from bridged.managers import ClaimPaths, ManagerClaims
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
        # Who configures the host's address and links, and whether its moves hold.
        self.handover = Handover(config, self.ip, self.bridge, self.netlink, self.links,
                                 self._status_changed)

    @property
    def bus(self) -> MessageBus | None:
        return self.service.bus if self.service else None

    def _events_lost(self) -> None:
        self.links.overrun()
        self.bridge.events_lost()
        self.taps.events_lost()
        self.overlay.events_lost()

    def _watches_addresses_of(self, index: int) -> bool:
        return self.bridge.watches_addresses_of(index) or \
            self.overlay.watches_addresses_of(index)

    def _address_event(self, event: AddressEvent) -> None:
        self.bridge.handle_address_event(event)
        self.overlay.address_event(event)

    async def _polkit_allows(self, sender: str, action: str) -> bool:
        return self.service is not None and await self.service.polkit_allows(sender, action)

    def state(self) -> str:
        if (self.bridge.rolled_back is not None and not self.bridge.held_not_tried) or \
                self.handover.rolled_back is not None:
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
        if self.handover.rolled_back is not None:
            line += f"; reload rolled back: {self.handover.rolled_back}"
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
            self.handover.claims = ManagerClaims(self.service.bus, ClaimPaths(
                self.args.networkmanager_conf, self.args.networkd_network,
                self.args.networkd_dhcp))
        try:
            await self.links.sync()
            await self.handover.before_start()
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
        await self.handover.after_start()
        self.bridge.on_moved.append(lambda: self.handover.moved(self._reload_running))
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
        # The adopted taps too; then each uplink that gets enslaved.
        await self.handover.claim()
        self.bridge.on_uplink_changed.append(self.handover.uplink_changed)
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
        if self.config.bridge.teardown_on_stop:
            await self.handover.withdraw()  # the bridge is gone: so is the claim
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
        unsafe = await self.handover.before_reload(new)
        if unsafe is not None:
            log.error("reload refused, keeping the running configuration: %s", unsafe,
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
        if changed and not await self.handover.verified("reload"):
            if retrying:  # the move itself failed again: the uplinks go back off
                await self.handover.roll_back()
            else:  # the previous configuration worked: back to it
                why = self.handover.last_failure
                await self._restore(old)
                self.handover.rolled_back = f"{why}; running the previous configuration"
                self._status_changed()
            return
        self.handover.rolled_back = None
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

    def _reload_running(self) -> bool:
        return self._reloading is not None and not self._reloading.done()

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
        await self.bridge.reload(config.bridge)
        await self.handover.apply(config)
        await self.overlay.reload(config.vxlan)
        await self._apply_dns()

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
