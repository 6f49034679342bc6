"""The bridge and its uplinks: desired state vs what the link table reports.

Link changes only record what was observed and mark work; one reconciler task does
the work in order, so a burst of changes (an uplink flapping, the bridge deleted while
an uplink is being enslaved) never races with itself. There is no polling: the
reconciler sleeps until a change wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import time
from collections.abc import Callable

from bridged.config import MAC_FROM_UPLINK, BridgeConfig
from bridged.errors import BridgeUnavailable
from bridged.ipconfig import IPManager
from bridged.kernel.events import AddressEvent
from bridged.kernel.linktable import LinkTable
from bridged.kernel.netlink import Address, KernelError, Link, Netlink
from bridged.trigger import ReconcileTrigger

log = logging.getLogger(__name__)

# The bridge's ifalias: says bridged made it (or adopted it) and keeps where the
# round-robin tap names go on after a restart (see TapRegistry).
BRIDGE_MARK = "bridged:bridge"
DEFAULT_MTU = 1500


def made_by(name: str) -> str:
    """Which tool a bridge bridged did not make seems to come from, as " (...)"."""
    if os.path.exists(f"/run/network/ifstate.{name}"):
        return f" (ifupdown brought it up: /etc/network/interfaces has 'iface {name}')"
    return " (another tool made it: ifupdown, NetworkManager, systemd-networkd, or by hand)"


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPING = "stopping"
    # The host could not reach its gateway after an IP move, and was put back as it
    # was: the uplinks stay off the bridge until a new config or a retry.
    ROLLED_BACK = "rolled-back"


class BridgeManager:
    """Owns one bridge: creates or adopts it, keeps its uplinks enslaved."""

    def __init__(self, config: BridgeConfig, ip: IPManager, netlink: Netlink,
                 links: LinkTable) -> None:
        self.config = config
        self.ip = ip
        self._netlink = netlink
        self.links = links
        self.state = State.STARTING
        self.bridge: Link | None = None
        # Links matching the configured uplinks, enslaved or not (matched once per
        # change of a link: with a thousand taps a scan per event adds up).
        self._uplink_indexes: set[int] = set()
        # The bridge's addresses as the kernel reports them, whoever put them there.
        self.addresses: set[Address] = set()
        # When each address was last reported: its lifetimes count down from then.
        self._reported: dict[object, float] = {}
        self._pending_uplinks: set[int] = set()
        self._bridge_dirty = False
        self._addresses_lost = False
        self._uplinks_to_clear: set[int] = set()
        # Tells bridged's own ports (its taps, its VXLAN port) from foreign ones.
        self.is_own_port: Callable[[Link], bool] = lambda link: False
        self._trigger = ReconcileTrigger()
        self._worker: asyncio.Task[None] | None = None
        # index -> master it had when enslaving failed; retried once that changes.
        self._failed_uplinks: dict[int, int | None] = {}
        # Why the last IP move was rolled back; while set, no uplink is enslaved.
        self.rolled_back: str | None = None
        # True when the uplinks are held off because the move could not be made safely
        # (not because it was tried and rolled back): the state is then "degraded".
        self.held_not_tried = False
        # Listeners: the D-Bus layer, sd_notify status, the tap registry.
        self.on_change: list[Callable[[], None]] = []
        self.on_uplink_changed: list[Callable[[str, str], None]] = []
        self.on_bridge_created: list[Callable[[Link], None]] = []
        # Called after addresses moved off an uplink onto the bridge (to verify the move).
        self.on_moved: list[Callable[[], None]] = []
        self.enslaved_count = 0  # uplinks bridged enslaved since it started
        # Counts changes of the bridge's ports, so that they are announced (by name) only
        # when they change, without building a thousand-port list to compare.
        self.ports_version = 0
        self._created = False  # this run made the bridge (a failed start removes it)

    # --- what others read ------------------------------------------------------------

    @property
    def index(self) -> int | None:
        return self.bridge.index if self.bridge else None

    def ports(self) -> list[Link]:
        index = self.index
        return sorted((link for link in self.links if index and link.master == index),
                      key=lambda link: link.name)

    def uplinks(self) -> list[Link]:
        """Links that match the configured uplinks, enslaved or not."""
        found = (self.links.get(i) for i in self._uplink_indexes)
        return sorted((link for link in found if link is not None), key=lambda link: link.name)

    def enslaved_uplinks(self) -> list[Link]:
        index = self.index
        return [link for link in self.uplinks() if index and link.master == index]

    def leases(self) -> dict[str, int]:
        """Leased (or autoconfigured) global addresses on the bridge -> seconds left."""
        now = time.monotonic()
        out = {}
        for a in self.addresses:
            if a.is_global and not a.is_permanent:
                seen = self._reported.get(a.interface, now)
                out[str(a.interface)] = max(0, a.valid_lft - int(now - seen))
        return out

    def foreign_ports(self) -> list[Link]:
        """Ports that are neither uplinks nor bridged's own (taps, the VXLAN port): another
        tool put them there."""
        return [p for p in self.ports()
                if p.index not in self._uplink_indexes and not self.is_own_port(p)]

    def watches_addresses_of(self, index: int) -> bool:
        if index == self.index:
            return True
        link = self.links.get(index) if index in self._uplink_indexes else None
        return link is not None and self.bridge is not None and link.master == self.bridge.index

    def status_line(self) -> str:
        if self.bridge is None:
            return f"{self.config.name} missing"
        if self.rolled_back is not None and self.held_not_tried:
            return (f"{self.bridge.name} up, uplinks kept off it: {self.rolled_back}; fix "
                    "that and reload, or 'bridgectl retry'")
        if self.rolled_back is not None:
            return (f"{self.bridge.name} up, rolled back: {self.rolled_back}; uplinks kept "
                    "off the bridge until the config is reloaded or 'bridgectl retry'")
        uplinks = [link.name for link in self.enslaved_uplinks()]
        if uplinks:
            return f"{self.bridge.name} up, uplink {', '.join(uplinks)}"
        if self.config.uplinks:
            return f"{self.bridge.name} up, no uplink present"
        return f"{self.bridge.name} up, no uplink configured"

    def saved_tap_cursor(self) -> int | None:
        """Where tap numbering went on before a restart, from the bridge's mark."""
        alias = self.bridge.alias if self.bridge is not None else None
        if not alias or not alias.startswith(BRIDGE_MARK + ":next="):
            return None
        try:
            return int(alias[len(BRIDGE_MARK + ":next="):])
        except ValueError:
            return None

    async def save_tap_cursor(self, value: int) -> None:
        if self.bridge is not None:
            await self._netlink.set_link(self.bridge.index,
                                         ifalias=f"{BRIDGE_MARK}:next={value}")

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bring the bridge up and enslave what matches; raise if the bridge is unusable."""
        self._match_uplinks()
        await self._ensure_bridge()
        for link in self.uplinks():
            await self._adopt_uplink_or_log(link.index)
        self._update_state()
        self._worker = asyncio.create_task(self._reconcile_forever(), name="reconciler")

    async def stop(self) -> None:
        self.state = State.STOPPING
        self._notify()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self.config.teardown_on_stop:
            await self._teardown()

    async def reload(self, config: BridgeConfig) -> None:
        if config.name != self.config.name:
            raise BridgeUnavailable(f"bridge.name changed from {self.config.name} to "
                                    f"{config.name}: restart bridged to rename the bridge")
        self.config = config
        self._match_uplinks()  # the uplink patterns may have changed
        self._bridge_dirty = True
        self._pending_uplinks.update(link.index for link in self.uplinks())
        self._trigger.wake()

    # --- changes -----------------------------------------------------------------------

    def link_changed(self, old: Link | None, new: Link | None) -> None:
        if new is None:
            assert old is not None
            self._link_gone(old)
            return
        bridge_index = self.index
        if bridge_index is not None and \
                (old is not None and old.master == bridge_index) != (new.master == bridge_index):
            self.ports_version += 1
        index = new.index
        was_uplink = index in self._uplink_indexes
        if self._is_uplink(new):
            self._uplink_indexes.add(index)
        else:
            self._uplink_indexes.discard(index)
        if self.bridge is not None and index == self.bridge.index:
            self.bridge = new
            if not new.up:
                self._bridge_dirty = True
                self._trigger.wake()
            self._notify()
            return
        if self.bridge is None and new.name == self.config.name:
            # Recreated by someone else before we got to it: adopt it.
            self._bridge_dirty = True
            self._trigger.wake()
            return
        if index in self._uplink_indexes:
            if self.rolled_back is None and self._needs_enslaving(new) and \
                    not self._gave_up_on(new):
                if old is None or not was_uplink:
                    log.info("uplink %s appeared", new.name,
                             extra={"INTERFACE": new.name, "BRIDGED_EVENT": "uplink-appeared"})
                elif self.bridge is not None and old.master == self.bridge.index:
                    log.warning("%s was taken off %s by another process; re-enslaving it",
                                new.name, self.bridge.name,
                                extra={"INTERFACE": new.name,
                                       "BRIDGED_EVENT": "uplink-taken-off"})
                self._pending_uplinks.add(index)
                self._trigger.wake()
            self._update_state()
        elif was_uplink:
            log.info("%s was renamed to %s and no longer matches the uplinks",
                     old.name if old else "?", new.name,
                     extra={"INTERFACE": new.name, "BRIDGED_EVENT": "uplink-renamed"})
            self._update_state()
        elif self.bridge is not None and (
                (old is not None and old.master == self.bridge.index) !=
                (new.master == self.bridge.index)):
            if new.master == self.bridge.index and not self.is_own_port(new):
                log.warning("%s joined %s but is neither an uplink nor a bridged tap: another "
                            "tool put it there (a foreign port; bridged leaves it alone)",
                            new.name, self.bridge.name,
                            extra={"INTERFACE": new.name, "BRIDGED_EVENT": "foreign-port"})
            self._notify()  # a port came or went

    def _link_gone(self, link: Link) -> None:
        if self.index is not None and link.master == self.index:
            self.ports_version += 1
        was_uplink = link.index in self._uplink_indexes
        self._uplink_indexes.discard(link.index)
        if self.bridge is not None and link.index == self.bridge.index:
            log.warning("bridge %s was deleted; recreating it", link.name,
                        extra={"INTERFACE": link.name, "BRIDGED_EVENT": "bridge-deleted"})
            self.bridge = None
            self.addresses = set()
            self._bridge_dirty = True
            self._trigger.wake()
        elif was_uplink:
            self._failed_uplinks.pop(link.index, None)
            log.warning("uplink %s disappeared", link.name,
                        extra={"INTERFACE": link.name, "BRIDGED_EVENT": "uplink-removed"})
            self._uplink_changed(link.name, "removed")
        elif self.bridge is not None and link.master == self.bridge.index:
            self._notify()  # a port went
        self._update_state()

    def handle_address_event(self, event: AddressEvent) -> None:
        if self.bridge is None:
            return
        if event.index != self.bridge.index:
            self._uplink_address(event)
            return
        if event.removed:
            self.addresses.discard(event.address)
        else:
            # Equal addresses differ in lifetimes (a renewed lease): keep the newest.
            self.addresses.discard(event.address)
            self.addresses.add(event.address)
            self._reported[event.address.interface] = time.monotonic()
        self._notify()

    def _uplink_address(self, event: AddressEvent) -> None:
        """An address appeared on an enslaved uplink: another tool's DHCP client or
        profile (NetworkManager, networkd, ifupdown) configured it again. It is dead
        there, and its routes compete with the bridge's: remove them."""
        link = self.links.get(event.index)
        if event.removed or not event.address.is_global or link is None or \
                link.master != self.index or self.rolled_back is not None:
            return  # (a rollback gives the uplink its addresses back, on purpose)
        if not self.ip.manages_ip:
            log.warning("address %s appeared on %s, which is enslaved to %s: it cannot work "
                        "there; stop the tool that put it there (ip.mode = \"none\": bridged "
                        "leaves addresses alone)", event.address.interface, link.name,
                        self.config.name, extra={"INTERFACE": link.name,
                                                 "BRIDGED_EVENT": "uplink-address"})
            return
        log.warning("address %s appeared on %s, which is enslaved to %s; removing it (another "
                    "tool configures %s: see 'journalctl -u bridged' for which)",
                    event.address.interface, link.name, self.config.name, link.name,
                    extra={"INTERFACE": link.name, "BRIDGED_EVENT": "uplink-address",
                           "BRIDGED_ADDRESS": str(event.address.interface)})
        self._uplinks_to_clear.add(link.index)
        self._trigger.wake()

    def events_lost(self) -> None:
        """Link or address events were lost: read the bridge's addresses again and, when
        they are the configuration's own, assert them and their routes again. The link
        table's resync compares states, and a bridge set down and up in what was lost
        looks unchanged, while the down flushed its routes and its IPv6 addresses."""
        self._addresses_lost = True
        self._trigger.wake()

    # --- the reconciler ----------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            await self._trigger.next_pass()
            try:
                await self._reconcile_once()
            except Exception:
                log.exception("reconciling %s failed", self.config.name)
            self._update_state()

    async def settled(self) -> None:
        """Wait until the reconciler has done all the work asked of it so far."""
        await self._trigger.settled()

    async def roll_back(self, why: str) -> None:
        """Put the host back as it was before the IP move: each uplink gets its own
        addresses back, leaves the bridge, gets its routes back; the bridge keeps its
        taps but loses bridged's addresses and routes. In that order, so that the host
        always has an address on a link that carries its traffic."""
        self.rolled_back, self.held_not_tried = why, False
        await self._release_uplinks()
        self._pending_uplinks.clear()
        self._update_state()

    async def undo_start(self) -> None:
        """A start that failed leaves nothing behind that it created: the uplinks get
        their own configuration back, a bridge made by this start goes."""
        if not self._created:
            return
        self.rolled_back = "start failed"
        try:
            await self._release_uplinks()
            if self.bridge is not None:
                await self._netlink.delete_link(self.bridge.index)
                log.info("bridge %s removed again", self.config.name,
                         extra={"INTERFACE": self.config.name,
                                "BRIDGED_EVENT": "bridge-removed"})
        except KernelError as e:
            log.error("undoing the start failed: %s", e,
                      extra={"BRIDGED_EVENT": "rollback-failed"})

    async def _release_uplinks(self) -> None:
        bridge = self.bridge
        if bridge is not None:
            for uplink in self.enslaved_uplinks():
                try:
                    await self.ip.give_back(bridge, uplink)
                    await self._netlink.set_link(uplink.index, master=0)
                    await self.ip.give_back_routes(bridge, uplink)
                except KernelError as e:
                    log.error("rolling %s back failed: %s", uplink.name, e,
                              extra={"INTERFACE": uplink.name,
                                     "BRIDGED_EVENT": "rollback-failed"})
                else:
                    log.warning("%s released from %s with its own addresses and routes",
                                uplink.name, bridge.name,
                                extra={"INTERFACE": uplink.name,
                                       "BRIDGED_EVENT": "uplink-released"})
                    self._uplink_changed(uplink.name, "released")
            await self.ip.clear_bridge(bridge)

    def hold(self, why: str) -> None:
        """Keep the uplinks off the bridge without trying: the move cannot be made safely
        (ip.mode "dhcp" with no DHCP client to lease the bridge's address)."""
        self.rolled_back, self.held_not_tried = why, True
        self._pending_uplinks.clear()
        self._update_state()

    def retry(self) -> None:
        """Try the move again (after a rollback): enslave what matches."""
        self.rolled_back, self.held_not_tried = None, False
        self._pending_uplinks.update(link.index for link in self.uplinks())
        self._bridge_dirty = True
        self._trigger.wake()
        self._update_state()

    async def _reconcile_once(self) -> None:
        if self._addresses_lost and self.bridge is not None:
            self._addresses_lost = False
            self.addresses = set(await self._netlink.addresses(self.bridge.index))
            # Only static addresses are asserted again, and not after a rollback: a
            # moved or leased address may be stale by now (networkd may hold a new
            # lease), and a rolled-back host stays off the bridge until "retry". Adding
            # what is there already, or replacing a route by itself, changes nothing.
            if self.ip.config.mode == "static" and self.rolled_back is None:
                await self.ip.apply_to_bridge(self.bridge, self.uplinks())
            self._notify()
        if self._bridge_dirty:
            self._bridge_dirty = False
            try:
                await self._ensure_bridge()
            except BridgeUnavailable as e:
                log.error("%s", e, extra={"INTERFACE": self.config.name,
                                          "BRIDGED_EVENT": "bridge-unavailable"})
                return
            self._pending_uplinks.update(link.index for link in self.uplinks())
        while self._uplinks_to_clear:
            link = self.links.get(self._uplinks_to_clear.pop())
            if link is not None and self.bridge is not None and link.master == self.index \
                    and self.rolled_back is None:
                await self.ip.clear_uplink(self.bridge, link)
        while self._pending_uplinks:
            await self._adopt_uplink_or_log(self._pending_uplinks.pop())

    async def _adopt_uplink_or_log(self, index: int) -> None:
        """One uplink's trouble is not the bridge's: at start as in the reconciler."""
        try:
            await self._adopt_uplink(index)
        except KernelError as e:
            # Typically the link vanished mid-way (hotplug); its events say what next.
            log.warning("adopting uplink %d failed: %s", index, e,
                        extra={"BRIDGED_EVENT": "uplink-failed"})

    def _desired_mtu(self) -> int:
        """The bridge's MTU, always set explicitly: the kernel otherwise gives a bridge the
        smallest MTU of its ports, and a tap's would then lower the host's."""
        if self.config.mtu is not None:
            return self.config.mtu
        uplinks = self.enslaved_uplinks() or self.uplinks()
        return uplinks[0].mtu if uplinks else DEFAULT_MTU

    async def _ensure_bridge(self) -> None:
        cfg = self.config
        link = await self._netlink.link(name=cfg.name)
        if link is not None and link.kind != "bridge":
            raise BridgeUnavailable(
                f"{cfg.name} exists and is a {link.kind or 'plain'} device, not a bridge: "
                f"remove it or set bridge.name to another name"
            )
        created = link is None
        if link is None:
            link = await self._netlink.create_bridge(cfg.name, cfg.stp, cfg.forward_delay)
            self._created = self.state == State.STARTING
            log.info("bridge %s created", cfg.name,
                     extra={"INTERFACE": cfg.name, "BRIDGED_EVENT": "bridge-created"})
        else:
            ours = (link.alias or "").startswith(BRIDGE_MARK)
            if not ours and not cfg.adopt:
                raise BridgeUnavailable(
                    f"bridge {cfg.name} exists and bridged did not make it"
                    f"{made_by(cfg.name)}; bridged does not take over another tool's bridge: "
                    f"remove it there (and 'ip link del {cfg.name}'), or set "
                    "bridge.adopt = true to take it over as it is")
            await self._netlink.set_bridge_options(link.index, cfg.stp, cfg.forward_delay)
            if self.bridge is None:
                log.info("bridge %s adopted%s", cfg.name,
                         "" if ours else " (bridge.adopt = true)",
                         extra={"INTERFACE": cfg.name, "BRIDGED_EVENT": "bridge-adopted"})
        changes: dict[str, object] = {"state": "up", "mtu": self._desired_mtu()}
        if cfg.mac not in (None, MAC_FROM_UPLINK):
            changes["address"] = cfg.mac
        if not (link.alias or "").startswith(BRIDGE_MARK):
            changes["ifalias"] = BRIDGE_MARK
        await self._netlink.set_link(link.index, **changes)
        refreshed = await self._netlink.link(index=link.index)
        if refreshed is None:
            raise BridgeUnavailable(f"{cfg.name} disappeared while being configured")
        self.bridge = refreshed
        self.ports_version += 1  # (a bridge made again has ports of its own)
        # Events keep this current from here on; the dump covers what came before.
        self.addresses = set(await self._netlink.addresses(refreshed.index))
        if self.rolled_back is None:  # rolled back or held: the host's address stays off
            await self.ip.apply_to_bridge(refreshed, self.uplinks())
        if created:
            for listener in self.on_bridge_created:
                listener(refreshed)
        self._notify()

    async def _adopt_uplink(self, index: int) -> None:
        """Enslave one uplink, moving its IP configuration in the safe order.

        The link table is written only from events and dumps: a link can vanish at any
        await below, and a stale write here would resurrect it.
        """
        bridge = self.bridge
        link = await self._netlink.link(index=index)
        if bridge is None or link is None or not self._is_uplink(link) or \
                self.rolled_back is not None:
            return
        if not self._needs_enslaving(link):
            return
        added = await self.ip.before_enslave(bridge, link)
        changes: dict[str, object] = {"master": bridge.index, "state": "up"}
        if self.config.mtu is not None:
            changes["mtu"] = self.config.mtu
        try:
            await self._set_bridge_mac_from(bridge, link)
            await self._netlink.set_link(index, **changes)
        except KernelError as e:
            await self.ip.undo_before_enslave(bridge, added)
            if e.errno == errno.ENODEV:
                return  # unplugged while we worked: not a failure to remember
            if await self._netlink.link(index=bridge.index) is None:
                # The bridge went meanwhile (a master that is gone is EINVAL): its
                # recreation enslaves the uplinks again; nothing failed.
                return
            self._failed_uplinks[index] = link.master
            log.error("cannot enslave %s to %s: %s", link.name, bridge.name, e,
                      extra={"INTERFACE": link.name, "BRIDGED_EVENT": "uplink-failed"})
            self._uplink_changed(link.name, "failed")
            return
        self._failed_uplinks.pop(index, None)
        self.enslaved_count += 1
        if self.config.mtu is None and not any(u.index != index
                                               for u in self.enslaved_uplinks()):
            # The first uplink sets the pace: its MTU, pinned on the bridge.
            with contextlib.suppress(KernelError):
                await self._netlink.set_link(bridge.index, mtu=link.mtu)
        log.info("uplink %s enslaved to %s", link.name, bridge.name,
                 extra={"INTERFACE": link.name, "BRIDGED_EVENT": "uplink-enslaved",
                        "BRIDGED_BRIDGE": bridge.name})
        self._uplink_changed(link.name, "enslaved")
        if await self.ip.after_enslave(bridge, link):
            for listener in self.on_moved:
                listener()

    async def _set_bridge_mac_from(self, bridge: Link, uplink: Link) -> None:
        if self.config.mac != MAC_FROM_UPLINK:
            return
        if any(u.index != uplink.index for u in self.enslaved_uplinks()):
            return  # the bridge keeps the MAC of the uplink it already has
        mac = uplink.perm_address or uplink.address
        if mac and mac != bridge.address:
            await self._netlink.set_link(bridge.index, address=mac)
            log.info("bridge %s takes %s's MAC %s", bridge.name, uplink.name, mac,
                     extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "bridge-mac"})

    async def _teardown(self) -> None:
        bridge = await self._netlink.link(name=self.config.name)
        if bridge is None:
            return
        uplinks = [u for u in self.uplinks() if u.master == bridge.index]
        # Reverse of the move: the uplink gets the addresses before the bridge goes.
        if uplinks:
            await self.ip.restore_addresses_to_uplink(uplinks[0])
        for uplink in uplinks:
            await self._netlink.set_link(uplink.index, master=0)
        await self._netlink.delete_link(bridge.index)
        if uplinks:
            await self.ip.restore_routes_to_uplink(uplinks[0])
        log.info("bridge %s torn down", bridge.name,
                 extra={"INTERFACE": bridge.name, "BRIDGED_EVENT": "bridge-removed"})

    # --- helpers -----------------------------------------------------------------------

    def _match_uplinks(self) -> None:
        self._uplink_indexes = {link.index for link in self.links if self._is_uplink(link)}

    def _is_uplink(self, link: Link) -> bool:
        return self.config.is_uplink(link.name, link.address, link.perm_address)

    def _needs_enslaving(self, link: Link) -> bool:
        return self.bridge is not None and (link.master != self.bridge.index or not link.up)

    def _gave_up_on(self, link: Link) -> bool:
        """An uplink the kernel refused is retried only once something about it changes."""
        return link.index in self._failed_uplinks and \
            self._failed_uplinks[link.index] == link.master

    def _uplink_changed(self, name: str, state: str) -> None:
        for listener in self.on_uplink_changed:
            listener(name, state)
        self._update_state()

    def _update_state(self) -> None:
        if self.state == State.STOPPING:
            return
        if self.rolled_back is not None:
            new = State.DEGRADED if self.held_not_tried else State.ROLLED_BACK
        elif self.bridge is None or (self.config.uplinks and not self.enslaved_uplinks()):
            new = State.DEGRADED
        else:
            new = State.READY
        if new != self.state:
            self.state = new
            log.info("state %s", new.value, extra={"BRIDGED_EVENT": "state",
                                                   "BRIDGED_STATE": new.value})
        self._notify()

    def _notify(self) -> None:
        for listener in self.on_change:
            listener()

