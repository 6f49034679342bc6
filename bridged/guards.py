"""Tap guards: which taps are guarded, what they learned, what they dropped.

The kernel does the work: ``kernel/nft.py`` keeps one nftables table (family bridge)
whose rules drop, before the bridge learns or forwards anything, a guarded tap's
frames from any source MAC but its guest's, VLAN-tagged frames, ARP naming another
sender MAC, IPv6 router advertisements and redirects (and ICMPv4 redirects), and
DHCPv4/DHCPv6 server replies. No frame ever reaches Python.

This module decides and keeps track:
- a tap is guarded unless it is ``trusted`` or ``taps.guard`` is false; its guards are
  in the kernel before the tap is up (the lane that creates the tap adds them) and go
  only once the tap's link is gone;
- the table is the daemon's: on start, after events were lost, and whenever another
  program changed it (``nft flush ruleset``), it is rebuilt from what the daemon knows,
  atomically, keeping the MACs the kernel learned and the drop counters;
- the kernel reports a tap's first MAC and samples of dropped frames (rate-limited in
  the kernel) through nfnetlink_log; the journal gets one line per tap and reason per
  minute at most, and a summary when the tap goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridged import pacing
from bridged.kernel import nft
from bridged.kernel.netlink import GuardSpec, Netlink
from bridged.kernel.nfevents import LogSample, NetfilterMonitor

if TYPE_CHECKING:
    from bridged.taps import Tap

log = logging.getLogger(__name__)

# nfnetlink_log group the table's rules send their samples to ("bg").
LOG_GROUP = 0x6267
# At most one journal line per tap and reason within this many seconds.
LOG_EVERY_S = 60.0
REASON_TEXT = {
    1: "frames from a source MAC other than the guest's",
    2: "VLAN-tagged frames",
    3: "ARP naming another sender MAC",
    4: "router advertisements or redirects",
    5: "DHCPv4 server replies (UDP from port 67)",
    6: "DHCPv6 server replies (UDP from port 547)",
}


# reason -> (packets, bytes) a port's guards dropped, as nft.unguard_ports reads them.
Counters = dict[int, tuple[int, int]]


@dataclass(frozen=True)
class DropSummary:
    """What a tap's guards dropped in its lifetime, read as they were removed: said in
    the tap's removal line (one line for the tap and its guards)."""

    dropped: int
    text: str

    @classmethod
    def of(cls, counters: Counters) -> DropSummary:
        total = sum(packets for packets, _ in counters.values())
        if not total:
            return cls(0, "its guards dropped nothing")
        detail = ", ".join(f"{nft.REASONS[r]} {p}" for r, (p, _) in sorted(counters.items())
                           if p)
        return cls(total, f"its guards dropped {total} frames ({detail})")


class GuardsUnavailable(Exception):
    """The guards are asked for but libnftables cannot be used."""


class Guards:
    def __init__(self, netlink: Netlink, release_lane: Netlink, enabled: bool) -> None:
        # Guards go in on the lane that creates taps (before a tap is up), and so do
        # rebuilds. Removal, which reads the drop counters, runs on the lane that
        # deletes links, right after the deletes it follows. ``creating`` keeps
        # rebuilds apart.
        self._netlink = netlink
        self._release_lane = release_lane
        self.enabled = enabled
        self.available = False
        self._taps: dict[int, Tap] = {}  # index -> guarded tap whose link exists
        # The name each one's guards are under in the table (a rename moves them), and
        # how many taps hold each name: ``holds`` is asked for every name a new tap might
        # get, and must not cost a pass over a thousand taps.
        self._guarded_as: dict[int, str] = {}
        self._names: Counter[str] = Counter()
        self._in_release: set[str] = set()  # names whose guards are being removed
        self._monitor: NetfilterMonitor | None = None
        self._cond = asyncio.Condition()
        self._creating = 0
        self._rebuilding = False
        self._rebuild_wanted = False
        self._rebuilder: asyncio.Task[None] | None = None
        self._last_logged: dict[tuple[int, int], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Taps whose guards are to go, with the name the table has them under.
        self._releasing: list[tuple[Tap, str, asyncio.Future[Counters]]] = []
        self._renaming: dict[int, asyncio.Task[None]] = {}  # index -> its rename under way
        self._releaser: asyncio.Task[None] | None = None
        self.on_learned: list[Callable[[Tap], None]] = []

    # --- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        """Check libnftables, listen to netfilter, and make the table match the taps
        adopted so far (their guards stayed in the kernel while the daemon was down)."""
        try:
            await self._netlink.run_nft(lambda _ctx: None)
            self.available = True
        except nft.NftError as e:
            if self.enabled or self._taps:
                raise GuardsUnavailable(
                    f"taps.guard = true needs libnftables: {e}; install python3-nftables "
                    "or set taps.guard = false") from None
            return
        self._monitor = NetfilterMonitor(nft.TABLE, LOG_GROUP, self._foreign_change,
                                         self._sample, self._events_lost)
        try:
            self._monitor.start()
        except OSError as e:
            log.warning("cannot watch nf_tables for changes to the guards' table: %s", e,
                        extra={"BRIDGED_EVENT": "guard-watch-unavailable"})
            self._monitor = None
        await self._rebuild()

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.stop()
        if self._rebuilder is not None:
            self._rebuilder.cancel()

    async def reload(self, enabled: bool, taps: list[Tap]) -> list[Tap]:
        """``taps.guard`` changed: guard or unguard every tap that is not trusted.
        Returns the taps whose Guarded property changed."""
        if enabled and not self.available:
            raise GuardsUnavailable("taps.guard = true needs libnftables (python3-nftables)")
        self.enabled = enabled
        changed = []
        for tap in taps:
            want = enabled and not tap.trusted
            if tap.guarded != want:
                tap.guarded = want
                changed.append(tap)
                if want:
                    self._hold(tap)
                else:
                    self._let_go(tap.index)
        if self.available and (changed or not self._taps):
            await self._rebuild()
        return changed

    # --- taps --------------------------------------------------------------------------

    def spec(self, tap: Tap) -> GuardSpec | None:
        """What the lane that creates ``tap`` must put in place before it is up."""
        if not tap.guarded:
            return None
        return GuardSpec(LOG_GROUP, tap.mac or None)

    @contextlib.asynccontextmanager
    async def creating(self) -> AsyncIterator[None]:
        """Around a tap's creation and registration, and any change of one port: a
        rebuild waits for them (it writes the whole table from the taps it knows)."""
        async with self._cond:
            await self._cond.wait_for(lambda: not self._rebuilding)
            self._creating += 1
        try:
            yield
        finally:
            async with self._cond:
                self._creating -= 1
                self._cond.notify_all()

    def holds(self, name: str) -> bool:
        """Do guards keyed by ``name`` still exist (a tap of that name guarded, or its
        guards being removed)? Then the name must not go to a new tap yet: guards are
        keyed by name, and the old tap's removal would take the new tap's with them."""
        return name in self._in_release or name in self._names

    def track(self, tap: Tap) -> None:
        """``tap`` exists and is guarded (created so, or adopted)."""
        if tap.guarded:
            self._hold(tap)

    def _hold(self, tap: Tap, name: str | None = None) -> None:
        """``tap`` is guarded, under ``name`` (its own by default)."""
        self._let_go(tap.index)
        self._taps[tap.index] = tap
        self._guarded_as[tap.index] = name = name or tap.name
        self._names[name] += 1

    def _let_go(self, index: int) -> None:
        self._taps.pop(index, None)
        name = self._guarded_as.pop(index, None)
        if name is not None:
            self._names[name] -= 1
            if not self._names[name]:
                del self._names[name]

    async def release(self, tap: Tap) -> DropSummary | None:
        """The tap's link is gone: its guards go. Returns what they dropped in its
        lifetime, for the tap's removal line; None if it had no guards to remove, or their
        removal failed (logged here, and the table rebuilt: the tap is gone all the same,
        so its removal is not an error for whoever asked).

        Releases that arrive together (VMs stopped together, a batch of deletes done)
        go to the kernel together: one lane trip, one transaction."""
        if self._taps.get(tap.index) is not tap or not self.available:
            return None
        renaming = self._renaming.get(tap.index)
        if renaming is not None:
            # Its counters are being moved to its new name (on the other lane): read and
            # delete them once they are all there, or those moved after the read stay.
            await asyncio.wait([renaming])
            if self._taps.get(tap.index) is not tap:
                return None
        # A sample of the tap's first frame may still wait in our socket.
        if self._monitor is not None:
            self._monitor.drain()
        name = self._guarded_as.get(tap.index, tap.name)  # not new if a rename failed
        self._let_go(tap.index)
        self._in_release.add(name)
        for key in [k for k in self._last_logged if k[0] == tap.index]:
            del self._last_logged[key]
        done: asyncio.Future[Counters] = asyncio.get_running_loop().create_future()
        self._releasing.append((tap, name, done))
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.get_running_loop().create_task(self._release_waiting())
        try:
            counters = await done
        except Exception as e:  # nft refused, or the lane failed: the table is rebuilt
            log.warning("removing the guards of %s: %s; rebuilding the guards' table",
                        tap.name, e, extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                                            "BRIDGED_EVENT": "guard-rebuild"})
            return None
        return DropSummary.of(counters)

    async def _release_waiting(self) -> None:
        while self._releasing:
            batch, self._releasing = self._releasing, []
            ports = {name: tap.mac or None for tap, name, _done in batch}
            results: dict[str, dict[int, tuple[int, int]] | nft.NftError]
            try:
                async with self.creating():
                    results = await self._release_lane.run_nft(nft.unguard_ports,
                                                               list(ports.items()))
            except nft.NftError as e:
                results = {name: e for name in ports}
            except Exception as e:  # the lane itself failed: every waiter hears why
                for _tap, name, done in batch:
                    self._in_release.discard(name)
                    pacing.settle(done, e)
                self.rebuild_soon()  # what the table holds is unknown now
                continue
            for _tap, name, done in batch:
                self._in_release.discard(name)
                result = results.get(name, {})
                if isinstance(result, nft.NftError):
                    # The table does not hold what we think: write it again from what we
                    # know (the waiter says why).
                    self.rebuild_soon()
                # Each waiter logs its tap's removal and replies: a few a turn (pacing).
                pacing.settle(done, result)

    def release_soon(self, tap: Tap) -> None:
        pacing.spawn(self.release(tap), self._tasks)

    async def renamed(self, tap: Tap, old_name: str) -> None:
        """Someone renamed a guarded tap: its guards follow (they are keyed by name)."""
        if self._taps.get(tap.index) is not tap or not self.available:
            return
        task = asyncio.current_task()
        assert task is not None
        self._renaming[tap.index] = task  # the lane runs renames in order: the last counts
        new_name = tap.name
        try:
            async with self.creating():
                await self._netlink.run_nft(nft.rename_port, old_name, new_name,
                                            tap.mac or None)
            if self._taps.get(tap.index) is tap:
                self._hold(tap, new_name)  # its guards are under that name now
        except nft.NftError as e:
            log.warning("moving the guards of %s to its new name: %s; rebuilding the "
                        "guards' table", tap.name, e,
                        extra={"INTERFACE": tap.name, "BRIDGED_EVENT": "guard-rebuild"})
            self.rebuild_soon()
        finally:
            if self._renaming.get(tap.index) is task:
                del self._renaming[tap.index]

    # --- keeping the table -----------------------------------------------------------------

    def rebuild_soon(self) -> None:
        """Rebuild the table (once, however often asked while one is under way)."""
        self._rebuild_wanted = True
        if self._rebuilder is None or self._rebuilder.done():
            self._rebuilder = asyncio.get_running_loop().create_task(self._rebuild_while_wanted())

    async def _rebuild_while_wanted(self) -> None:
        while self._rebuild_wanted:
            self._rebuild_wanted = False
            try:
                await self._rebuild()
            except Exception:
                log.exception("rebuilding the guards' table failed",
                              extra={"BRIDGED_EVENT": "guard-rebuild-failed"})
                # Not left unguarded: try again, but do not spin.
                asyncio.get_running_loop().call_later(1.0, self.rebuild_soon)
                return

    async def _rebuild(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._rebuilding)
            self._rebuilding = True
            await self._cond.wait_for(lambda: self._creating == 0)
        try:
            by_name = {tap.name: tap for tap in self._taps.values()}
            ports = [nft.Port(name, tap.mac or None) for name, tap in by_name.items()]
            learned = await self._netlink.run_nft(nft.reconcile, LOG_GROUP, ports,
                                                  self.enabled)
            for name, written in by_name.items():  # the names the table is keyed by
                if self._taps.get(written.index) is written:
                    self._hold(written, name)
        finally:
            async with self._cond:
                self._rebuilding = False
                self._cond.notify_all()
        log.info("guards' table in place: %d guarded taps", len(ports),
                 extra={"BRIDGED_EVENT": "guards-ready"})
        for name, mac in learned.items():
            tap = by_name.get(name)
            if tap is not None and not tap.mac:
                self._learned(tap, mac)

    def _foreign_change(self) -> None:
        log.warning("another program changed the guards' nftables table (e.g. 'nft flush "
                    "ruleset'); putting it back", extra={"BRIDGED_EVENT": "guard-tampered"})
        self.rebuild_soon()

    def _events_lost(self) -> None:
        self.rebuild_soon()

    # --- what the kernel reports -------------------------------------------------------------

    def _sample(self, sample: LogSample) -> None:
        tap = self._taps.get(sample.index)
        if tap is None:
            return
        if sample.prefix == nft.LEARN_PREFIX:
            if sample.mac is None:
                return
            if not tap.mac:
                self._learned(tap, sample.mac)
            elif sample.mac != tap.mac:
                # Two first frames at the same instant on two queues: the kernel took
                # both. Keep the one we heard of first.
                pacing.spawn(self._forget_mac(tap, sample.mac), self._tasks)
            return
        if not sample.prefix.startswith(nft.DROP_PREFIX):
            return
        try:
            reason = int(sample.prefix[len(nft.DROP_PREFIX):])
        except ValueError:
            return
        now = time.monotonic()
        key = (tap.index, reason)
        last = self._last_logged.get(key)
        if last is not None and now - last < LOG_EVERY_S:
            return
        self._last_logged[key] = now
        if last is None:
            self._log_drop(tap, reason, sample.mac, None)
        else:
            pacing.spawn(self._log_drop_count(tap, reason, sample.mac), self._tasks)

    async def _log_drop_count(self, tap: Tap, reason: int, mac: str | None) -> None:
        dropped = await self._netlink.run_nft(nft.read_dropped, tap.name)
        self._log_drop(tap, reason, mac, dropped.get(reason, (0, 0))[0])

    @staticmethod
    def _log_drop(tap: Tap, reason: int, mac: str | None, count: int | None) -> None:
        what = REASON_TEXT.get(reason, f"frames (reason {reason})")
        source = f" from {mac}" if mac else ""
        if count is None:
            text = "first drop; more are counted, not logged one by one"
        else:
            text = f"{count} dropped so far"
        log.warning("tap %s%s: guards dropped %s%s (%s)", tap.name,
                    f" ({tap.label})" if tap.label else "", what, source, text,
                    extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                           "BRIDGED_UID": tap.owner_uid, "BRIDGED_LABEL": tap.label,
                           "BRIDGED_EVENT": "guard-drop",
                           "BRIDGED_GUARD_REASON": nft.REASONS.get(reason, str(reason)),
                           "BRIDGED_GUARD_MAC": mac or "",
                           "BRIDGED_GUARD_DROPPED": count if count is not None else 1})

    def _learned(self, tap: Tap, mac: str) -> None:
        tap.mac = mac
        log.info("tap %s: guest MAC %s learned; the tap sends only from it", tap.name, mac,
                 extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                        "BRIDGED_EVENT": "guard-learned", "BRIDGED_GUARD_MAC": mac})
        for listener in self.on_learned:
            listener(tap)

    async def _forget_mac(self, tap: Tap, mac: str) -> None:
        async with self.creating():
            await self._netlink.run_nft(nft.forget_mac, tap.name, mac)
        log.warning("tap %s: a second MAC %s slipped in with the first; removed", tap.name,
                    mac, extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                                "BRIDGED_EVENT": "guard-learned-twice"})

