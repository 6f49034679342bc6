"""The daemon: parse the command line, build the objects, run the loop.

Objects are built here and passed to each other explicitly; nothing is looked up
through globals.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch  # coexist
import logging
import os
import signal
import socket  # coexist
import sys

from dbus_fast import BusType  # coexist
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from bridged import __version__, journal, udev
from bridged.auth import Authorizer
from bridged.bridge import BridgeManager, State
from bridged.bus.interfaces import BUS_NAME
from bridged.bus.service import BusService, NameTaken, bus_address_from_env
from bridged.config import DEFAULT_PATH, Config, load
from bridged.errors import BridgeUnavailable, ConfigError
from bridged.ipconfig import IPManager
from bridged.kernel.events import LinkEvent, LinkMonitor
from bridged.kernel.netlink import KernelError, Netlink
from bridged.managers import ClaimedNames, ClaimPaths, ManagerClaims  # coexist
from bridged.notify import Notifier
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
        self.ip = IPManager(config.ip, self.netlink)
        self.bridge = BridgeManager(config.bridge, self.ip, self.netlink)
        self.authorizer = Authorizer(config.taps, config.auth, self._polkit_allows)
        self.taps = TapRegistry(config.taps, self.bridge, self.authorizer, self.netlink,
                                self.reaper)
        self.monitor = LinkMonitor(self._link_event, self.bridge.handle_overrun,
                                   self.bridge.handle_address_event, lambda: self.bridge.index)
        self.service: BusService | None = None
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None
        self._status_pending = False
        self._exit_code = EX_OK
        self._bus_watch: asyncio.Task[None] | None = None
        self.claims: ManagerClaims | None = None  # coexist
        self._claims_bus: MessageBus | None = None  # coexist

    @property
    def bus(self) -> MessageBus | None:
        return self.service.bus if self.service else None

    def _link_event(self, event: LinkEvent) -> None:
        self.bridge.handle_event(event)
        self.taps.handle_event(event)

    async def _polkit_allows(self, sender: str, action: str) -> bool:
        return self.service is not None and await self.service.polkit_allows(sender, action)

    def status_line(self) -> str:
        count = len(self.taps.taps)
        return f"{self.bridge.status_line()}, {count} tap{'' if count == 1 else 's'}"

    def _status_changed(self) -> None:
        # Once per loop iteration, however many events asked for it.
        if not self._status_pending:
            self._status_pending = True
            asyncio.get_running_loop().call_soon(self._send_status)

    def _send_status(self) -> None:
        self._status_pending = False
        if self.bridge.state != State.STARTING:
            self.notifier.status(self.status_line())

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # Start listening before the first dump, so no event falls between the two.
        self.monitor.start()
        if self.args.udev_rules:
            udev.write(self.args.udev_rules, self.config)
        await self._claim_links()  # coexist: before the bridge enslaves anything
        try:
            await self.bridge.start()
        except BridgeUnavailable as e:
            log.error("%s", e, extra={"BRIDGED_EVENT": "start-failed"})
            return EX_UNAVAILABLE
        except KernelError as e:
            log.error("cannot set up bridge %s: %s", self.config.bridge.name, e,
                      extra={"BRIDGED_EVENT": "start-failed"})
            return EX_UNAVAILABLE
        await self.taps.adopt_existing()
        if not self.args.no_bus:
            self.service = BusService(bus_address_from_env(self.args.bus_address),
                                      self.bridge, self.taps)
            try:
                await self.service.start()
            except (OSError, NameTaken, DBusError) as e:
                log.error("cannot serve %s on the system bus: %s", BUS_NAME, e,
                          extra={"BRIDGED_EVENT": "start-failed"})
                return EX_UNAVAILABLE
            self._bus_watch = asyncio.create_task(self._watch_bus())
        # coexist: adopted taps, uplinks matched by MAC; then each new uplink
        if self.claims is not None:
            await self.claims.claim(self._claimed_names())
            self.bridge.on_uplink_changed.append(self._uplink_claimed)
        await self._apply_dns()
        self.bridge.on_change.append(self._status_changed)
        self.taps.on_added.append(lambda _tap: self._status_changed())
        self.taps.on_removed.append(lambda _tap: self._status_changed())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        self.notifier.ready(self.status_line())
        self.notifier.start_watchdog()
        log.info("bridged %s ready: %s", __version__, self.status_line(),
                 extra={"BRIDGED_EVENT": "ready", "BRIDGED_STATE": self.bridge.state.value})
        await self._stop.wait()

        log.info("stopping", extra={"BRIDGED_EVENT": "stopping"})
        self.notifier.stopping()
        self.notifier.stop_watchdog()
        if self._reloading is not None:
            await self._reloading
        await self.bridge.stop()
        if self.claims is not None and self.config.bridge.teardown_on_stop:  # coexist
            await self.claims.withdraw()  # coexist: the bridge is gone, so is the claim
        if self._claims_bus is not None:  # coexist
            self._claims_bus.disconnect()  # coexist
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
        self.notifier.reloading()
        try:
            new = load(self.config.path)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e,
                      extra={"BRIDGED_EVENT": "reload-failed", "CONFIG_FILE": e.path})
            self.notifier.ready(self.status_line())
            return
        self.config = new
        if self.args.udev_rules:
            udev.write(self.args.udev_rules, new)
        self.taps.config = new.taps
        self.authorizer.taps, self.authorizer.auth = new.taps, new.auth
        await self.ip.reload(new.ip, self.bridge.bridge)
        await self.bridge.reload(new.bridge)
        if self.claims is not None:  # coexist
            await self.claims.conflicts(new)  # coexist
            await self.claims.claim(self._claimed_names())  # coexist
        await self._apply_dns()
        log.info("configuration reloaded from %s", new.path,
                 extra={"BRIDGED_EVENT": "reloaded", "CONFIG_FILE": new.path})
        self.notifier.ready(self.status_line())

    # coexist: the other network managers are told which links are bridged's
    async def _claim_links(self) -> None:
        """Conflicts named, links claimed, before the bridge enslaves anything: a
        manager that still held the uplink then would fight over it. This daemon
        connects its service to the bus only after the bridge is up, so the claims
        get a connection of their own (a daemon that connects first passes its bus)."""
        if not self.args.no_bus:
            try:
                self._claims_bus = await MessageBus(
                    bus_type=BusType.SYSTEM,
                    bus_address=bus_address_from_env(self.args.bus_address)).connect()
            except Exception as e:  # whatever the bus said: the claims are not essential
                log.warning("cannot tell other network managers about %s: no system bus (%s)",
                            self.config.bridge.name, e,
                            extra={"BRIDGED_EVENT": "manager-claim-failed"})
        self.claims = ManagerClaims(self._claims_bus, ClaimPaths(
            self.args.networkmanager_conf, self.args.networkd_network))
        await self.claims.conflicts(self.config)
        # Before the first dump: uplinks and taps present now, by name.
        tap_glob = f"{self.config.taps.prefix}*"
        present = [name for _index, name in socket.if_nameindex()
                   if self.config.bridge.is_uplink(name, None) or
                   fnmatch.fnmatchcase(name, tap_glob)]
        await self.claims.claim(ClaimedNames.from_config(self.config, present))

    def _claimed_names(self) -> ClaimedNames:
        links = [u.name for u in self.bridge.uplinks()] + list(self.taps.taps)
        return ClaimedNames.from_config(self.config, links)

    def _uplink_claimed(self, name: str, state: str) -> None:
        # A new uplink (matched by a glob or MAC) is named to the managers; claim() does
        # nothing for names they were told already.
        if state == "enslaved" and self.claims is not None:
            asyncio.get_running_loop().create_task(self.claims.claim(self._claimed_names()))
    # coexist: end

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
    parser.add_argument("--networkmanager-conf", metavar="PATH",  # coexist
                        help="write the NetworkManager drop-in naming the bridge, uplinks "
                             "and taps unmanaged (bridged.service: /run/bridged/"
                             "networkmanager.conf, linked from /run/NetworkManager/conf.d)")
    parser.add_argument("--networkd-network", metavar="PATH",  # coexist
                        help="write the systemd-networkd .network marking the bridge, "
                             "uplinks and taps Unmanaged=yes (bridged.service: /run/bridged/"
                             "networkd.network, linked from /run/systemd/network)")
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
