"""The tap registry: names, owners, lifetimes, quotas, adoption after a restart.

Ownership lives in the kernel with the device, in its ifalias
(``bridged:uid=1000:pid=4242:start=…:p=1:…:tr=0:mac=525400123456:label=vm1``), so a
daemon killed with SIGKILL and started again knows every tap it made (and the MAC its
guards let it send from), frees those whose client is gone (comparing the process start
time, so a reused PID does not fool it), and never deletes a tap that a live VM still
holds.

What the registry believes about a tap's existence comes from the link table: a tap
whose link goes (its last fd closed, deleted by root) leaves the registry; a tap taken
off the bridge, or set down, by another tool is put back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import re
import secrets
import select
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridged import api, pacing
from bridged.auth import Authorizer, Caller
from bridged.bridge import BridgeManager
from bridged.config import TapsConfig
from bridged.errors import (
    AccessDenied,
    BridgeUnavailable,
    Failed,
    InvalidArgument,
    NameInUse,
    NoSuchTap,
    QuotaExceeded,
)
from bridged.guards import DropSummary, Guards
from bridged.kernel import tun
from bridged.kernel.linktable import LinkTable
from bridged.kernel.netlink import CreatedTap, KernelError, Link, Netlink, TapSpec
from bridged.kernel.nft import NftError

log = logging.getLogger(__name__)

ALIAS_PREFIX = "bridged:"
# dbus-daemon passes at most 16 fds in one message by default.
MAX_QUEUES = 16
# A label is text its user chose: shown in status and logs, kept in the ifalias (255
# bytes in all, the rest of which bridged needs). Printable UTF-8, nothing else.
MAX_LABEL_CHARS = 64
MAX_LABEL_BYTES = 96
# IPv4's minimum, and the most a tun/tap device takes (65535 less the Ethernet header).
TAP_MTU_MIN, TAP_MTU_MAX = 68, 65521
# The kernel's PID_MAX_LIMIT: no pid is larger.
PID_MAX = 4194304
# Tap numbers run 0..9999 and wrap (the prefix leaves room for four digits).
NAME_NUMBERS = 10000
# How far ahead the bridge's mark keeps the next number after a restart: it is written
# once per this many names, so restarted numbering never reuses a recent one.
CURSOR_BLOCK = 32
TAP_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# How long a tap that looks on its way out (see TapRegistry._dying) is given to go
# before it is put back up all the same: the kernel's unregister takes ~20 ms.
DYING_GRACE_S = 0.5


@dataclass
class Tap:
    name: str
    index: int
    owner_uid: int
    label: str = ""
    client_pid: int = 0  # 0: lingering, or bound to its fds only (OpenTap)
    client_start: int = 0  # the client's start time in clock ticks, against PID reuse
    persistent: bool = False
    queues: int = 1
    vnet_hdr: bool = True
    mtu: int = 0
    vlan: int = 0
    isolated: bool = False
    created_at_us: int = field(default_factory=lambda: time.time_ns() // 1000)
    trusted: bool = False  # root asked for no guards
    guarded: bool = False  # not trusted, and taps.guard is on
    mac: str = ""  # the guest MAC it may send from; "" until known

    def alias(self) -> str:
        return (f"{ALIAS_PREFIX}uid={self.owner_uid}:pid={self.client_pid}:"
                f"start={self.client_start}:p={int(self.persistent)}:q={self.queues}:"
                f"vh={int(self.vnet_hdr)}:vlan={self.vlan}:iso={int(self.isolated)}:"
                f"t={self.created_at_us}:tr={int(self.trusted)}:"
                f"mac={self.mac.replace(':', '')}:label={self.label}")


def tap_from_alias(link: Link) -> Tap | None:
    """Rebuild a Tap from the ifalias bridged wrote; None if it is not (readably) ours.

    Whatever the alias holds, this returns: an odd alias must never stop a start.
    """
    if not link.alias or not link.alias.startswith(ALIAS_PREFIX):
        return None
    head, _, label = link.alias[len(ALIAS_PREFIX):].partition(":label=")
    try:
        fields = dict(part.split("=", 1) for part in head.split(":"))
        tap = Tap(
            name=link.name, index=link.index, owner_uid=int(fields["uid"]),
            label=label if _label_ok(label) else "",
            client_pid=int(fields["pid"]), client_start=int(fields["start"]),
            persistent=fields["p"] == "1", queues=int(fields["q"]),
            vnet_hdr=fields["vh"] == "1", mtu=link.mtu, vlan=int(fields["vlan"]),
            isolated=fields["iso"] == "1", created_at_us=int(fields["t"]),
            # Taps from before the guards have neither: not trusted, MAC to be learned.
            trusted=fields.get("tr") == "1", mac=_mac_from_alias(fields.get("mac", "")),
        )
    except (KeyError, ValueError):
        return None
    if not (0 <= tap.owner_uid < 2**32 and 0 <= tap.client_pid <= PID_MAX
            and 1 <= tap.queues <= MAX_QUEUES and 0 <= tap.vlan <= 4094
            and 0 <= tap.created_at_us < 2**64 and tap.client_start >= 0):
        return None
    return tap


def _mac_from_alias(text: str) -> str:
    if len(text) != 12:
        return ""
    mac = ":".join(text[i:i + 2] for i in range(0, 12, 2)).lower()
    return mac if MAC_RE.fullmatch(mac) else ""


# --- request options -------------------------------------------------------------------


@dataclass(frozen=True)
class TapRequest:
    name: str | None = None
    label: str = ""
    queues: int = 1
    vnet_hdr: bool = True
    mtu: int | None = None
    vlan: int | None = None
    isolated: bool = False
    linger: bool = False
    pid: int | None = None
    mac: str | None = None
    trusted: bool = False


def _label_ok(label: str) -> bool:
    return (label.isprintable() and len(label) <= MAX_LABEL_CHARS
            and len(label.encode()) <= MAX_LABEL_BYTES)


def parse_options(options: dict[str, tuple[str, Any]], persistent: bool) -> TapRequest:
    """Check a{sv} options (key -> (signature, value)); unknown or mistyped keys fail."""
    values: dict[str, Any] = {}
    for key, (signature, value) in options.items():
        expected = api.TAP_OPTIONS.get(key)
        if expected is None:
            raise InvalidArgument(f"unknown option {key!r}; known: {', '.join(api.TAP_OPTIONS)}")
        if signature != expected:
            raise InvalidArgument(f"option {key!r} must have type '{expected}', "
                                  f"got '{signature}'")
        if key in api.CREATE_ONLY and not persistent:
            raise InvalidArgument(f"option {key!r} applies to CreateTap only: an OpenTap "
                                  "tap lives exactly as long as its file descriptors")
        values[key] = value
    request = TapRequest(**values)
    if not 1 <= request.queues <= MAX_QUEUES:
        raise InvalidArgument(f"queues must be between 1 and {MAX_QUEUES}")
    if request.mtu is not None and not TAP_MTU_MIN <= request.mtu <= TAP_MTU_MAX:
        raise InvalidArgument(f"mtu must be between {TAP_MTU_MIN} and {TAP_MTU_MAX} "
                              "(what a tap device takes)")
    if request.vlan is not None and not 1 <= request.vlan <= 4094:
        raise InvalidArgument("vlan must be between 1 and 4094")
    if not _label_ok(request.label):
        raise InvalidArgument(f"label must be at most {MAX_LABEL_CHARS} printable characters "
                              f"({MAX_LABEL_BYTES} bytes of UTF-8)")
    if request.pid is not None and not 1 <= request.pid <= PID_MAX:
        raise InvalidArgument(f"pid must be a process id (1 to {PID_MAX})")
    if request.linger and request.pid is not None:
        raise InvalidArgument("options 'linger' and 'pid' exclude each other")
    if request.mac is not None:
        mac = request.mac.lower()
        if not MAC_RE.fullmatch(mac):
            raise InvalidArgument(f"mac {request.mac!r} is not a MAC address "
                                  "(six hex bytes, e.g. 52:54:00:12:34:56)")
        if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
            raise InvalidArgument(f"mac {mac} is not a unicast address: a guest sends "
                                  "from its own unicast MAC")
        request = dataclasses.replace(request, mac=mac)
    return request


def check_requested_name(name: str, prefix: str) -> None:
    if not name.startswith(prefix):
        raise InvalidArgument(f"tap names must start with {prefix!r}: bridged only touches "
                              f"interfaces it creates")
    if not TAP_NAME_RE.fullmatch(name):
        raise InvalidArgument(f"{name!r} is not a valid tap name: at most 15 characters of "
                              "A-Z, a-z, 0-9, '_', '.', '-'")


def random_tap_mac() -> str:
    # fe: is locally administered and numerically high: the bridge, which takes the
    # lowest port MAC when none is set, never adopts a tap's address.
    return "fe:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Reaper:
    """Deletes links on a lane of its own, all that are waiting in one go.

    A delete blocks ~16 ms inside the kernel whatever the number of links (it waits for
    the network stack to let go of them), so sixty-four releases at once cost one wait,
    not sixty-four in a row.
    """

    def __init__(self, netlink: Netlink) -> None:
        self._netlink = netlink
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def delete(self, index: int) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((index, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        await future

    async def close(self, fds: list[int]) -> None:
        """Close fds that may be a tap's last: the kernel then unregisters it inside
        close(), ~16 ms, which must not happen on the event loop."""
        await self._netlink.run(_close_fds, fds)

    async def _work(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                errors = await self._netlink.delete_links([index for index, _ in batch])
            except Exception as e:  # the lane itself failed: every waiter hears why
                for _, future in batch:
                    pacing.settle(future, e)
                continue
            # The waiters wake a few a turn (see pacing): each logs, frees its guards and
            # replies, and sixty-four of them at once were one long turn.
            for (index, future), error in zip(batch, errors, strict=True):
                pacing.settle(future, None if error is None
                              else KernelError(error, f"delete link {index}"))


def _close_fds(_sock: object, fds: list[int]) -> None:
    tun.close_all(fds)


class TapRegistry:
    def __init__(self, config: TapsConfig, bridge: BridgeManager, authorizer: Authorizer,
                 netlink: Netlink, reaper: Netlink, links: LinkTable, guards: Guards) -> None:
        self.config = config
        self._guards = guards
        guards.on_learned.append(self._mac_learned)
        self._bridge = bridge
        self._auth = authorizer
        self._netlink = netlink
        self._links = links
        # Deleting a tap blocks in the kernel: a lane of its own, so creates and every
        # other request go on meanwhile.
        self._reaper = Reaper(reaper)
        self.taps: dict[str, Tap] = {}
        self._by_index: dict[int, Tap] = {}
        self._per_uid: Counter[int] = Counter()  # registered taps by owner, for quotas
        self._reserved: dict[str, int] = {}  # names being created -> owner uid
        # Links removed while creations were under way (their removal may be the news of
        # a tap not registered yet).
        self._gone_while_creating: set[int] = set()
        self._pidfds: dict[int, int] = {}  # tap index -> pidfd of its client
        self._cursor = 0  # the next tap number to try (round-robin)
        self._saved_cursor: int | None = None  # what the bridge's mark says
        self._to_attach: set[int] = set()
        self._attach_wakeup = asyncio.Event()
        self._attacher: asyncio.Task[None] | None = None
        self.on_added: list[Callable[[Tap], None]] = []
        self.on_removed: list[Callable[[Tap], None]] = []
        self.on_changed: list[Callable[[Tap], None]] = []  # a property of a tap changed
        self._tasks: set[asyncio.Task[None]] = set()
        bridge.on_bridge_created.append(self._bridge_recreated)

    # --- requests ----------------------------------------------------------------------

    async def open(self, caller: Caller, request: TapRequest) -> tuple[Tap, list[int]]:
        """OpenTap: a tap that lives as long as the returned fds."""
        await self._auth.check_may_create(caller)
        self._check_trusted(caller, request)
        return await self._create(caller, request, persistent=False, client_pid=0)

    async def create(self, caller: Caller, request: TapRequest) -> Tap:
        """CreateTap: a persistent tap owned by the caller, bound to a process."""
        await self._auth.check_may_create(caller)
        self._check_trusted(caller, request)
        pid = 0
        if not request.linger:
            pid = request.pid if request.pid is not None else caller.pid
            if pid <= 0:
                raise InvalidArgument("cannot tell the calling process; pass option 'pid' "
                                      "or 'linger'")
            if request.pid is not None and caller.uid != 0 and process_uid(pid) != caller.uid:
                raise InvalidArgument(f"process {pid} does not exist or is not yours")
        tap, _fds = await self._create(caller, request, persistent=True, client_pid=pid)
        return tap

    async def release(self, caller: Caller, name: str) -> None:
        tap = self.taps.get(name)
        if tap is None:
            raise NoSuchTap(f"no tap {name!r} is managed by bridged")
        self._auth.check_may_change(caller, tap.owner_uid, name)
        await self._delete(tap, f"released by uid {caller.uid}")

    @staticmethod
    def _check_trusted(caller: Caller, request: TapRequest) -> None:
        if request.trusted and caller.uid != 0:
            raise AccessDenied(f"user {caller.user} may not ask for a trusted tap: without "
                               "guards a VM can send as any host, router or DHCP server on "
                               "the LAN, so only root may ask for one (omit 'trusted')")

    # --- creation ----------------------------------------------------------------------

    async def _create(self, caller: Caller, request: TapRequest, persistent: bool,
                      client_pid: int) -> tuple[Tap, list[int]]:
        bridge = self._bridge.bridge
        if bridge is None:
            raise BridgeUnavailable(f"bridge {self._bridge.config.name} is not up; "
                                    "see 'journalctl -u bridged'")
        self._check_quota(caller.uid)
        if request.vlan is not None and not await self._netlink.bridge_vlan_filtering(
                bridge.index):
            raise InvalidArgument(f"option 'vlan' needs VLAN filtering on {bridge.name} "
                                  f"(ip link set {bridge.name} type bridge vlan_filtering 1)")
        name, save_cursor = self._reserve_name(request.name, caller.uid)
        pidfd = -1
        try:
            if save_cursor is not None:
                await self._bridge.save_tap_cursor(save_cursor)
            client_start = 0
            if client_pid:
                pidfd, client_start = self._open_pidfd(client_pid)
            tap = Tap(name=name, index=0, owner_uid=caller.uid, label=request.label,
                      client_pid=client_pid, client_start=client_start,
                      persistent=persistent, queues=request.queues,
                      vnet_hdr=request.vnet_hdr, mtu=request.mtu or 0,
                      vlan=request.vlan or 0, isolated=request.isolated,
                      trusted=request.trusted,
                      guarded=self._guards.enabled and not request.trusted,
                      mac=request.mac or "")
            spec = TapSpec(name=name, master=bridge.index, mac=random_tap_mac(),
                           alias=tap.alias(), queues=request.queues,
                           vnet_hdr=request.vnet_hdr,
                           persistent_owner=caller.uid if persistent else None,
                           mtu=request.mtu or bridge.mtu, vlan=request.vlan,
                           isolated=request.isolated, guard=self._guards.spec(tap))
            # The guards' table is rebuilt only between creations: this one's guards
            # must be in what a rebuild writes.
            async with self._guards.creating():
                created = await self._create_link(spec, caller)
                fds = created.fds
                self._reserved.pop(name, None)
                gone = self._gone_while_creating
                if not self._reserved:
                    self._gone_while_creating = set()
                tap.index = created.index
                tap.mtu = created.mtu
                if created.index in gone:
                    # Deleted by someone in the instant between its creation and now: its
                    # removal came before it could be registered, so it must not be
                    # registered at all (its guards go with it).
                    tun.close_all(fds)
                    self._guards.track(tap)
                    self._guards.release_soon(tap)
                    raise Failed(f"{name} was deleted by another process as it was created")
                self._register(tap, pidfd)
        except BaseException:
            if pidfd >= 0:
                os.close(pidfd)
            raise
        finally:
            self._reserved.pop(name, None)
        guards = ("guarded, guest MAC " + (tap.mac or "to be learned")) if tap.guarded else \
            "trusted: no guards" if tap.trusted else "no guards (taps.guard = false)"
        log.info("tap %s created for uid %d%s; %s", name, caller.uid,
                 f" ({request.label})" if request.label else "", guards,
                 extra={"INTERFACE": name, "BRIDGED_TAP": name, "BRIDGED_UID": caller.uid,
                        "BRIDGED_PID": caller.pid, "BRIDGED_LABEL": request.label,
                        "BRIDGED_GUARDED": int(tap.guarded), "BRIDGED_GUARD_MAC": tap.mac,
                        "BRIDGED_EVENT": "tap-created" if persistent else "tap-opened"})
        return tap, fds

    async def _create_link(self, spec: TapSpec, caller: Caller) -> CreatedTap:
        try:
            return await self._netlink.create_tap(spec)
        except KernelError as e:
            if e.errno in (errno.EEXIST, errno.EBUSY):
                raise NameInUse(f"{spec.name} already exists") from None
            log.error("creating tap %s failed: %s", spec.name, e,
                      extra={"BRIDGED_TAP": spec.name, "BRIDGED_UID": caller.uid})
            raise Failed(f"the kernel refused to create {spec.name}: "
                         f"{os.strerror(e.errno)}") from None
        except NftError as e:
            log.error("guarding tap %s failed: %s", spec.name, e,
                      extra={"BRIDGED_TAP": spec.name, "BRIDGED_UID": caller.uid,
                             "BRIDGED_EVENT": "guard-failed"})
            raise Failed(f"could not put the guards on {spec.name}; see "
                         "'journalctl -u bridged'") from None

    def _check_quota(self, uid: int) -> None:
        in_flight = list(self._reserved.values())
        total = len(self.taps) + len(in_flight)
        if total >= self.config.max_total:
            raise QuotaExceeded(f"bridged already manages {total} taps "
                                f"(taps.max_total = {self.config.max_total})")
        if uid == 0:
            return
        mine = self.count_for(uid) + in_flight.count(uid)
        if mine >= self.config.max_per_user:
            raise QuotaExceeded(f"uid {uid} already has {mine} taps "
                                f"(taps.max_per_user = {self.config.max_per_user}); "
                                "free one with 'bridgectl release TAP'")

    def _taken(self, name: str) -> bool:
        return self._links.by_name(name) is not None or name in self._reserved or \
            name in self.taps or self._guards.holds(name)

    def _reserve_name(self, requested: str | None, uid: int) -> tuple[str, int | None]:
        """A name for a new tap, and where the bridge's mark must move first (or None).

        Numbers go round-robin from where the last one was handed out, so a name that
        was just freed is not handed out again soon: a client that retries
        ReleaseTap(name) after a lost reply must not hit somebody's new tap.
        """
        if requested is not None:
            check_requested_name(requested, self.config.prefix)
            if self._taken(requested):
                raise NameInUse(f"{requested} already exists; pick another name or omit "
                                "'name' to get a free one")
            self._reserved[requested] = uid
            return requested, None
        for step in range(NAME_NUMBERS):
            number = (self._cursor + step) % NAME_NUMBERS
            name = f"{self.config.prefix}{number}"
            if not self._taken(name):
                break
        else:
            raise QuotaExceeded(f"no free tap name {self.config.prefix}0.."
                                f"{self.config.prefix}{NAME_NUMBERS - 1}")
        self._cursor = (number + 1) % NAME_NUMBERS
        self._reserved[name] = uid
        save = None
        ahead = None if self._saved_cursor is None else \
            (self._saved_cursor - number) % NAME_NUMBERS
        if ahead is None or ahead == 0 or ahead > CURSOR_BLOCK:
            save = self._saved_cursor = (number + CURSOR_BLOCK) % NAME_NUMBERS
        return name, save

    def _open_pidfd(self, pid: int) -> tuple[int, int]:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise InvalidArgument(f"process {pid} has already exited") from None
        except OSError as e:
            raise InvalidArgument(f"cannot watch process {pid}: {e.strerror}") from None
        start = process_start_time(pid)
        if start is None:
            os.close(pidfd)
            raise InvalidArgument(f"process {pid} has already exited")
        return pidfd, start

    # --- registry ----------------------------------------------------------------------

    def _register(self, tap: Tap, pidfd: int) -> None:
        self.taps[tap.name] = tap
        replaced = self._by_index.get(tap.index)
        if replaced is not None:
            self._per_uid[replaced.owner_uid] -= 1
        self._by_index[tap.index] = tap
        self._per_uid[tap.owner_uid] += 1
        self._guards.track(tap)
        if pidfd >= 0:
            self._pidfds[tap.index] = pidfd
            asyncio.get_running_loop().add_reader(pidfd, self._client_exited, tap.index)
        for listener in self.on_added:
            listener(tap)

    def _forget(self, tap: Tap) -> bool:
        """Take ``tap`` out of the registry; False if it was not (or no longer) in it."""
        if self._by_index.get(tap.index) is not tap:
            return False
        del self._by_index[tap.index]
        self._per_uid[tap.owner_uid] -= 1
        if self.taps.get(tap.name) is tap:
            del self.taps[tap.name]
        self._to_attach.discard(tap.index)
        pidfd = self._pidfds.pop(tap.index, None)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)
        for listener in self.on_removed:
            listener(tap)
        return True

    def _client_exited(self, index: int) -> None:
        tap = self._by_index.get(index)
        pidfd = self._pidfds.get(index)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
        if tap is not None:
            pacing.spawn(self._delete(tap, f"client process {tap.client_pid} exited"),
                         self._tasks)

    async def _delete(self, tap: Tap, why: str) -> None:
        if not self._forget(tap):
            return
        await self._remove_from_kernel(tap, why)

    async def _remove_from_kernel(self, tap: Tap, why: str) -> None:
        try:
            await self._reaper.delete(tap.index)
        except KernelError as e:
            if e.errno != errno.ENODEV:
                # Still there: so are its guards.
                log.error("deleting tap %s failed: %s", tap.name, e,
                          extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name})
                return
        await self._removed(tap, why)

    def link_changed(self, old: Link | None, new: Link | None) -> None:
        """The link table's news about our taps: gone, renamed, taken off the bridge."""
        if new is None:
            assert old is not None
            if self._reserved:
                self._gone_while_creating.add(old.index)
            tap = self._by_index.get(old.index)
            if tap is not None and self._forget(tap):
                pacing.spawn(self._removed(tap, "deleted outside bridged" if tap.persistent
                                           else "its last file descriptor was closed"),
                             self._tasks)
            return
        tap = self._by_index.get(new.index)
        if tap is None:
            return
        if new.name != tap.name:
            # Renamed by someone: the registry follows the kernel's name.
            log.warning("tap %s was renamed to %s by another process", tap.name, new.name,
                        extra={"INTERFACE": new.name, "BRIDGED_TAP": new.name,
                               "BRIDGED_EVENT": "tap-renamed"})
            self._forget_keep_pidfd(tap)
            old_name, tap.name = tap.name, new.name
            self._register_again(tap)
            pacing.spawn(self._guards.renamed(tap, old_name), self._tasks)
        bridge = self._bridge.index
        if bridge is None or (new.master == bridge and new.up):
            return
        if old is not None and old.master == bridge and new.master != bridge:
            log.warning("tap %s was taken off %s by another process; putting it back",
                        tap.name, self._bridge.config.name,
                        extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                               "BRIDGED_EVENT": "tap-taken-off"})
        if self._dying(tap, new, bridge):
            asyncio.get_running_loop().call_later(DYING_GRACE_S, self._attach_soon,
                                                  tap.index)
        else:
            self._attach_soon(tap.index)

    @staticmethod
    def _dying(tap: Tap, link: Link, bridge: int) -> bool:
        """Set down on its way out, most likely, not by someone: the kernel closes a link
        it is unregistering (RTM_NEWLINK: down, still on the bridge) some milliseconds
        before it says it is gone (RTM_DELLINK), and a tap that no one keeps (not
        persistent) loses its carrier just before, when its last fd closes. Putting it
        back up at once would only queue a request on the lane that fails with ENODEV
        once the kernel lets go of the RTNL lock: one per tap freed, in the way of every
        creation. So such a tap is looked at again after DYING_GRACE_S, gone by then
        unless it was not dying after all (its client can turn its carrier off itself:
        TUNSETCARRIER needs no privilege). A tap we delete ourselves has left the
        registry already."""
        return not tap.persistent and not link.up and link.master == bridge and \
            link.carrier is False

    async def _removed(self, tap: Tap, why: str) -> None:
        """Its link is gone: its guards go, then its one journal line."""
        _log_removed(tap, why, await self._guards.release(tap))

    def _forget_keep_pidfd(self, tap: Tap) -> None:
        if self.taps.get(tap.name) is tap:
            del self.taps[tap.name]
        for listener in self.on_removed:
            listener(tap)

    def _register_again(self, tap: Tap) -> None:
        self.taps[tap.name] = tap
        for listener in self.on_added:
            listener(tap)

    # --- keeping taps on the bridge ---------------------------------------------------------

    def start(self) -> None:
        self._attacher = asyncio.get_running_loop().create_task(self._attach_forever())

    async def stop(self) -> None:
        if self._attacher is not None:
            self._attacher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._attacher

    def _attach_soon(self, index: int) -> None:
        self._to_attach.add(index)
        self._attach_wakeup.set()

    async def _attach_forever(self) -> None:
        while True:
            await self._attach_wakeup.wait()
            self._attach_wakeup.clear()
            while self._to_attach:
                index = self._to_attach.pop()
                try:
                    await self._attach(index)
                except Exception:
                    log.exception("putting tap %d back on the bridge failed", index)

    async def _attach(self, index: int) -> None:
        tap, link, bridge = self._by_index.get(index), self._links.get(index), \
            self._bridge.bridge
        if tap is None or link is None or bridge is None:
            return
        joining = link.master != bridge.index or not link.up
        # A tap with port settings on the bridge may have left and joined again before we
        # looked (or while events were lost, or no daemon ran): joining again does not
        # bring them back, so they are set again.
        if not joining and not (tap.isolated or tap.vlan):
            return
        try:
            await self._netlink.attach_tap(index, bridge.index, tap.isolated, tap.vlan,
                                           joining)
        except KernelError as e:
            if e.errno != errno.ENODEV:  # gone meanwhile: its removal says so
                log.error("cannot put tap %s back on %s: %s", tap.name, bridge.name, e,
                          extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                                 "BRIDGED_EVENT": "tap-attach-failed"})
            return
        if joining:
            log.info("tap %s is on %s again", tap.name, bridge.name,
                     extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                            "BRIDGED_EVENT": "tap-reattached"})
        else:
            log.debug("tap %s: its port settings set again", tap.name,
                      extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name})

    def events_lost(self) -> None:
        """Link events were lost: a tap with port settings may have left the bridge and
        joined it again in them (the resync sees it on the bridge, as before, without its
        settings): they are set again."""
        for tap in self._by_index.values():
            if tap.isolated or tap.vlan:
                self._attach_soon(tap.index)

    def _bridge_recreated(self, bridge: Link) -> None:
        for index in self._by_index:
            self._attach_soon(index)

    # --- restart -----------------------------------------------------------------------------

    def adopt(self) -> None:
        """After a restart: take back our taps, free those whose client is gone.

        Synchronous on purpose: the link table cannot change while this runs, so every
        tap it registers exists, and every removal after it is heard.
        """
        numbers: list[tuple[int, int]] = []
        for link in self._links:
            if link.kind != "tun" or not (link.alias or "").startswith(ALIAS_PREFIX):
                continue
            tap = tap_from_alias(link)
            if tap is None:
                log.warning("%s has a bridged ifalias that cannot be read (%r); leaving it "
                            "alone", link.name, link.alias,
                            extra={"INTERFACE": link.name, "BRIDGED_EVENT": "tap-unreadable"})
                continue
            tap.guarded = self._guards.enabled and not tap.trusted
            # Its guards stayed in the kernel while we were away; until it is gone,
            # they stay, also for a tap freed below.
            self._guards.track(tap)
            number = link.name[len(self.config.prefix):]
            if link.name.startswith(self.config.prefix) and number.isdigit():
                numbers.append((tap.created_at_us, int(number)))
            if tap.persistent and tap.client_pid:
                pidfd = self._live_pidfd(tap)
                if pidfd < 0:
                    # On the reaper lane, not awaited: a thousand dead clients must not
                    # hold READY up.
                    pacing.spawn(self._remove_from_kernel(
                        tap, f"client process {tap.client_pid} is gone"), self._tasks)
                    continue
                self._register(tap, pidfd)
            else:
                self._register(tap, -1)
            bridge = self._bridge.index
            # Off the bridge, down, or with port settings that might have gone while we
            # were away (a port that left and joined again lost them): attached again.
            if bridge is not None and (link.master != bridge or not link.up or
                                       tap.isolated or tap.vlan):
                self._attach_soon(tap.index)
            log.info("tap %s adopted (uid %d)", tap.name, tap.owner_uid,
                     extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                            "BRIDGED_UID": tap.owner_uid, "BRIDGED_EVENT": "tap-adopted"})
        saved = self._bridge.saved_tap_cursor()
        if saved is not None and 0 <= saved < NAME_NUMBERS:
            self._cursor = self._saved_cursor = saved
        elif numbers:
            self._cursor = (max(numbers)[1] + 1) % NAME_NUMBERS

    @staticmethod
    def _live_pidfd(tap: Tap) -> int:
        """A pidfd on the tap's client if it is the same, live process; else -1."""
        if process_start_time(tap.client_pid) != tap.client_start:
            return -1
        try:
            pidfd = os.pidfd_open(tap.client_pid)
        except OSError:
            return -1
        # Re-check: the process may have exited between the two looks, or be a zombie
        # not yet reaped (its pidfd is readable at once).
        if select.select([pidfd], [], [], 0)[0] or \
                process_start_time(tap.client_pid) != tap.client_start:
            os.close(pidfd)
            return -1
        return pidfd

    def close_fds(self, fds: list[int]) -> None:
        """Our copies of a tap's fds that no reply carried out: they are the tap's last,
        closed on the reaper lane, not here (it blocks while the kernel unregisters the
        tap). Those a reply carried close as it is sent (bus.compat.hand_over)."""
        if fds:
            pacing.spawn(self._reaper.close(list(fds)), self._tasks)

    def owns(self, link: Link) -> bool:
        """Is ``link`` one of bridged's taps (registered, or being created)?"""
        return link.index in self._by_index or link.name in self._reserved

    def _mac_learned(self, tap: Tap) -> None:
        """The kernel learned the guest's MAC: written into the ifalias, so a restart
        after a flushed ruleset still knows it."""
        if self._by_index.get(tap.index) is not tap:
            return
        for listener in self.on_changed:
            listener(tap)
        pacing.spawn(self._save_alias(tap), self._tasks)

    async def _save_alias(self, tap: Tap) -> None:
        try:
            await self._netlink.set_link(tap.index, ifalias=tap.alias())
        except KernelError as e:
            if e.errno != errno.ENODEV:
                log.error("cannot record %s's MAC in its ifalias: %s", tap.name, e,
                          extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name})

    def count_for(self, uid: int) -> int:
        return self._per_uid[uid]


def _log_removed(tap: Tap, why: str, guards: DropSummary | None) -> None:
    fields: dict[str, object] = {"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                                 "BRIDGED_UID": tap.owner_uid, "BRIDGED_EVENT": "tap-removed"}
    if guards is None:
        log.info("tap %s removed: %s", tap.name, why, extra=fields)
        return
    fields["BRIDGED_GUARD_DROPPED"] = guards.dropped
    log.info("tap %s removed: %s; %s", tap.name, why, guards.text, extra=fields)
