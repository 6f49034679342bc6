"""Tell the other network managers that bridged's links are not theirs, and take it back.

NetworkManager and systemd-networkd each get two things, through their own interfaces:
a call that acts now (NetworkManager: ``Device.Managed = false``; networkd: ``Reload``)
and a runtime drop-in that holds across their restarts and covers links that appear
later (new taps). The udev rules (udev.py) stay as well: they cover networkd >= 255 and
NetworkManager where udev runs, but only from a link's next udev event.

bridged.service can write only under /run/bridged, so the package links the managers'
runtime paths to files there (systemd/bridged.tmpfiles):
/run/NetworkManager/conf.d/90-bridged.conf and /run/systemd/network/00-bridged.network.
tmpfiles creates those files with harmless content first (a dangling conf.d link stops
NetworkManager from starting; a .network that matched everything would hand every link
to nobody), and bridged writes them back to harmless content when it withdraws.

It also finds config that another tool applies to the bridge or an uplink
(/etc/network/interfaces, an active NetworkManager connection, a networkd .network) and
names it with the fix: reported, never undone. A missing manager is skipped; no error
here stops the daemon.
"""

from __future__ import annotations

import asyncio
import fnmatch
import glob
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from bridged.config import Config, UplinkPattern

log = logging.getLogger(__name__)

NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
NM_DEVICE = "org.freedesktop.NetworkManager.Device"
NM_ACTIVE = "org.freedesktop.NetworkManager.Connection.Active"
NM_RELOAD_CONF = 1  # NM_MANAGER_RELOAD_FLAG_CONF: re-read NetworkManager.conf and conf.d
NM_ACTIVATION_EXTERNAL = 0x80  # NM_ACTIVATION_STATE_FLAG_EXTERNAL: NM only watches it
NETWORKD = "org.freedesktop.network1"
NETWORKD_PATH = "/org/freedesktop/network1"
PROPERTIES = "org.freedesktop.DBus.Properties"
ABSENT_ERRORS = ("org.freedesktop.DBus.Error.ServiceUnknown",
                 "org.freedesktop.DBus.Error.NameHasNoOwner")

# The names the package links our files as (systemd/bridged.tmpfiles). 00-: networkd
# takes the first .network that matches, in lexical order across its directories.
NM_DROPIN_NAME = "90-bridged.conf"
NETWORKD_DROPIN_NAME = "00-bridged.network"
# What tmpfiles writes before bridged has claimed anything, and what a withdrawal leaves:
# NetworkManager ignores a comment; the .network matches no link, and would leave that
# one alone if it did (a .network with an empty [Match] matched every link in networkd
# before v246).
NM_HARMLESS = "# bridged claims no links (see bridged(8)).\n"
NETWORKD_HARMLESS = ("# bridged claims no links (see bridged(8)); this matches none.\n"
                     "[Match]\nName=.bridged-none\n\n[Link]\nUnmanaged=yes\n")

# Searched in this order by networkd v252 and v257; a name in an earlier one masks it later.
NETWORKD_DIRS = ("etc/systemd/network", "run/systemd/network",
                 "usr/local/lib/systemd/network", "usr/lib/systemd/network")


@dataclass(frozen=True)
class ClaimPaths:
    """Where the drop-ins are written (None: not written) and where the system's config
    is read (``root``: "/" but for tests)."""

    networkmanager: str | None = None
    networkd: str | None = None
    # ip.mode "dhcp": the .network that has systemd-networkd lease the bridge's address
    # (linked as 01-bridged-dhcp.network: after our 00- claim, before any catch-all).
    networkd_dhcp: str | None = None
    root: str = "/"

    def system(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))


@dataclass(frozen=True)
class ClaimedNames:
    """The links bridged claims: patterns for those to come, names for those present."""

    bridge: str | None  # None: the bridge is left to a manager (ip.mode "dhcp")
    uplinks: tuple[UplinkPattern, ...]
    tap_prefix: str
    links: tuple[str, ...] = ()  # uplinks and taps present now, by name

    @classmethod
    def from_config(cls, config: Config, links: Iterable[str] = (),
                    claim_bridge: bool = True) -> ClaimedNames:
        return cls(config.bridge.name if claim_bridge else None, config.bridge.uplinks,
                   config.taps.prefix, tuple(dict.fromkeys(links)))

    def exact(self) -> list[str]:
        """Names known now: the bridge, uplinks named without a glob, present links."""
        names = [self.bridge] if self.bridge else []
        names += [p.text for p in self.uplinks if p.mac is None and not _is_glob(p.text)]
        names += self.links
        return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Conflict:
    tool: str  # "ifupdown", "NetworkManager", "systemd-networkd"
    what: str
    fix: str


class ManagerError(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{text} ({name})")
        self.name = name
        self.text = text


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


# --- what the drop-ins say ------------------------------------------------------------


def render_networkmanager(names: ClaimedNames) -> str:
    specs = []
    if names.bridge:
        specs.append(f"interface-name:{names.bridge}")
    for pattern in names.uplinks:
        if pattern.mac is not None:
            specs.append(f"mac:{pattern.mac}")
        elif "[" not in pattern.text:  # NetworkManager globs know * and ? only
            specs.append(f"interface-name:{pattern.text}")
    specs.append(f"interface-name:{names.tap_prefix}*")
    specs += [f"interface-name:{n}" for n in names.links if not _covered(n, names)]
    # "+=" adds to what NetworkManager's own conf.d files set before ours; a plain
    # "unmanaged-devices=" in /etc replaces it (conflicts() reports that).
    return ("# Written by bridged (see bridged(8)): NetworkManager leaves these links alone.\n"
            "[keyfile]\nunmanaged-devices+=" + ";".join(dict.fromkeys(specs)) + "\n")


def networkd_names(names: ClaimedNames) -> list[str]:
    """The Name= globs of the .network: the tap glob first (a list whose first word
    starts with "!" would be inverted). Uplinks given by MAC are matched by their present
    names: a MACAddress= in the same [Match] would have to hold as well, not instead."""
    globs = [f"{names.tap_prefix}*"]
    if names.bridge:
        globs.append(names.bridge)
    globs += [p.text for p in names.uplinks if p.mac is None]
    globs += [n for n in names.links if not _covered(n, names)]
    return list(dict.fromkeys(globs))


def render_networkd(names: ClaimedNames) -> str:
    return ("# Written by bridged (see bridged(8)): systemd-networkd leaves these links "
            "alone.\n[Match]\nName=" + " ".join(networkd_names(names)) +
            "\n\n[Link]\nUnmanaged=yes\n")


def render_networkd_dhcp(bridge: str) -> str:
    """systemd-networkd, for the bridge alone: the host's address by DHCPv4, IPv6 by
    router advertisements (and DHCPv6 when they say so). The bridge carries the uplink's
    MAC and sends it as its client identifier, so the LAN's server hands out the address
    the host had on the uplink. A lease survives networkd stopping (dhcp-on-stop; not
    "dhcp", which would make the kernel's copy permanent and hide the lease's time), and
    the bridge losing its carrier while the uplink is unplugged and plugged back in.
    bridged owns the bridge itself (MAC, MTU, ports): nothing of that is here."""
    return (f"# Written by bridged (see bridged(8)): ip.mode = \"dhcp\" for {bridge}.\n"
            f"[Match]\nName={bridge}\n\n"
            "[Network]\nDHCP=yes\nIPv6AcceptRA=yes\nKeepConfiguration=dhcp-on-stop\n"
            "IgnoreCarrierLoss=yes\n"
            "LinkLocalAddressing=ipv6\n\n"
            "[DHCPv4]\nClientIdentifier=mac\n")


def _covered(name: str, names: ClaimedNames) -> bool:
    if name == names.bridge or fnmatch.fnmatchcase(name, f"{names.tap_prefix}*"):
        return True
    return any(p.mac is None and fnmatch.fnmatchcase(name, p.text) for p in names.uplinks)


def _write(path: str, text: str) -> bool:
    """Replace ``path`` atomically, readable by the managers (UMask=0077); True if it
    changed."""
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".bridged-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return True


# --- the claims -----------------------------------------------------------------------


class ManagerClaims:
    """Claims bridged's links from NetworkManager and systemd-networkd; finds conflicts."""

    def __init__(self, bus: MessageBus | None, paths: ClaimPaths) -> None:
        self.bus = bus
        self.paths = paths
        self._names: ClaimedNames | None = None
        # The drop-in text each manager was told to load (None: not yet, in this process).
        self._nm_loaded: str | None = None
        self._networkd_loaded: str | None = None
        # Devices whose Managed we turned off: withdraw() turns exactly those back on.
        self._nm_unmanaged: set[str] = set()
        # Names NetworkManager (this instance of it: its bus name) has as unmanaged, so
        # that a claim for one new uplink does not ask again about every tap.
        self._nm_owner: str | None = None
        self._nm_told: set[str] = set()

    async def claim(self, names: ClaimedNames) -> None:
        """Tell both managers; idempotent (start, reload, a new uplink)."""
        self._names = names
        await self._claim_networkmanager(names)
        await self._claim_networkd(names)

    async def withdraw(self) -> None:
        """Take the claim back (bridged tears its bridge down)."""
        await self._withdraw_networkmanager()
        await self._withdraw_networkd()
        self._names = None

    async def lease(self, bridge: str) -> str | None:
        """ip.mode "dhcp": systemd-networkd runs the DHCP client on the bridge (and only
        there). None when it does; else why it cannot."""
        path = self.paths.networkd_dhcp
        if path is None:
            return "no place to write systemd-networkd's .network (--networkd-dhcp)"
        text = render_networkd_dhcp(bridge)
        if not self._write_dropin(path, text, "systemd-networkd"):
            return f"cannot write {path}"
        if not await self._present(NETWORKD) and not await self._start_networkd():
            return ("systemd-networkd is not running and could not be started "
                    "(systemctl enable --now systemd-networkd)")
        why = await self._reload_networkd()
        if why is not None:
            return f"systemd-networkd did not reload: {why}"
        log.info("systemd-networkd leases %s's address (DHCP, router advertisements)", bridge,
                 extra={"INTERFACE": bridge, "BRIDGED_EVENT": "dhcp-started",
                        "BRIDGED_MANAGER": "systemd-networkd"})
        return None

    async def unlease(self) -> None:
        """Stop systemd-networkd's DHCP client on the bridge (mode changed, rollback,
        teardown)."""
        path = self.paths.networkd_dhcp
        if path is None or not self._write_dropin(path, NETWORKD_HARMLESS, "systemd-networkd"):
            return
        if not await self._present(NETWORKD):
            return
        why = await self._reload_networkd()
        if why is not None:
            log.warning("systemd-networkd did not stop leasing the bridge's address: %s", why,
                        extra={"BRIDGED_EVENT": "dhcp-stop-failed",
                               "BRIDGED_MANAGER": "systemd-networkd"})
            return
        log.info("systemd-networkd no longer leases the bridge's address",
                 extra={"BRIDGED_EVENT": "dhcp-stopped", "BRIDGED_MANAGER": "systemd-networkd"})

    async def _reload_networkd(self) -> str | None:
        """networkd reads its .network files again; None, or its words why not."""
        try:
            await self._call(NETWORKD, NETWORKD_PATH, NETWORKD + ".Manager", "Reload")
        except (ManagerError, OSError, EOFError) as e:
            return str(e)
        return None

    async def _start_networkd(self) -> bool:
        """Ask systemd to start systemd-networkd (polkit lets _bridged, for that unit)."""
        if self.bus is None:
            return False
        try:
            await self._call("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                             "org.freedesktop.systemd1.Manager", "StartUnit", "ss",
                             ["systemd-networkd.service", "replace"])
        except (ManagerError, OSError, EOFError) as e:
            log.debug("cannot start systemd-networkd: %s", e)
            return False
        for _ in range(50):  # its bus name comes once it has read its configuration
            if await self._present(NETWORKD):
                return True
            await asyncio.sleep(0.1)
        return False

    async def conflicts(self, config: Config) -> list[Conflict]:
        """Config that other tools apply to the bridge or an uplink, each logged with
        its fix."""
        names = self._names or ClaimedNames.from_config(config)
        uplinks = list(config.bridge.uplinks)
        # The links present now that are not taps: the uplinks, those matched by MAC too.
        present = [n for n in names.links
                   if not fnmatch.fnmatchcase(n, f"{config.taps.prefix}*")]
        found: list[Conflict] = []
        found += ifupdown_conflicts(self.paths.system("/etc/network/interfaces"),
                                    config.bridge.name, uplinks, present, self.paths.root)
        found += await self._networkmanager_conflicts(config.bridge.name, uplinks, present)
        found += networkd_conflicts(self.paths, config.bridge.name, uplinks, present)
        for c in found:
            log.warning("%s: %s; fix: %s", c.tool, c.what, c.fix,
                        extra={"BRIDGED_EVENT": "manager-conflict", "BRIDGED_MANAGER": c.tool})
        return found

    # --- D-Bus -------------------------------------------------------------------------

    async def _call(self, destination: str, path: str, interface: str, member: str,
                    signature: str = "", body: list[Any] | None = None) -> list[Any]:
        assert self.bus is not None
        # NO_AUTOSTART: asking a stopped manager must not start it (networkd is
        # D-Bus activatable).
        reply = await self.bus.call(Message(
            destination=destination, path=path, interface=interface, member=member,
            signature=signature, body=body or [], flags=MessageFlag.NO_AUTOSTART))
        if reply is None:
            raise ManagerError("NoReply", "no reply")
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise ManagerError(reply.error_name or "", text)
        return list(reply.body)

    async def _owner(self, name: str) -> str | None:
        """The unique bus name of the manager that owns ``name``; None when it is not
        running."""
        if self.bus is None:
            return None
        try:
            [owner] = await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                       "org.freedesktop.DBus", "GetNameOwner", "s", [name])
        except ManagerError as e:
            if e.name not in ABSENT_ERRORS:
                log.debug("cannot ask the bus for %s: %s", name, e)
            return None
        except (OSError, EOFError) as e:
            log.debug("cannot ask the bus for %s: %s", name, e)
            return None
        return str(owner)

    async def _present(self, name: str) -> bool:
        return await self._owner(name) is not None

    async def _get(self, destination: str, path: str, interface: str, prop: str) -> Any:
        [value] = await self._call(destination, path, PROPERTIES, "Get", "ss",
                                   [interface, prop])
        return value.value if isinstance(value, Variant) else value

    async def _nm_device(self, ifname: str) -> str | None:
        try:
            [path] = await self._call(NM, NM_PATH, NM, "GetDeviceByIpIface", "s", [ifname])
        except ManagerError as e:
            if e.name.endswith("UnknownDevice"):
                return None
            raise
        return str(path)

    # --- NetworkManager ----------------------------------------------------------------

    async def _claim_networkmanager(self, names: ClaimedNames) -> None:
        text = render_networkmanager(names)
        owner = await self._owner(NM)
        if owner != self._nm_owner:
            self._nm_owner, self._nm_told = owner, set()
        if owner is None:
            log.debug("NetworkManager is not running; its drop-in holds from its start",
                      extra={"BRIDGED_MANAGER": "NetworkManager"})
            self._write_dropin(self.paths.networkmanager, text, "NetworkManager")
            self._nm_loaded = None
            return
        unmanaged: list[str] = []

        async def unmanage(ifname: str) -> None:
            path = await self._nm_device(ifname)
            if path is None:
                return  # not there (yet): the drop-in covers it when it comes
            if await self._get(NM, path, NM_DEVICE, "Managed"):
                await self._call(NM, path, PROPERTIES, "Set", "ssv",
                                 [NM_DEVICE, "Managed", Variant("b", False)])
                unmanaged.append(ifname)
                self._nm_unmanaged.add(ifname)
            self._nm_told.add(ifname)

        try:
            # Managed=false first: NetworkManager then leaves a device as it is. Told by
            # the drop-in and Reload first, it took the uplink down (br0 lost carrier).
            await asyncio.gather(*(unmanage(n) for n in names.exact()
                                   if n not in self._nm_told))
            # Names no longer claimed (an uplink given back by a rollback) are
            # NetworkManager's again, if it managed them before us.
            for ifname in sorted(self._nm_unmanaged - set(names.exact())):
                if _covered(ifname, names):
                    continue
                self._nm_unmanaged.discard(ifname)
                self._nm_told.discard(ifname)
                path = await self._nm_device(ifname)
                if path is not None:
                    await self._call(NM, path, PROPERTIES, "Set", "ssv",
                                     [NM_DEVICE, "Managed", Variant("b", True)])
                    log.info("NetworkManager manages %s again", ifname,
                             extra={"INTERFACE": ifname, "BRIDGED_EVENT": "manager-withdrawn",
                                    "BRIDGED_MANAGER": "NetworkManager"})
            reloaded = False
            if self._write_dropin(self.paths.networkmanager, text, "NetworkManager") and \
                    self._nm_loaded != text:
                await self._call(NM, NM_PATH, NM, "Reload", "u", [NM_RELOAD_CONF])
                self._nm_loaded = text
                reloaded = True
        except (ManagerError, OSError, EOFError) as e:
            log.warning("NetworkManager did not take bridged's claim on %s: %s",
                        ", ".join(names.exact()), e,
                        extra={"BRIDGED_EVENT": "manager-claim-failed",
                               "BRIDGED_MANAGER": "NetworkManager"})
            return
        if unmanaged or reloaded:
            log.info("NetworkManager leaves %s alone%s%s", ", ".join(names.exact()),
                     f" (set unmanaged: {', '.join(unmanaged)})" if unmanaged else "",
                     f"; {self.paths.networkmanager} reloaded" if reloaded else "",
                     extra={"BRIDGED_EVENT": "manager-claimed",
                            "BRIDGED_MANAGER": "NetworkManager"})

    async def _withdraw_networkmanager(self) -> None:
        written = self._write_dropin(self.paths.networkmanager, NM_HARMLESS, "NetworkManager")
        if not await self._present(NM):
            self._nm_unmanaged.clear()
            return
        managed: list[str] = []
        try:
            if written:
                await self._call(NM, NM_PATH, NM, "Reload", "u", [NM_RELOAD_CONF])
                self._nm_loaded = NM_HARMLESS
            for ifname in sorted(self._nm_unmanaged):
                path = await self._nm_device(ifname)
                if path is not None:
                    await self._call(NM, path, PROPERTIES, "Set", "ssv",
                                     [NM_DEVICE, "Managed", Variant("b", True)])
                    managed.append(ifname)
        except (ManagerError, OSError, EOFError) as e:
            log.warning("NetworkManager did not take back bridged's links: %s", e,
                        extra={"BRIDGED_EVENT": "manager-withdraw-failed",
                               "BRIDGED_MANAGER": "NetworkManager"})
            return
        finally:
            self._nm_unmanaged.clear()
        log.info("NetworkManager may manage bridged's links again%s",
                 f" (set managed: {', '.join(managed)})" if managed else "",
                 extra={"BRIDGED_EVENT": "manager-withdrawn", "BRIDGED_MANAGER": "NetworkManager"})

    async def _networkmanager_conflicts(self, bridge: str, uplinks: list[UplinkPattern],
                                        present: list[str]) -> list[Conflict]:
        found = nm_conf_conflicts(self.paths, self._names)
        if not await self._present(NM):
            return found
        names = [bridge, *(p.text for p in uplinks if p.mac is None and not _is_glob(p.text)),
                 *present]
        for ifname in dict.fromkeys(names):
            try:
                path = await self._nm_device(ifname)
                if path is None:
                    continue
                active = await self._get(NM, path, NM_DEVICE, "ActiveConnection")
                if not active or active == "/":
                    continue
                flags = await self._get(NM, active, NM_ACTIVE, "StateFlags")
                if flags & NM_ACTIVATION_EXTERNAL:
                    continue  # NetworkManager only shows what it found: not its config
                name = await self._get(NM, active, NM_ACTIVE, "Id")
            except (ManagerError, OSError, EOFError) as e:
                log.debug("cannot read NetworkManager's connection on %s: %s", ifname, e)
                continue
            role = "the bridge" if ifname == bridge else "uplink"
            found.append(Conflict(
                "NetworkManager",
                f"connection {name!r} is active on {role} {ifname}",
                f"bridged sets {ifname} unmanaged, which stops it; so that NetworkManager "
                f"never brings it up there again: nmcli connection modify {_shell(name)} "
                f"connection.autoconnect no (or nmcli connection delete {_shell(name)})"))
        return found

    # --- systemd-networkd --------------------------------------------------------------

    async def _claim_networkd(self, names: ClaimedNames) -> None:
        if self.paths.networkd is None:
            return  # networkd has no call that unmanages a link: the .network is the claim
        text = render_networkd(names)
        if not self._write_dropin(self.paths.networkd, text, "systemd-networkd") or \
                self._networkd_loaded == text:
            return  # not written (logged), or networkd has this very text loaded
        if not await self._present(NETWORKD):
            log.debug("systemd-networkd is not running; %s holds from its start",
                      self.paths.networkd, extra={"BRIDGED_MANAGER": "systemd-networkd"})
            self._networkd_loaded = None
            return
        why = await self._reload_networkd()
        if why is not None:
            log.warning("systemd-networkd did not take bridged's claim: %s", why,
                        extra={"BRIDGED_EVENT": "manager-claim-failed",
                               "BRIDGED_MANAGER": "systemd-networkd"})
            return
        self._networkd_loaded = text
        log.info("systemd-networkd leaves %s alone (%s reloaded)",
                 " ".join(networkd_names(names)), self.paths.networkd,
                 extra={"BRIDGED_EVENT": "manager-claimed", "BRIDGED_MANAGER": "systemd-networkd"})

    async def _withdraw_networkd(self) -> None:
        if self.paths.networkd is None:
            return
        self._write_dropin(self.paths.networkd, NETWORKD_HARMLESS, "systemd-networkd")
        self._networkd_loaded = None
        if not await self._present(NETWORKD):
            return
        why = await self._reload_networkd()
        if why is not None:
            log.warning("systemd-networkd did not take back bridged's links: %s", why,
                        extra={"BRIDGED_EVENT": "manager-withdraw-failed",
                               "BRIDGED_MANAGER": "systemd-networkd"})
            return
        self._networkd_loaded = NETWORKD_HARMLESS
        log.info("systemd-networkd may manage bridged's links again",
                 extra={"BRIDGED_EVENT": "manager-withdrawn",
                        "BRIDGED_MANAGER": "systemd-networkd"})

    # --- files -------------------------------------------------------------------------

    def _write_dropin(self, path: str | None, text: str, manager: str) -> bool:
        """True if ``path`` now holds ``text`` (rewritten or already so)."""
        if path is None:
            return False
        try:
            _write(path, text)
        except OSError as e:
            log.warning("cannot write %s's drop-in %s: %s", manager, path, e,
                        extra={"BRIDGED_EVENT": "manager-claim-failed",
                               "BRIDGED_MANAGER": manager})
            return False
        return True


def _shell(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_.,:/@%+=-]+", text) else \
        "'" + text.replace("'", "'\\''") + "'"


# --- NetworkManager's configuration: is our drop-in still in force? -------------------


def nm_conf_files(paths: ClaimPaths) -> list[str]:
    """NetworkManager's configuration files in the order it reads them (nm-config.c):
    /usr/lib conf.d, /run conf.d, NetworkManager.conf, /etc conf.d; a name in /etc
    shadows /run and /usr/lib, a name in /run shadows /usr/lib."""
    def listing(directory: str) -> dict[str, str]:
        d = paths.system(directory)
        try:
            return {n: os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".conf")}
        except OSError:
            return {}

    lib = listing("/usr/lib/NetworkManager/conf.d")
    run = listing("/run/NetworkManager/conf.d")
    etc = listing("/etc/NetworkManager/conf.d")
    files = [p for n, p in lib.items() if n not in etc and n not in run]
    files += [p for n, p in run.items() if n not in etc]
    files.append(paths.system("/etc/NetworkManager/NetworkManager.conf"))
    files += etc.values()
    return files


def nm_unmanaged_specs(files: list[str]) -> tuple[list[str], str | None]:
    """keyfile.unmanaged-devices as NetworkManager merges it ("key+=", "key-=" extend
    it, "key=" replaces it), and the last file that replaced it."""
    specs: list[str] = []
    replaced_by = None
    for path in files:
        try:
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        section = ""
        for line in lines:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip()
                continue
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or section != "keyfile" or key.rstrip("+-").strip() != "unmanaged-devices":
                continue
            values = [v.strip() for v in re.split(r"[,;]", value) if v.strip()]
            if key.endswith("+"):
                specs += [v for v in values if v not in specs]
            elif key.endswith("-"):
                specs = [s for s in specs if s not in values]
            else:
                specs, replaced_by = values, path
    return specs, replaced_by


def nm_conf_conflicts(paths: ClaimPaths, names: ClaimedNames | None) -> list[Conflict]:
    if paths.networkmanager is None or names is None:
        return []
    ours = paths.system("/run/NetworkManager/conf.d/" + NM_DROPIN_NAME)
    if not os.path.isdir(paths.system("/etc/NetworkManager")):
        return []  # NetworkManager is not installed
    files = nm_conf_files(paths)
    if ours not in files:
        shadow = paths.system("/etc/NetworkManager/conf.d/" + NM_DROPIN_NAME)
        why = f"{shadow} shadows it" if os.path.exists(shadow) else "it is missing"
        return [Conflict("NetworkManager", f"bridged's drop-in {ours} is not read: {why}",
                         f"rename {shadow}, or reinstall bridged (its tmpfiles link "
                         f"{ours} to {paths.networkmanager})")]
    want = render_networkmanager(names).split("unmanaged-devices+=")[1].strip().split(";")
    specs, replaced_by = nm_unmanaged_specs(files)
    lost = [s for s in want if s not in specs]
    if not lost:
        return []
    return [Conflict(
        "NetworkManager",
        f"unmanaged-devices= in {replaced_by} replaces bridged's list, so after its restart "
        f"NetworkManager may manage {', '.join(s.split(':', 1)[1] for s in lost)}",
        f"write unmanaged-devices+= instead of unmanaged-devices= in {replaced_by} (it then "
        f"adds to bridged's list), then: nmcli general reload conf")]


# --- ifupdown: /etc/network/interfaces ------------------------------------------------


@dataclass
class IfupdownStanza:
    file: str
    line: int
    name: str
    family: str
    method: str
    options: dict[str, str] = field(default_factory=dict)
    auto: bool = False


def ifupdown_stanzas(path: str, root: str = "/") -> list[IfupdownStanza]:
    """The iface stanzas of ``path`` and what it sources, in ifup's order (absolute
    source paths are taken under ``root``).

    A minimal scan (iface/auto/allow-*/source/source-directory), enough to find the
    interfaces ifupdown configures; bridged.ifupdown's full parser replaces it.
    """
    stanzas: list[IfupdownStanza] = []
    auto: set[str] = set()
    _scan(path, root, stanzas, auto, set())
    for s in stanzas:
        s.auto = s.name in auto
    return stanzas


def _scan(path: str, root: str, stanzas: list[IfupdownStanza], auto: set[str],
          seen: set[str]) -> None:
    real = os.path.realpath(path)
    if real in seen:
        return
    seen.add(real)
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return
    directory = os.path.dirname(path)
    current: IfupdownStanza | None = None
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical.append((start, pending + raw))
        pending = ""
    for number, line in logical:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        keyword = words[0]
        if keyword == "iface" and len(words) >= 4:
            current = IfupdownStanza(path, number, words[1], words[2], words[3])
            stanzas.append(current)
        elif keyword == "auto" or keyword.startswith("allow-"):
            auto.update(words[1:])
            current = None
        elif keyword in ("source", "source-directory") and len(words) >= 2:
            current = None
            target = " ".join(words[1:])
            target = os.path.join(root, target.lstrip("/")) if target.startswith("/") \
                else os.path.join(directory, target)
            if keyword == "source":
                for included in sorted(glob.glob(target)):
                    _scan(included, root, stanzas, auto, seen)
            else:
                try:
                    entries = sorted(os.listdir(target))
                except OSError:
                    entries = []
                for entry in entries:  # run-parts' names only
                    if re.fullmatch(r"[A-Za-z0-9_-]+", entry):
                        _scan(os.path.join(target, entry), root, stanzas, auto, seen)
        elif keyword in ("mapping", "rename", "no-auto-down", "no-scripts"):
            current = None
        elif current is not None:
            current.options[keyword.replace("_", "-")] = " ".join(words[1:])


def ifupdown_conflicts(path: str, bridge: str, uplinks: list[UplinkPattern],
                       present: list[str], root: str = "/") -> list[Conflict]:
    def is_uplink(name: str) -> bool:
        return name in present or any(p.mac is None and fnmatch.fnmatchcase(name, p.text)
                                      for p in uplinks)

    found = []
    for s in ifupdown_stanzas(path, root):
        where = f"{s.file}:{s.line}"
        stanza = f"'iface {s.name} {s.family} {s.method}'"
        also = f" and the 'auto {s.name}' or 'allow-hotplug {s.name}' line" if s.auto else ""
        ports = s.options.get("bridge-ports", "").split()
        if s.name == bridge:
            found.append(Conflict(
                "ifupdown", f"{stanza} ({where}) configures bridged's bridge {bridge}"
                + (f" with ports {' '.join(ports)}" if ports else ""),
                f"remove that stanza{also} from {s.file}; its addresses and ports belong "
                f"in bridged.toml ([ip], bridge.uplinks)"))
        elif is_uplink(s.name):
            doing = {"dhcp": "runs a DHCP client on it", "static": "puts addresses on it",
                     "manual": "sets it up and down (ifdown takes the uplink down)"}.get(
                         s.method, f"configures it ({s.method})")
            fix = (f"remove that stanza{also} from {s.file}; bridged enslaves {s.name} and "
                   f"configures {bridge} itself")
            pidfile = f"/run/dhclient.{s.name}.pid"
            if s.method == "dhcp" and os.path.exists(os.path.join(root, pidfile.lstrip("/"))):
                # ifup's dhclient still runs on the enslaved uplink; ifdown would release
                # the lease (the address the bridge now leases) and set the uplink down.
                fix += (f"; its dhclient still runs: stop it without releasing the lease: "
                        f"dhclient -x -pf {pidfile}")
            found.append(Conflict(
                "ifupdown", f"{stanza} ({where}) {doing}, but {s.name} is an uplink of "
                f"{bridge}", fix))
        taken = [p for p in ports if p == "all" or is_uplink(p)]
        if taken and s.name != bridge:
            found.append(Conflict(
                "ifupdown", f"{stanza} ({where}) makes bridge {s.name} with ports "
                f"{' '.join(taken)}, bridged's uplinks", f"remove {' '.join(taken)} from its "
                f"bridge-ports, or that stanza{also}, in {s.file}"))
    return found


# --- systemd-networkd's .network files ------------------------------------------------


def networkd_files(paths: ClaimPaths) -> list[str]:
    """The .network files networkd reads, in the order it matches them: by file name
    across its directories, a name in an earlier directory masking later ones."""
    chosen: dict[str, str] = {}
    for directory in NETWORKD_DIRS:
        d = paths.system(directory)
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for name in entries:
            if name.endswith(".network") and name not in chosen:
                chosen[name] = os.path.join(d, name)
    files = []
    for name in sorted(chosen):
        path = chosen[name]
        # Masked: a link to /dev/null or an empty file.
        if os.path.realpath(path) == "/dev/null" or _size(path) == 0:
            continue
        files.append(path)
    return files


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def networkd_name_matches(path: str, ifname: str) -> bool | None:
    """Whether [Match] Name= in ``path`` takes ``ifname``; None when it has no Name=.

    Word by word as networkd does: "!" excludes, and with any positive word one of
    them must match. Other [Match] keys (MACAddress=, Type=, ...) are not evaluated.
    """
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    section, seen = "", False
    words: list[str] = []
    for line in lines:
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]").strip()
            continue
        key, _, value = line.partition("=")
        if section != "Match" or key.strip() != "Name":
            continue
        seen = True
        value = value.strip()
        if not value:
            words = []
            continue
        invert = value.startswith("!")
        words += [("!" if invert else "") + w for w in value.lstrip("!").split()]
    if not seen:
        return None
    positive = [w for w in words if not w.startswith("!")]
    if any(fnmatch.fnmatchcase(ifname, w[1:]) for w in words if w.startswith("!")):
        return False
    return not positive or any(fnmatch.fnmatchcase(ifname, w) for w in positive)


def networkd_conflicts(paths: ClaimPaths, bridge: str, uplinks: list[UplinkPattern],
                       present: list[str]) -> list[Conflict]:
    ours = os.path.realpath(paths.networkd) if paths.networkd else None
    files = networkd_files(paths)
    names = [bridge, *(p.text for p in uplinks if p.mac is None and not _is_glob(p.text)),
             *present]
    found: list[Conflict] = []
    ours_index = next((i for i, f in enumerate(files) if ours and os.path.realpath(f) == ours),
                      None)
    if paths.networkd is not None and ours_index is None:
        mask = paths.system("/etc/systemd/network/" + NETWORKD_DROPIN_NAME)
        if os.path.lexists(mask):
            found.append(Conflict(
                "systemd-networkd", f"{mask} masks bridged's {NETWORKD_DROPIN_NAME}",
                f"rename {mask}"))
    by_file: dict[str, list[str]] = {}
    for ifname in dict.fromkeys(names):
        for index, path in enumerate(files):
            if index == ours_index:
                continue
            if networkd_name_matches(path, ifname):
                by_file.setdefault(path, []).append(ifname)
                break
    for path, matched in sorted(by_file.items(), key=lambda item: files.index(item[0])):
        index = files.index(path)
        listed = " ".join(matched)
        if ours_index is None or index < ours_index:
            what = (f"{path} matches {listed} and systemd-networkd applies it (it sorts "
                    f"before bridged's {NETWORKD_DROPIN_NAME})")
        else:
            what = (f"{path} matches {listed}; bridged's {NETWORKD_DROPIN_NAME} keeps "
                    f"systemd-networkd off them while bridged runs")
        found.append(Conflict(
            "systemd-networkd", what,
            f"exclude them in its [Match]: Name=!{' '.join(matched)} (or narrow its Name=), "
            f"then: networkctl reload"))
    return found
