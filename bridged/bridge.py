"""The bridge and its uplinks: desired state vs what the kernel reports.

Link events only record what was observed and mark work; one reconciler task does
the work in order, so a burst of events (an uplink flapping, the bridge deleted while
an uplink is being enslaved) never races with itself. There is no polling: the
reconciler sleeps until an event wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import logging
from collections.abc import Callable

from bridged.config import MAC_FROM_UPLINK, BridgeConfig
from bridged.errors import BridgeUnavailable
from bridged.ipconfig import IPManager
from bridged.kernel.events import AddressEvent, LinkEvent
from bridged.kernel.netlink import AF_BRIDGE, Address, KernelError, Link, Netlink

log = logging.getLogger(__name__)


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPING = "stopping"


class BridgeManager:
    """Owns one bridge: creates or adopts it, keeps its uplinks enslaved."""

    def __init__(self, config: BridgeConfig, ip: IPManager, netlink: Netlink) -> None:
        self.config = config
        self.ip = ip
        self._netlink = netlink
        self.state = State.STARTING
        self.bridge: Link | None = None
        # Every link in the namespace, kept from events; with indexes by name and of the
        # uplinks (matched once per change of a link), since with a thousand taps a scan
        # per event adds up.
        self._links: dict[int, Link] = {}
        self._names: dict[str, int] = {}
        self._uplink_indexes: set[int] = set()
        # The bridge's addresses as the kernel reports them, whoever put them there.
        self.addresses: set[Address] = set()
        self._pending_uplinks: set[int] = set()
        self._bridge_dirty = False
        self._resync = False
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        # index -> master it had when enslaving failed; retried once that changes.
        self._failed_uplinks: dict[int, int | None] = {}
        # Listeners: the D-Bus layer, sd_notify status, the tap registry.
        self.on_change: list[Callable[[], None]] = []
        self.on_uplink_changed: list[Callable[[str, str], None]] = []
        self.on_bridge_created: list[Callable[[Link], None]] = []

    # --- what others read ------------------------------------------------------------

    @property
    def index(self) -> int | None:
        return self.bridge.index if self.bridge else None

    def ports(self) -> list[Link]:
        index = self.index
        return sorted((link for link in self._links.values() if index and link.master == index),
                      key=lambda link: link.name)

    def uplinks(self) -> list[Link]:
        """Links that match the configured uplinks, enslaved or not."""
        return sorted((self._links[i] for i in self._uplink_indexes), key=lambda link: link.name)

    def enslaved_uplinks(self) -> list[Link]:
        index = self.index
        return [link for link in self.uplinks() if index and link.master == index]

    def all_links(self) -> list[Link]:
        return list(self._links.values())

    def link(self, index: int) -> Link | None:
        return self._links.get(index)

    def has_link_named(self, name: str) -> bool:
        return name in self._names

    def _store(self, link: Link) -> None:
        previous = self._links.get(link.index)
        if previous is not None and previous.name != link.name:
            self._names.pop(previous.name, None)
        self._links[link.index] = link
        self._names[link.name] = link.index
        if self._is_uplink(link):
            self._uplink_indexes.add(link.index)
        else:
            self._uplink_indexes.discard(link.index)

    def _drop(self, index: int) -> None:
        link = self._links.pop(index, None)
        if link is not None and self._names.get(link.name) == index:
            del self._names[link.name]
        self._uplink_indexes.discard(index)

    def _store_all(self, links: list[Link]) -> None:
        self._links, self._names, self._uplink_indexes = {}, {}, set()
        for link in links:
            self._store(link)

    def status_line(self) -> str:
        if self.bridge is None:
            return f"{self.config.name} missing"
        uplinks = [link.name for link in self.enslaved_uplinks()]
        if uplinks:
            return f"{self.bridge.name} up, uplink {', '.join(uplinks)}"
        if self.config.uplinks:
            return f"{self.bridge.name} up, no uplink present"
        return f"{self.bridge.name} up, no uplink configured"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bring the bridge up and enslave what matches; raise if the bridge is unusable."""
        self._store_all(await self._netlink.links())
        await self._ensure_bridge()
        for link in self.uplinks():
            await self._adopt_uplink(link.index)
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
            log.error("bridge.name changed from %s to %s: restart bridged to rename the bridge; "
                      "keeping %s", self.config.name, config.name, self.config.name,
                      extra={"INTERFACE": self.config.name, "BRIDGED_EVENT": "reload-refused"})
            config = dataclasses.replace(config, name=self.config.name)
        self.config = config
        self._store_all(list(self._links.values()))  # the uplink patterns may have changed
        self._bridge_dirty = True
        self._pending_uplinks.update(link.index for link in self.uplinks())
        self._wakeup.set()

    # --- events ------------------------------------------------------------------------

    def handle_event(self, event: LinkEvent) -> None:
        link = event.link
        log.debug("link event: %s %s index %d master %s up %s family %d",
                  "del" if event.removed else "new", link.name, link.index, link.master,
                  link.up, link.family)
        if link.family == AF_BRIDGE:
            # The bridge's per-port notifications: port state, not a new link.
            return
        if event.removed:
            was_uplink = link.index in self._uplink_indexes
            self._drop(link.index)
            if self.bridge and link.index == self.bridge.index:
                log.warning("bridge %s was deleted; recreating it", link.name,
                            extra={"INTERFACE": link.name, "BRIDGED_EVENT": "bridge-deleted"})
                self.bridge = None
                self.addresses = set()
                self._bridge_dirty = True
                self._wakeup.set()
            elif was_uplink:
                self._failed_uplinks.pop(link.index, None)
                log.warning("uplink %s disappeared", link.name,
                            extra={"INTERFACE": link.name, "BRIDGED_EVENT": "uplink-removed"})
                self._uplink_changed(link.name, "removed")
            self._update_state()
            return

        previous = self._links.get(link.index)
        self._store(link)
        if self.bridge and link.index == self.bridge.index:
            self.bridge = link
            if not link.up:
                self._bridge_dirty = True
                self._wakeup.set()
            return
        if self.bridge is None and link.name == self.config.name:
            # Recreated by someone else before we got to it: adopt it.
            self._bridge_dirty = True
            self._wakeup.set()
            return
        if link.index in self._uplink_indexes:
            if self._needs_enslaving(link) and not self._gave_up_on(link):
                if previous is None or not self._is_uplink(previous):
                    log.info("uplink %s appeared", link.name,
                             extra={"INTERFACE": link.name, "BRIDGED_EVENT": "uplink-appeared"})
                self._pending_uplinks.add(link.index)
                self._wakeup.set()
            self._update_state()
        elif previous is not None and self._is_uplink(previous):
            log.info("%s was renamed to %s and no longer matches the uplinks", previous.name,
                     link.name, extra={"INTERFACE": link.name, "BRIDGED_EVENT": "uplink-renamed"})
            self._update_state()

    def handle_address_event(self, event: AddressEvent) -> None:
        if self.bridge is None or event.index != self.bridge.index:
            return
        if event.removed:
            self.addresses.discard(event.address)
        else:
            self.addresses.add(event.address)
        self._notify()

    def handle_overrun(self) -> None:
        """Events were lost: rebuild the picture from a dump."""
        self._resync = True
        self._bridge_dirty = True
        self._wakeup.set()

    # --- the reconciler ----------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self._reconcile_once()
            except Exception:
                log.exception("reconciling %s failed", self.config.name)
            self._update_state()

    async def _reconcile_once(self) -> None:
        if self._resync:
            self._resync = False
            self._store_all(await self._netlink.links())
            self._pending_uplinks.update(link.index for link in self.uplinks())
        if self._bridge_dirty:
            self._bridge_dirty = False
            try:
                await self._ensure_bridge()
            except BridgeUnavailable as e:
                log.error("%s", e, extra={"INTERFACE": self.config.name,
                                          "BRIDGED_EVENT": "bridge-unavailable"})
                return
            self._pending_uplinks.update(link.index for link in self.uplinks())
        while self._pending_uplinks:
            index = self._pending_uplinks.pop()
            try:
                await self._adopt_uplink(index)
            except KernelError as e:
                # Typically the link vanished mid-way (hotplug); its events say what next.
                log.warning("adopting uplink %d failed: %s", index, e,
                            extra={"BRIDGED_EVENT": "uplink-failed"})

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
            log.info("bridge %s created", cfg.name,
                     extra={"INTERFACE": cfg.name, "BRIDGED_EVENT": "bridge-created"})
        else:
            await self._netlink.set_bridge_options(link.index, cfg.stp, cfg.forward_delay)
            if self.bridge is None:
                log.info("bridge %s adopted", cfg.name,
                         extra={"INTERFACE": cfg.name, "BRIDGED_EVENT": "bridge-adopted"})
        changes: dict[str, object] = {"state": "up"}
        if cfg.mtu is not None:
            changes["mtu"] = cfg.mtu
        if cfg.mac not in (None, MAC_FROM_UPLINK):
            changes["address"] = cfg.mac
        await self._netlink.set_link(link.index, **changes)
        refreshed = await self._netlink.link(index=link.index)
        if refreshed is None:
            raise BridgeUnavailable(f"{cfg.name} disappeared while being configured")
        self.bridge = refreshed
        # Events keep this current from here on; the dump covers what came before.
        self.addresses = set(await self._netlink.addresses(refreshed.index))
        await self.ip.apply_to_bridge(refreshed, self.uplinks())
        if created:
            for listener in self.on_bridge_created:
                listener(refreshed)
        self._notify()

    async def _adopt_uplink(self, index: int) -> None:
        """Enslave one uplink, moving its IP configuration in the safe order.

        ``self._links`` is written only from events and dumps: a link can vanish at
        any await below, and a stale write here would resurrect it.
        """
        bridge = self.bridge
        link = await self._netlink.link(index=index)
        if bridge is None or link is None or not self._is_uplink(link):
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
            self._failed_uplinks[index] = link.master
            log.error("cannot enslave %s to %s: %s", link.name, bridge.name, e,
                      extra={"INTERFACE": link.name, "BRIDGED_EVENT": "uplink-failed"})
            self._uplink_changed(link.name, "failed")
            return
        self._failed_uplinks.pop(index, None)
        log.info("uplink %s enslaved to %s", link.name, bridge.name,
                 extra={"INTERFACE": link.name, "BRIDGED_EVENT": "uplink-enslaved",
                        "BRIDGED_BRIDGE": bridge.name})
        self._uplink_changed(link.name, "enslaved")
        await self.ip.after_enslave(bridge, link)

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
        if self.bridge is None or (self.config.uplinks and not self.enslaved_uplinks()):
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
