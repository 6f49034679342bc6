"""The overlay: a kernel VXLAN port puts the bridge on one L2 segment with other hosts.

bridged writes neither a tunnel nor a routing protocol. The kernel's VXLAN device is the
data plane, and its forwarding database (FDB) says where frames go: with static peers
bridged keeps one all-zeros ("flood") entry per peer, so broadcast, multicast and
unknown unicast are copied to each (head-end replication); under ``control = "evpn"``
FRR's zebra fills the FDB from BGP EVPN (flood entries for the remote VTEPs, and the
remote MACs as ``extern_learn`` entries) and bridged only reads it.

The device is bridged's: its ifalias bears ``VXLAN_MARK``, so a restart adopts it and a
device of that name another tool made is refused. It is kept on the bridge like an
uplink: recreated if deleted, put back if taken off, set up if set down, its MTU the
bridge's. Its packets leave through the underlay, the interface holding
``vxlan.local``: the bridge's MTU plus the VXLAN headers must fit that interface's MTU,
else the overlay is degraded and says so with the numbers.

The device never learns remote MACs from the packets it receives, with static peers
too: the peer list is then the whole truth about where frames may go. Removing a peer
stops traffic to it at once (a learned entry would keep sending its MACs there until
it aged out, and be learned again from the peer's next packet), and a forged VXLAN
packet cannot point a MAC at an address nobody listed. The price is that unicast to a
remote MAC is copied to every peer, as broadcast is: fine for the few hosts one lists
by hand; fleets use EVPN, which installs one entry per remote MAC.

As in the bridge manager, link, address and FDB events only record what was observed
and wake one reconciler task, which does the work in order; nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from bridged.bridge import BridgeManager
from bridged.config import IPAddress, VxlanConfig
from bridged.kernel.events import AddressEvent, FdbEvent, FdbMonitor
from bridged.kernel.link import ZERO_MAC, FdbEntry, VxlanInfo
from bridged.kernel.linktable import LinkTable
from bridged.kernel.netlink import KernelError, Link, Netlink, VxlanSpec
from bridged.trigger import ReconcileTrigger

log = logging.getLogger(__name__)

# The VXLAN device's ifalias: bridged made it.
VXLAN_MARK = "bridged:vxlan"
# A peer that keeps coming and going (a control plane churning) gets a few journal lines
# per window, then one summary per window while it goes on.
PEER_LOG_WINDOW_S = 30.0
PEER_LOG_BURST = 4
# Operational states of an underlay that carries nothing.
_DOWN = ("DOWN", "LOWERLAYERDOWN", "NOTPRESENT")


def is_marked(link: Link) -> bool:
    return (link.alias or "").startswith(VXLAN_MARK)


def _address_key(address: IPAddress) -> tuple[int, int]:
    return address.version, int(address)


@dataclass(frozen=True)
class Remote:
    """A remote VTEP, as the configuration and the device's FDB show it."""

    address: IPAddress
    configured: bool  # listed in vxlan.peers
    flood: bool  # has an all-zeros entry: gets broadcast, multicast, unknown unicast
    entries: int  # FDB entries naming it, the flood entry included
    macs: int  # of these, MACs a control plane installed (EVPN: extern_learn)

    @property
    def learned(self) -> bool:
        """A peer the control plane found (EVPN), not one the configuration lists."""
        return self.flood and not self.configured


@dataclass
class _Window:
    handle: asyncio.TimerHandle
    device: str
    said: int = 1  # lines logged in this window
    held: int = 0  # changes counted instead
    up: bool = False
    how: str = ""


class PeerLog:
    """Journal lines for peers coming and going: the first ``burst`` changes of a peer
    in a window of ``window`` seconds are said at once, further ones are counted and
    said as one summary when the window ends; while the churn goes on, that is one line
    per window."""

    def __init__(self, window: float = PEER_LOG_WINDOW_S, burst: int = PEER_LOG_BURST) -> None:
        self.window = window
        self.burst = burst
        self._windows: dict[IPAddress, _Window] = {}

    def changed(self, device: str, peer: IPAddress, up: bool, how: str) -> None:
        window = self._windows.get(peer)
        if window is not None and window.said >= self.burst:
            window.held += 1
            window.up, window.how = up, how
            return
        log.info("vxlan peer %s %s on %s (%s)", peer, "up" if up else "gone", device, how,
                 extra={"INTERFACE": device, "BRIDGED_PEER": str(peer),
                        "BRIDGED_EVENT": "vxlan-peer-up" if up else "vxlan-peer-gone"})
        if window is None:
            self._open(device, peer, said=1)
        else:
            window.said += 1

    def _open(self, device: str, peer: IPAddress, said: int) -> None:
        handle = asyncio.get_running_loop().call_later(self.window, self._close, peer)
        self._windows[peer] = _Window(handle, device, said=said)

    def _close(self, peer: IPAddress) -> None:
        window = self._windows.pop(peer)
        if not window.held:
            return
        log.warning("vxlan peer %s changed %d more time%s on %s in the last %g s; now %s "
                    "(%s)", peer, window.held, "" if window.held == 1 else "s",
                    window.device, self.window, "up" if window.up else "gone", window.how,
                    extra={"INTERFACE": window.device, "BRIDGED_PEER": str(peer),
                           "BRIDGED_EVENT": "vxlan-peer-churn",
                           "BRIDGED_CHANGES": str(window.held)})
        self._open(window.device, peer, said=self.burst)  # still churning: summaries only

    def close(self) -> None:
        for window in self._windows.values():
            window.handle.cancel()
        self._windows.clear()


@dataclass
class _Work:
    """What the reconciler has been asked to look at."""

    device: bool = True  # the device, its place on the bridge, its settings
    underlay: bool = True  # which interface holds vxlan.local
    fdb: bool = True  # read the device's FDB again (new device, lost events)
    removing: set[IPAddress] = field(default_factory=set)  # flood entries we delete
    # Why the device must be made anew (its FDB emptied), if it must.
    recreate: str | None = None


class Overlay:
    """Owns the VXLAN port of one bridge and, with static peers, its flood list."""

    def __init__(self, config: VxlanConfig | None, bridge: BridgeManager, netlink: Netlink,
                 links: LinkTable,
                 monitor: Callable[..., FdbMonitor] = FdbMonitor) -> None:
        self.config = config
        self._bridge = bridge
        self._netlink = netlink
        self._links = links
        self._monitor = monitor(self._fdb_event, self._fdb_lost, self._watches_fdb)
        # The device as last seen, when it is ours; None while absent or foreign.
        self.device: Link | None = None
        # The interface holding vxlan.local: the underlay (None: no interface has it).
        self.underlay: int | None = None
        # The device's own FDB: (mac, dst) -> entry, kept by events after one dump.
        self.fdb: dict[tuple[str, IPAddress], FdbEntry] = {}
        self._fdb_version = 0  # counts the changes of self.fdb (see _fdb_changed)
        self._remotes: tuple[object, list[Remote]] | None = None
        # FDB events that arrive while the FDB is dumped, applied after it (None: none
        # is under way), as the link table does with link events.
        self._held: list[FdbEvent] | None = None
        # Why the overlay is not doing its job (None: it is), as logged and shown.
        self.problem: str | None = None
        self._device_problem: str | None = None  # foreign device, or the kernel refused
        self._said: str | None = None  # the problem last logged
        self._resay = False  # log the problem again even if unchanged (after a reload)
        self._work = _Work()
        self._learning_set: tuple[int, bool] | None = None  # (index, evpn) it was set for
        self._deleting: int | None = None  # the index we delete ourselves
        self._bridge_seen: tuple[int, int] | None = None  # (index, mtu) reconciled with
        self._name = config.device_name if config is not None else None
        self._peers = PeerLog()
        self._trigger = ReconcileTrigger()
        self._worker: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[], None]] = []

    # --- what others read ------------------------------------------------------------

    def owns(self, link: Link) -> bool:
        """Is ``link`` bridged's VXLAN port (not a foreign port of the bridge)?"""
        return self.config is not None and link.name == self.config.device_name and \
            is_marked(link)

    def remotes(self) -> list[Remote]:
        """Every remote VTEP the FDB names or the configuration lists. Counted again only
        after a change: EVPN may hold thousands of MACs, and the D-Bus properties and the
        status line ask after every batch of changes."""
        key = (self.config, self._fdb_version)
        if self._remotes is None or self._remotes[0] != key:
            self._remotes = (key, self._count_remotes())
        return self._remotes[1]

    def _count_remotes(self) -> list[Remote]:
        peers = set(self.config.peers) if self.config is not None else set()
        seen: dict[IPAddress, list[int]] = {}  # entries, MACs, flood entries
        for entry in self.fdb.values():
            if entry.dst is None:
                continue
            counts = seen.setdefault(entry.dst, [0, 0, 0])
            counts[0] += 1
            if entry.flood:
                counts[2] += 1
            elif entry.extern_learn:
                counts[1] += 1
        return [Remote(address, address in peers, bool(seen.get(address, (0, 0, 0))[2]),
                       *seen.get(address, (0, 0, 0))[:2])
                for address in sorted(peers | seen.keys(), key=_address_key)]

    def underlay_link(self) -> Link | None:
        return self._links.get(self.underlay) if self.underlay is not None else None

    def status_line(self) -> str | None:
        config = self.config
        if config is None:
            return None
        if self.problem is not None:
            return f"overlay {config.device_name} degraded: {self.problem}"
        remotes = [r for r in self.remotes() if r.flood]
        return f"overlay {config.device_name} (VNI {config.vni}) to {len(remotes)} " \
               f"peer{'' if len(remotes) == 1 else 's'}"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Make or adopt the device, before the daemon says it is ready. A problem (a
        foreign device, an underlay too small) degrades the overlay, never the start."""
        self._bridge.on_change.append(self._bridge_changed)
        for link in self._links:
            # Made by bridged for a configuration that is gone (another VNI, no [vxlan]
            # any more) while it was stopped: nobody else would ever remove it.
            if link.kind == "vxlan" and is_marked(link) and (
                    self.config is None or link.name != self.config.device_name):
                try:
                    await self._remove_device(link.name, "left from an earlier configuration")
                except KernelError as e:
                    log.warning("cannot remove %s: %s", link.name, e,
                                extra={"INTERFACE": link.name, "BRIDGED_EVENT": "vxlan-failed"})
        if self.config is not None:
            self._monitor.start()  # before the first FDB dump: no event falls between
            await self._reconcile_logged()
            if self.problem is None and self.device is not None:
                underlay = self.underlay_link()
                log.info("overlay %s ready: VNI %d, local %s on %s (MTU %d), bridge MTU %d, "
                         "%s", self.device.name, self.config.vni, self.config.local,
                         underlay.name if underlay else "?", underlay.mtu if underlay else 0,
                         self.device.mtu, self._control_text(),
                         extra={"INTERFACE": self.device.name, "BRIDGED_EVENT": "vxlan-ready",
                                "BRIDGED_VNI": str(self.config.vni)})
        self._worker = asyncio.create_task(self._reconcile_forever(), name="overlay")

    async def stop(self, teardown: bool) -> None:
        """Stop watching; with ``teardown`` (bridge.teardown_on_stop) the device goes,
        else it stays with its FDB and keeps the segment while bridged is away."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._monitor.stop()
        self._peers.close()
        if teardown and self._name is not None:
            with contextlib.suppress(KernelError):
                await self._remove_device(self._name, "bridge.teardown_on_stop")

    async def reload(self, config: VxlanConfig | None) -> None:
        old, self.config = self.config, config
        if config is not None:
            self._name = config.device_name
            self._monitor.start()
            if old is None or old.local != config.local:
                self._work.underlay = True
            if old is None:
                self._work.fdb = True
            elif config.evpn != old.evpn:
                # A fresh, empty FDB for the new control plane: an entry bridged made
                # is indistinguishable from one zebra made for the same VTEP.
                self._work.recreate = f"vxlan.control changed to {config.control or 'peers'}"
        self._work.device = True
        self._resay = True  # a problem that stays is said again at every reload
        self._wake()

    async def settled(self) -> None:
        """Wait until the reconciler has done all the work asked of it so far."""
        await self._trigger.settled()

    # --- changes -----------------------------------------------------------------------

    def link_changed(self, old: Link | None, new: Link | None) -> None:
        config = self.config
        if config is None:
            return
        link = new if new is not None else old
        assert link is not None
        device = self.device
        if link.name == config.device_name or (old is not None and
                                               old.name == config.device_name) or \
                (device is not None and link.index == device.index):
            self._device_changed(config, old, new)
        elif link.index == self.underlay:
            if new is None:
                self.underlay = None
                self._work.underlay = True
                self._wake()
            self._update_problem()

    def _device_changed(self, config: VxlanConfig, old: Link | None, new: Link | None) -> None:
        name = config.device_name
        device = self.device
        if new is None or new.name != name:
            assert old is not None
            if device is not None and old.index == device.index:
                self.device = None
                self.fdb.clear()
                self._fdb_changed()
                if self._deleting != old.index:
                    log.warning("vxlan device %s was %s by another process; making it again",
                                name, "deleted" if new is None else f"renamed to {new.name}",
                                extra={"INTERFACE": name, "BRIDGED_EVENT": "vxlan-deleted"})
                self._notify()
            self._work.device = True
            self._wake()
            return
        if not is_marked(new):
            if device is not None or self._device_problem is None:
                self._work.device = True  # a foreign device of that name: say so
                self._wake()
            return
        bridge = self._bridge.bridge
        if device is None or device.index != new.index:
            self._work.device = True
        elif bridge is not None and (new.master != bridge.index or not new.up or
                                     new.mtu != bridge.mtu):
            if old is not None and old.master == bridge.index and new.master != bridge.index:
                log.warning("%s was taken off %s by another process; putting it back", name,
                            bridge.name, extra={"INTERFACE": name,
                                                "BRIDGED_EVENT": "vxlan-taken-off"})
            if new.master != bridge.index:
                # Off the bridge, its port lost its learning setting: set again once it is
                # back, even if someone else put it back before we look.
                self._learning_set = None
            self._work.device = True
        self.device = new
        if self._work.device:
            self._wake()
        self._notify()

    def _bridge_changed(self) -> None:
        """The bridge manager's news: a new bridge or a new MTU is the device's too."""
        bridge = self._bridge.bridge
        if self.config is not None and bridge is not None and \
                self._bridge_seen != (bridge.index, bridge.mtu):
            self._work.device = True
            self._wake()

    def watches_addresses_of(self, index: int) -> bool:
        """Address events the overlay needs: those that may move vxlan.local. A port of
        the bridge (a tap, an uplink) never holds it, and taps bring many."""
        if self.config is None:
            return False
        if index == self.underlay:
            return True
        link = self._links.get(index)
        bridge = self._bridge.index
        return link is None or bridge is None or link.master != bridge

    def address_event(self, event: AddressEvent) -> None:
        config = self.config
        if config is None or event.address.interface.ip != config.local:
            return
        if event.removed:
            if event.index == self.underlay:
                self.underlay = None
                self._work.underlay = True  # it may still be on another interface
                self._wake()
        else:
            self.underlay = event.index
        self._update_problem()

    def events_lost(self) -> None:
        """Link or address events were lost: find the interface holding vxlan.local
        again, and set the port's learning again (the VXLAN port may have left the bridge
        and joined it again in them, which resets it)."""
        if self.config is not None:
            self._work.underlay = True
            self._work.device = True
            self._learning_set = None
            self._wake()

    def _watches_fdb(self, index: int) -> bool:
        return self.device is not None and index == self.device.index

    def _fdb_event(self, event: FdbEvent) -> None:
        if self._held is not None:
            self._held.append(event)
            return
        if self._apply(event):
            self._notify()

    def _apply(self, event: FdbEvent, tell: bool = True) -> bool:
        """One FDB event into the picture; False when it was not about our device."""
        entry, device, config = event.entry, self.device, self.config
        if entry.dst is None or device is None or config is None or \
                entry.index != device.index:
            return False
        key = (entry.mac, entry.dst)
        was = key in self.fdb
        if event.removed:
            self.fdb.pop(key, None)
        else:
            self.fdb[key] = entry
        self._fdb_changed()
        if tell and entry.flood and was == event.removed:
            # A flood entry came or went: a peer came or went.
            self._tell_peers({entry.dst} if was else set(), set() if was else {entry.dst})
        return True

    def _fdb_changed(self) -> None:
        self._fdb_version += 1

    def _fdb_lost(self) -> None:
        self._work.fdb = True
        self._wake()

    def _flooded(self) -> set[IPAddress]:
        return {dst for (mac, dst) in self.fdb if mac == ZERO_MAC}

    def _tell_peers(self, before: set[IPAddress], after: set[IPAddress]) -> None:
        config = self.config
        if config is None or self.device is None or before == after:
            return
        for peer in sorted(before ^ after, key=_address_key):
            up = peer in after
            configured = peer in config.peers
            if up:
                how = "listed in vxlan.peers" if configured else \
                    "learned from BGP EVPN" if config.evpn else "added by another tool"
            elif peer in self._work.removing:
                self._work.removing.discard(peer)
                how = "no longer in vxlan.peers"
            elif config.evpn:
                how = "withdrawn by BGP EVPN"
            else:
                how = "its FDB entry was deleted by another process"
            if not config.evpn and up != configured:
                # The flood list is bridged's: a listed peer comes back, others go.
                how += "; putting it back" if configured else "; removing it"
                self._wake()
            self._peers.changed(self.device.name, peer, up, how)

    # --- the reconciler ----------------------------------------------------------------

    def _wake(self) -> None:
        self._trigger.wake()

    async def _reconcile_forever(self) -> None:
        while True:
            await self._trigger.next_pass()
            await self._reconcile_logged()

    async def _reconcile_logged(self) -> None:
        try:
            await self._reconcile_once()
        except KernelError as e:
            # Typically a device that vanished mid-way; its events say what next.
            log.warning("keeping the overlay failed: %s", e,
                        extra={"INTERFACE": self._name or "",
                               "BRIDGED_EVENT": "vxlan-failed"})
        except Exception:
            log.exception("keeping the overlay failed")
        self._update_problem()
        self._notify()

    async def _reconcile_once(self) -> None:
        config = self.config
        if config is None:
            self._device_problem = None
            self._monitor.stop()
            if self._name is not None:
                await self._remove_device(self._name, "[vxlan] is no longer configured")
                self._name = None
            return
        bridge = self._bridge.bridge
        if bridge is None:
            return  # the bridge manager makes it again; its news wakes us
        work = self._work
        if work.device:
            work.device = False
            self._bridge_seen = (bridge.index, bridge.mtu)
            await self._keep_device(config, bridge)
        device = self.device
        if device is None:
            return
        if work.underlay:
            work.underlay = False
            self.underlay = await self._netlink.address_owner(config.local)
        if work.fdb:
            work.fdb = False
            await self._dump_fdb(device)
        if not config.evpn:
            await self._keep_flood_list(config, device)

    async def _dump_fdb(self, device: Link) -> None:
        """Replace the picture of the FDB with a dump; every difference is told."""
        before = self._flooded()
        self._held = []
        try:
            entries = await self._netlink.fdb(device.index)
            # What the kernel queued while the dump ran may be older than the dump or
            # newer: each event is an entry's whole state, so replayed in order after
            # the dump, the last one about an entry is its truth.
            self._monitor.drain()
        finally:
            held, self._held = self._held, None
        self.fdb = {(e.mac, e.dst): e for e in entries if e.dst is not None}
        self._fdb_changed()
        for event in held:
            self._apply(event, tell=False)
        self._tell_peers(before, self._flooded())

    async def _keep_device(self, config: VxlanConfig, bridge: Link) -> None:
        name = config.device_name
        link = await self._netlink.link(name=name)
        if link is not None and not is_marked(link):
            self.device = None
            self.fdb.clear()
            self._fdb_changed()
            self._device_problem = (
                f"{name} exists and bridged did not make it (a {link.kind or 'plain'} "
                "device); bridged does not take over another tool's device: delete it "
                f"('ip link del {name}'), or give [vxlan] another vni")
            return
        if link is not None:
            info = await self._netlink.vxlan(link.index) if link.kind == "vxlan" else None
            why = _recreate_because(link, info, config) or self._work.recreate
            self._work.recreate = None
            if why is not None:
                log.warning("recreating vxlan device %s: %s", name, why,
                            extra={"INTERFACE": name, "BRIDGED_EVENT": "vxlan-recreated"})
                await self._delete(link)
                link = None
            elif info is not None and (info.local != config.local or info.learning):
                await self._netlink.set_vxlan(link.index, config.local, False)
                log.info("vxlan device %s: local address %s, learning off", name,
                         config.local, extra={"INTERFACE": name,
                                              "BRIDGED_EVENT": "vxlan-changed"})
        if link is None:
            try:
                link = await self._netlink.create_vxlan(VxlanSpec(
                    name=name, vni=config.vni, local=config.local, port=config.port,
                    learning=False, master=bridge.index, mtu=bridge.mtu, alias=VXLAN_MARK,
                    bridge_learning=not config.evpn))
            except KernelError as e:
                self.device = None
                self._device_problem = f"cannot create vxlan device {name}: {e}"
                return
            self._learning_set = (link.index, config.evpn)
            self._work.fdb = True
            log.info("vxlan device %s created on %s: VNI %d, local %s, port %d, %s", name,
                     bridge.name, config.vni, config.local, config.port, self._control_text(),
                     extra={"INTERFACE": name, "BRIDGED_EVENT": "vxlan-created",
                            "BRIDGED_VNI": str(config.vni)})
        else:
            if self.device is None or self.device.index != link.index:
                self._work.fdb = True  # adopted: what does its FDB hold?
            changes: dict[str, object] = {}
            if link.master != bridge.index:
                changes["master"] = bridge.index
            if link.mtu != bridge.mtu:
                changes["mtu"] = bridge.mtu
            if not link.up:
                changes["state"] = "up"
            if changes:
                await self._netlink.set_link(link.index, **changes)
                log.info("vxlan device %s: %s", name, ", ".join(
                    f"{key} {bridge.name if key == 'master' else value}"
                    for key, value in changes.items()),
                    extra={"INTERFACE": name, "BRIDGED_EVENT": "vxlan-kept"})
            if "master" in changes or self._learning_set != (link.index, config.evpn):
                # Under EVPN the bridge learns nothing on this port (FRR's zebra installs
                # the remote MACs, on the bridge too), as FRR's documentation has it.
                await self._netlink.set_port_learning(link.index, not config.evpn)
                self._learning_set = (link.index, config.evpn)
            if changes:
                link = await self._netlink.link(index=link.index)
        self._device_problem = None
        self.device = link

    async def _keep_flood_list(self, config: VxlanConfig, device: Link) -> None:
        """Static peers: one flood entry per peer, and none for anyone else."""
        present = self._flooded()
        wanted = set(config.peers)
        for peer in sorted(wanted - present, key=_address_key):
            await self._netlink.add_fdb(device.index, ZERO_MAC, peer)
        for stale in sorted(present - wanted, key=_address_key):
            self._work.removing.add(stale)
            await self._netlink.delete_fdb(device.index, ZERO_MAC, stale)

    async def _delete(self, link: Link) -> None:
        self._deleting = link.index
        if self.device is not None and self.device.index == link.index:
            self.device = None
        self.fdb.clear()
        self._fdb_changed()
        await self._netlink.delete_link(link.index)

    async def _remove_device(self, name: str, why: str) -> None:
        link = await self._netlink.link(name=name)
        if link is None or not is_marked(link):
            return
        await self._delete(link)
        log.info("vxlan device %s removed (%s)", name, why,
                 extra={"INTERFACE": name, "BRIDGED_EVENT": "vxlan-removed"})

    # --- state -------------------------------------------------------------------------

    def _current_problem(self) -> str | None:
        config, bridge = self.config, self._bridge.bridge
        if config is None or bridge is None:
            return None
        if self._device_problem is not None:
            return self._device_problem
        if self.device is None:
            return f"{config.device_name} is missing"
        if self.underlay is None:
            return (f"vxlan.local {config.local} is on no interface of this host: add it "
                    "to the interface that reaches the other hosts, or correct vxlan.local")
        underlay = self._links.get(self.underlay)
        if underlay is None:
            return None  # the link table has not heard of it yet; its event follows
        if underlay.index == bridge.index or underlay.master == bridge.index:
            return (f"vxlan.local {config.local} is on {underlay.name}, which is the bridge "
                    "or one of its ports: the overlay cannot carry the bridge's frames "
                    "inside the bridge; put the underlay address on another interface")
        room = underlay.mtu - config.overhead
        if room < bridge.mtu:
            return (f"the underlay {underlay.name} has MTU {underlay.mtu}: less the "
                    f"{config.overhead} bytes of VXLAN over IPv{config.local.version} that "
                    f"leaves {room}, below {bridge.name}'s MTU {bridge.mtu}, so full-size "
                    f"frames would be fragmented or lost between the hosts: set "
                    f"bridge.mtu = {room}, or raise {underlay.name}'s MTU to at least "
                    f"{bridge.mtu + config.overhead}")
        if not underlay.up or underlay.operstate in _DOWN:
            return f"the underlay {underlay.name} is down"
        return None

    def _update_problem(self) -> None:
        problem = self._current_problem()
        changed = problem != self.problem
        self.problem = problem
        name = self._name or ""
        if problem is not None and (problem != self._said or self._resay):
            log.error("overlay %s degraded: %s", name, problem,
                      extra={"INTERFACE": name, "BRIDGED_EVENT": "vxlan-degraded"})
        elif problem is None and self._said is not None:
            log.info("overlay %s works again", name,
                     extra={"INTERFACE": name, "BRIDGED_EVENT": "vxlan-ok"})
        self._said = problem
        self._resay = False
        if changed:
            self._notify()

    def _control_text(self) -> str:
        config = self.config
        if config is None:
            return ""
        if config.evpn:
            return "peers from BGP EVPN (FRR)"
        count = len(config.peers)
        return f"{count} static peer{'' if count == 1 else 's'}"

    def _notify(self) -> None:
        for listener in self.on_change:
            listener()


def _recreate_because(link: Link, info: VxlanInfo | None,
                      config: VxlanConfig) -> str | None:
    """Why a device of ours cannot be changed into the configured one in place (the
    kernel changes neither a VXLAN device's VNI nor its port, nor its address family)."""
    if info is None:
        return f"it is a {link.kind or 'plain'} device, not a VXLAN one"
    if info.vni != config.vni:
        return f"its VNI is {info.vni}, not {config.vni}"
    if info.port != config.port:
        return f"its port is {info.port}; vxlan.port is {config.port}"
    if info.local is not None and info.local.version != config.local.version:
        return f"its local address {info.local} is not of the family of {config.local}"
    return None
