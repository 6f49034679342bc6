"""The tap registry: names, owners, lifetimes, quotas, adoption after a restart.

Ownership lives in the kernel with the device, in its ifalias
(``bridged:uid=1000:pid=4242:start=…:p=1:q=1:vh=1:label=vm1``), so a daemon killed
with SIGKILL and started again knows every tap it made, frees those whose client is
gone (comparing the process start time, so a reused PID does not fool it), and never
deletes a tap that a live VM still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import select
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from bridged.auth import Authorizer, Caller
from bridged.bridge import BridgeManager
from bridged.config import IFNAME_RE, TapsConfig
from bridged.errors import (
    BridgeUnavailable,
    Failed,
    InvalidArgument,
    NameInUse,
    NoSuchTap,
    QuotaExceeded,
)
from bridged.kernel.events import LinkEvent
from bridged.kernel.netlink import AF_BRIDGE, KernelError, Link, Netlink, TapSpec

log = logging.getLogger(__name__)

ALIAS_PREFIX = "bridged:"
# dbus-daemon passes at most 16 fds in one message by default.
MAX_QUEUES = 16
MAX_LABEL = 64


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

    def alias(self) -> str:
        return (f"{ALIAS_PREFIX}uid={self.owner_uid}:pid={self.client_pid}:"
                f"start={self.client_start}:p={int(self.persistent)}:q={self.queues}:"
                f"vh={int(self.vnet_hdr)}:vlan={self.vlan}:iso={int(self.isolated)}:"
                f"t={self.created_at_us}:label={self.label}")


def tap_from_alias(link: Link) -> Tap | None:
    """Rebuild a Tap from the ifalias bridged wrote; None if it is not ours."""
    if not link.alias or not link.alias.startswith(ALIAS_PREFIX):
        return None
    head, _, label = link.alias[len(ALIAS_PREFIX):].partition(":label=")
    try:
        fields = dict(part.split("=", 1) for part in head.split(":"))
        return Tap(
            name=link.name, index=link.index, owner_uid=int(fields["uid"]), label=label,
            client_pid=int(fields["pid"]), client_start=int(fields["start"]),
            persistent=fields["p"] == "1", queues=int(fields["q"]),
            vnet_hdr=fields["vh"] == "1", mtu=link.mtu, vlan=int(fields["vlan"]),
            isolated=fields["iso"] == "1", created_at_us=int(fields["t"]),
        )
    except (KeyError, ValueError):
        return None


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


# option -> (D-Bus signature, TapRequest field)
OPTION_TYPES = {
    "name": "s", "label": "s", "queues": "u", "vnet_hdr": "b", "mtu": "u", "vlan": "q",
    "isolated": "b", "linger": "b", "pid": "u",
}
CREATE_ONLY = ("linger", "pid")


def parse_options(options: dict[str, tuple[str, Any]], persistent: bool) -> TapRequest:
    """Check a{sv} options (key -> (signature, value)); unknown or mistyped keys fail."""
    values: dict[str, Any] = {}
    for key, (signature, value) in options.items():
        expected = OPTION_TYPES.get(key)
        if expected is None:
            raise InvalidArgument(f"unknown option {key!r}; known: {', '.join(OPTION_TYPES)}")
        if signature != expected:
            raise InvalidArgument(f"option {key!r} must have type '{expected}', "
                                  f"got '{signature}'")
        if key in CREATE_ONLY and not persistent:
            raise InvalidArgument(f"option {key!r} applies to CreateTap only: an OpenTap "
                                  "tap lives exactly as long as its file descriptors")
        values[key] = value
    request = TapRequest(**values)
    if not 1 <= request.queues <= MAX_QUEUES:
        raise InvalidArgument(f"queues must be between 1 and {MAX_QUEUES}")
    if request.mtu is not None and not 68 <= request.mtu <= 65535:
        raise InvalidArgument("mtu must be between 68 and 65535")
    if request.vlan is not None and not 1 <= request.vlan <= 4094:
        raise InvalidArgument("vlan must be between 1 and 4094")
    if len(request.label) > MAX_LABEL or not request.label.isprintable():
        raise InvalidArgument(f"label must be at most {MAX_LABEL} printable characters")
    if request.linger and request.pid is not None:
        raise InvalidArgument("options 'linger' and 'pid' exclude each other")
    return request


def check_requested_name(name: str, prefix: str) -> None:
    if not name.startswith(prefix):
        raise InvalidArgument(f"tap names must start with {prefix!r}: bridged only touches "
                              f"interfaces it creates")
    if not IFNAME_RE.match(name) or len(name.encode()) > 15:
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
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def process_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class TapRegistry:
    def __init__(self, config: TapsConfig, bridge: BridgeManager, authorizer: Authorizer,
                 netlink: Netlink, reaper: Netlink) -> None:
        self.config = config
        self._bridge = bridge
        self._auth = authorizer
        self._netlink = netlink
        # Deleting a tap blocks ~16 ms in the kernel: a lane of its own, so creates and
        # every other request go on meanwhile.
        self._reaper = reaper
        self.taps: dict[str, Tap] = {}
        self._reserved: dict[str, int] = {}  # names being created -> owner uid
        self._pidfds: dict[str, int] = {}
        self._free_hint = 0  # no tap number below this one is free
        self.on_added: list[Callable[[Tap], None]] = []
        self.on_removed: list[Callable[[Tap], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        bridge.on_bridge_created.append(self._bridge_recreated)

    # --- requests ----------------------------------------------------------------------

    async def open(self, caller: Caller, request: TapRequest) -> tuple[Tap, list[int]]:
        """OpenTap: a tap that lives as long as the returned fds."""
        await self._auth.check_may_create(caller)
        return await self._create(caller, request, persistent=False, client_pid=0)

    async def create(self, caller: Caller, request: TapRequest) -> Tap:
        """CreateTap: a persistent tap owned by the caller, bound to a process."""
        await self._auth.check_may_create(caller)
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
        name = self._reserve_name(request.name, caller.uid)
        pidfd = -1
        try:
            client_start = 0
            if client_pid:
                pidfd, client_start = self._open_pidfd(client_pid)
            tap = Tap(name=name, index=0, owner_uid=caller.uid, label=request.label,
                      client_pid=client_pid, client_start=client_start,
                      persistent=persistent, queues=request.queues,
                      vnet_hdr=request.vnet_hdr, mtu=request.mtu or 0,
                      vlan=request.vlan or 0, isolated=request.isolated)
            spec = TapSpec(name=name, master=bridge.index, mac=random_tap_mac(),
                           alias=tap.alias(), queues=request.queues,
                           vnet_hdr=request.vnet_hdr,
                           persistent_owner=caller.uid if persistent else None,
                           mtu=request.mtu or self._bridge.config.mtu, vlan=request.vlan,
                           isolated=request.isolated)
            try:
                link, fds = await self._netlink.create_tap(spec)
            except KernelError as e:
                if e.errno == errno.EEXIST or e.errno == errno.EBUSY:
                    raise NameInUse(f"{name} already exists") from None
                log.error("creating tap %s failed: %s", name, e,
                          extra={"BRIDGED_TAP": name, "BRIDGED_UID": caller.uid})
                raise Failed(f"the kernel refused to create {name}: "
                             f"{os.strerror(e.errno)}") from None
        except BaseException:
            if pidfd >= 0:
                os.close(pidfd)
            self._number_free(name)
            raise
        finally:
            self._reserved.pop(name, None)
        tap.index = link.index
        tap.mtu = link.mtu
        self._register(tap, pidfd)
        log.info("tap %s created for uid %d%s", name, caller.uid,
                 f" ({request.label})" if request.label else "",
                 extra={"INTERFACE": name, "BRIDGED_TAP": name, "BRIDGED_UID": caller.uid,
                        "BRIDGED_PID": caller.pid, "BRIDGED_LABEL": request.label,
                        "BRIDGED_EVENT": "tap-created" if persistent else "tap-opened"})
        return tap, fds

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
                                "release one with ReleaseTap")

    def _taken(self, name: str) -> bool:
        return self._bridge.has_link_named(name) or name in self._reserved or name in self.taps

    def _reserve_name(self, requested: str | None, uid: int) -> str:
        if requested is not None:
            check_requested_name(requested, self.config.prefix)
            if self._taken(requested):
                raise NameInUse(f"{requested} already exists; pick another name or omit "
                                "'name' to get a free one")
            name = requested
        else:
            # The lowest free number. Every number below the hint is in use (the hint
            # drops when one of our taps goes), so the search starts there, not at 0.
            number = self._free_hint
            while self._taken(f"{self.config.prefix}{number}"):
                number += 1
            name = f"{self.config.prefix}{number}"
            self._free_hint = number + 1
        self._reserved[name] = uid
        return name

    def _open_pidfd(self, pid: int) -> tuple[int, int]:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise InvalidArgument(f"process {pid} has already exited") from None
        start = process_start_time(pid)
        if start is None:
            os.close(pidfd)
            raise InvalidArgument(f"process {pid} has already exited")
        return pidfd, start

    # --- registry ----------------------------------------------------------------------

    def _register(self, tap: Tap, pidfd: int) -> None:
        self.taps[tap.name] = tap
        if pidfd >= 0:
            self._pidfds[tap.name] = pidfd
            asyncio.get_running_loop().add_reader(pidfd, self._client_exited, tap.name)
        for listener in self.on_added:
            listener(tap)

    def _number_free(self, name: str) -> None:
        number = name[len(self.config.prefix):]
        if name.startswith(self.config.prefix) and number.isdigit():
            self._free_hint = min(self._free_hint, int(number))

    def _forget(self, name: str) -> Tap | None:
        self._number_free(name)
        tap = self.taps.pop(name, None)
        pidfd = self._pidfds.pop(name, None)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)
        if tap is not None:
            for listener in self.on_removed:
                listener(tap)
        return tap

    def _client_exited(self, name: str) -> None:
        tap = self.taps.get(name)
        pidfd = self._pidfds.get(name)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
        if tap is not None:
            self._spawn(self._delete(tap, f"client process {tap.client_pid} exited"))

    async def _delete(self, tap: Tap, why: str) -> None:
        if self.taps.get(tap.name) is not tap:
            return
        self._forget(tap.name)
        await self._remove_from_kernel(tap, why)

    async def _remove_from_kernel(self, tap: Tap, why: str) -> None:
        try:
            await self._reaper.delete_link(tap.index)
        except KernelError as e:
            if e.errno != errno.ENODEV:
                log.error("deleting tap %s failed: %s", tap.name, e,
                          extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name})
                return
        _log_removed(tap, why)

    def handle_event(self, event: LinkEvent) -> None:
        """A tap that disappears (last fd closed, deleted by root) leaves the registry."""
        if not event.removed or event.link.family == AF_BRIDGE:
            return
        tap = self.taps.get(event.link.name)
        if tap is not None and tap.index == event.link.index:
            self._forget(tap.name)
            _log_removed(tap, "its last file descriptor was closed" if not tap.persistent
                         else "deleted outside bridged")

    # --- restart and bridge recreation ---------------------------------------------------

    async def adopt_existing(self) -> None:
        """After a restart: take back our taps, free those whose client is gone."""
        bridge = self._bridge.bridge
        for link in self._bridge.all_links():
            tap = tap_from_alias(link)
            if tap is None:
                continue
            if tap.persistent and tap.client_pid:
                alive = process_start_time(tap.client_pid) == tap.client_start
                pidfd = -1
                if alive:
                    with contextlib.suppress(ProcessLookupError):
                        pidfd = os.pidfd_open(tap.client_pid)
                    # Re-check: the process may have exited between the two looks, or be
                    # a zombie not yet reaped (its pidfd is readable at once).
                    alive = pidfd >= 0 and not select.select([pidfd], [], [], 0)[0] and \
                        process_start_time(tap.client_pid) == tap.client_start
                if not alive:
                    if pidfd >= 0:
                        os.close(pidfd)
                    # On the reaper lane, not awaited: each delete takes ~16 ms in the
                    # kernel, and a thousand dead clients would hold READY up for 16 s.
                    self._spawn(self._remove_from_kernel(
                        tap, f"client process {tap.client_pid} is gone"))
                    continue
                self._register(tap, pidfd)
            else:
                self._register(tap, -1)
            if bridge is not None and link.master != bridge.index:
                await self._netlink.set_link(link.index, master=bridge.index, state="up")
            log.info("tap %s adopted (uid %d)", tap.name, tap.owner_uid,
                     extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                            "BRIDGED_UID": tap.owner_uid, "BRIDGED_EVENT": "tap-adopted"})

    def _bridge_recreated(self, bridge: Link) -> None:
        if self.taps:
            self._spawn(self._reattach(bridge))

    async def _reattach(self, bridge: Link) -> None:
        for tap in list(self.taps.values()):
            try:
                await self._netlink.set_link(tap.index, master=bridge.index, state="up")
            except KernelError as e:
                log.warning("re-attaching tap %s to %s failed: %s", tap.name, bridge.name, e)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        # The loop keeps only weak references to tasks: hold them until done.
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def count_for(self, uid: int) -> int:
        return sum(1 for t in self.taps.values() if t.owner_uid == uid)



def _log_removed(tap: Tap, why: str) -> None:
    log.info("tap %s removed: %s", tap.name, why,
             extra={"INTERFACE": tap.name, "BRIDGED_TAP": tap.name,
                    "BRIDGED_UID": tap.owner_uid, "BRIDGED_EVENT": "tap-removed"})
