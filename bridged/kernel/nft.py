"""The tap guards' nftables table, through libnftables (Debian's python3-nftables).

The only code in bridged that talks to libnftables. It states no policy: it writes and
reads one table, ``bridge bridged``, whose rules drop, at the bridge's prerouting hook
(before the bridge learns a source address or forwards anything), what a guarded port
must not send. Which ports are guarded and from which MAC they may send is data, kept
in sets keyed by interface name, so adding or removing a port is one small transaction
whatever the number of ports: a chain per port made libnftables read every chain of the
table on each change (10 ms per tap at 1000 taps, against 0.1 ms), and keys of type
iface_index made it dump every link of the namespace to resolve them (2 ms at 300 links).
Port names are bridged's own (its prefix, handed out round-robin); a renamed port is
re-keyed by the daemon.

The per-port work (guard a port, read its drop counters and learned MAC, unguard it)
goes to the kernel as raw nf_tables netlink (``nftnl``): libnftables first reads the
whole table into its cache for each such command (~52 ms to read one port's counters
at 1000 guarded ports), the kernel finds an element by its key. libnftables writes and
reads the table as a whole (start, rebuild, rename), which is rare.

Both block (they talk netlink synchronously), so every function here runs on a netlink
lane's thread, with that thread's own context (``context()``).
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bridged.kernel import nftnl

FAMILY = "bridge"
TABLE = "bridged"
# Bump when the rules change: a table with another version is replaced on start.
VERSION = 1
COMMENT = f"bridged tap guards v{VERSION}; managed by bridged, changes are undone"

# Why a frame was dropped: the key's second half in set @dropped, and the log prefix.
REASONS: dict[int, str] = {
    1: "source-mac",      # a source MAC other than the port's guest MAC
    2: "vlan",            # a VLAN-tagged frame (it would carry the rest past the rules)
    3: "arp-sender",      # ARP whose sender hardware address is not the guest MAC
    4: "router",          # IPv6 router advertisement or redirect, ICMPv4 redirect
    5: "dhcp-server",     # DHCPv4 server reply (UDP from port 67)
    6: "dhcp6-server",    # DHCPv6 server reply (UDP from port 547)
}
LEARN_PREFIX = "bridged:learn"
DROP_PREFIX = "bridged:drop:"
# Drop samples the kernel passes on to the daemon, per reason, all ports together:
# enough to name the offender, never a flood.
LOG_RATE = "limit rate 10/second burst 20 packets"

# bridged's threads that commit to nf_tables are named so (see netlink.Netlink).
OWN_TASK_PREFIX = "bridged-"

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class NftError(Exception):
    """libnftables or the kernel refused a command; ``missing`` when it named something
    absent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.missing = "No such file or directory" in message

    @classmethod
    def from_kernel(cls, what: str, error: OSError) -> NftError:
        reason = getattr(error, "reason", None)
        text = f"{what}: {os.strerror(error.errno or errno.EIO)}"
        return cls(f"{text} ({reason})" if reason else text)


@dataclass
class Port:
    """One guarded port as the table holds it."""

    name: str
    mac: str | None = None  # the MAC it may send from; None until learned
    # reason -> (packets, bytes) dropped so far
    dropped: dict[int, tuple[int, int]] = field(default_factory=dict)
    extra_macs: list[str] = field(default_factory=list)  # learned beyond the first (a race)


class Nft:
    """One libnftables context. Not thread-safe: one per thread (``context()``)."""

    def __init__(self) -> None:
        try:
            import nftables  # Debian's python3-nftables
        except ImportError as e:
            raise NftError(f"python3-nftables is not installed ({e})") from None
        try:
            self._ctx = nftables.Nftables()
        except OSError as e:
            raise NftError(f"cannot load libnftables: {e}") from None
        self._ctx.set_json_output(False)
        self._ctx.set_handle_output(False)
        self._raw: nftnl.NftSocket | None = None

    @property
    def raw(self) -> nftnl.NftSocket:
        """This thread's raw nf_tables socket, for the per-port element work."""
        if self._raw is None:
            self._raw = nftnl.NftSocket()
        return self._raw

    def run(self, commands: str) -> str:
        """Run commands as one transaction; their output, or NftError."""
        rc, out, err = self._ctx.cmd(commands)
        if rc != 0:
            raise NftError(" ".join(err.split()) or f"nft failed ({rc})")
        return str(out)

    def run_json(self, commands: str) -> dict[str, Any]:
        self._ctx.set_json_output(True)
        try:
            out = self.run(commands)
        finally:
            self._ctx.set_json_output(False)
        return json.loads(out) if out.strip() else {}


_local = threading.local()


def context() -> Nft:
    """This thread's libnftables context."""
    nft = getattr(_local, "nft", None)
    if nft is None:
        nft = _local.nft = Nft()
    return nft


def check_available() -> None:
    """Raise NftError if libnftables cannot be used (for a clear message at start)."""
    Nft()


# --- the table ------------------------------------------------------------------------


def _drop_chain(reason: int, log_group: int) -> str:
    return (f"  chain drop_{reason} {{\n"
            f"    update @dropped {{ iifname . {reason} }}\n"
            f"    {LOG_RATE} log group {log_group} prefix \"{DROP_PREFIX}{reason}\"\n"
            f"    drop\n  }}\n")


def _elements(ports: Iterable[Port]) -> tuple[list[str], list[str], list[str], list[str]]:
    guarded, learned, macs, dropped = [], [], [], []
    for port in ports:
        name = _quoted(port.name)
        guarded.append(name)
        if port.mac is not None:
            learned.append(f"{name} : {port.mac}")
            macs.append(f"{name} . {port.mac}")
        # A (port, reason) counter is made by the kernel at the port's first drop for
        # that reason (``update @dropped``); one made ahead for every port and reason
        # would be six elements a port that libnftables reads and writes at each
        # rebuild: 155 ms instead of 43 at 1000 ports, most of a restart's time.
        for reason, (packets, octets) in sorted(port.dropped.items()):
            if packets or octets:
                dropped.append(f"{name} . {reason} counter packets {packets} bytes {octets}")
    return guarded, learned, macs, dropped


NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _quoted(name: str) -> str:
    if not NAME_RE.match(name):  # bridged's tap names never fail this
        raise NftError(f"{name!r} is not a tap name bridged would use")
    return f'"{name}"'


def _set_elements(items: list[str]) -> str:
    return f" elements = {{ {', '.join(items)} }};" if items else ""


def table_text(log_group: int, ports: Iterable[Port]) -> str:
    """The whole table, with its ports, as one nft script."""
    guarded, learned, macs, dropped = _elements(ports)
    drops = "".join(_drop_chain(reason, log_group) for reason in REASONS)
    return f"""table {FAMILY} {TABLE} {{
  comment "{COMMENT}"
  set guarded {{ type ifname;{_set_elements(guarded)} }}
  map learned {{ type ifname : ether_addr; flags dynamic;{_set_elements(learned)} }}
  set macs {{ type ifname . ether_addr; flags dynamic;{_set_elements(macs)} }}
  set dropped {{ type ifname . mark; flags dynamic; counter;{_set_elements(dropped)} }}
{drops}  chain prerouting {{
    type filter hook prerouting priority -200; policy accept;
    iifname != @guarded accept
    iifname != @learned add @learned {{ iifname : ether saddr }} add @macs {{ iifname . ether saddr }} log group {log_group} prefix "{LEARN_PREFIX}"
    iifname . ether saddr != @macs goto drop_1
    ether type {{ 8021q, 8021ad }} goto drop_2
    iifname . arp saddr ether != @macs goto drop_3
    icmpv6 type {{ nd-router-advert, nd-redirect }} goto drop_4
    icmp type redirect goto drop_4
    ether type ip udp sport 67 goto drop_5
    ether type ip6 udp sport 547 goto drop_6
  }}
}}
"""  # noqa: E501


def read_table(nft: Nft) -> tuple[str, dict[str, Port]] | None:
    """(comment, ports by name) of the table in the kernel, or None if there is none."""
    try:
        data = nft.run_json(f"list table {FAMILY} {TABLE}")
    except NftError as e:
        if e.missing:
            return None
        raise
    comment = ""
    sets: dict[str, list[Any]] = {}
    for item in data.get("nftables", []):
        if "table" in item:
            comment = item["table"].get("comment", "")
        elif "set" in item or "map" in item:
            body = item.get("set") or item.get("map")
            sets[body["name"]] = body.get("elem", [])
    ports = {str(name): Port(str(name)) for name in sets.get("guarded", [])}
    for elem in sets.get("macs", []):
        key = _value(elem)
        if isinstance(key, dict) and len(key.get("concat", [])) == 2:
            port = ports.get(str(key["concat"][0]))
            mac = str(key["concat"][1]).lower()
            if port is None or not MAC_RE.match(mac):
                continue
            if port.mac is None:
                port.mac = mac
            elif mac != port.mac:
                port.extra_macs.append(mac)
    for elem in sets.get("learned", []):
        # [key, value] pairs; the first MAC learned, also in @macs
        if isinstance(elem, list) and len(elem) == 2:
            port = ports.get(str(elem[0]))
            mac = str(elem[1]).lower()
            if port is not None and MAC_RE.match(mac):
                if port.mac is not None and port.mac != mac:
                    port.extra_macs.append(port.mac)
                port.mac = mac
    for elem in sets.get("dropped", []):
        key = _value(elem)
        counter = elem.get("elem", {}).get("counter") if isinstance(elem, dict) else None
        if isinstance(key, dict) and len(key.get("concat", [])) == 2 and counter:
            port = ports.get(str(key["concat"][0]))
            try:
                reason = int(key["concat"][1])
            except (TypeError, ValueError):
                continue
            if port is not None and reason in REASONS:
                port.dropped[reason] = (int(counter["packets"]), int(counter["bytes"]))
    return comment, ports


def _value(elem: Any) -> Any:
    if isinstance(elem, dict) and "elem" in elem:
        return elem["elem"].get("val")
    return elem


def replace_table(nft: Nft, log_group: int, ports: Iterable[Port]) -> None:
    """Put the table in place with exactly ``ports``, atomically: the old table, if
    any, guards every frame until the kernel switches to the new one."""
    nft.run(f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
            + table_text(log_group, ports))


def reconcile(nft: Nft, log_group: int, ports: list[Port], keep_table: bool) -> dict[str, str]:
    """Make the table hold exactly ``ports`` (one transaction), keeping what the kernel
    learned and counted for them. Returns the MACs the kernel learned for ports that
    came without one. With no ports and not ``keep_table``, the table goes."""
    learned: dict[str, str] = {}
    current = read_table(nft)
    if current is not None:
        kernel = current[1]
        for port in ports:
            seen = kernel.get(port.name)
            if seen is None:
                continue
            if port.mac is None and seen.mac is not None:
                port.mac = learned[port.name] = seen.mac
            port.dropped = seen.dropped
    if ports or keep_table:
        replace_table(nft, log_group, ports)
    else:
        delete_table(nft)
    return learned


def delete_table(nft: Nft) -> None:
    try:
        nft.run(f"delete table {FAMILY} {TABLE}")
    except NftError as e:
        if not e.missing:
            raise


def _port_commands(verb: str, name: str, mac: str | None,
                   dropped: dict[int, tuple[int, int]]) -> list[str]:
    """libnftables commands that add or delete one port's elements. ``dropped``: its
    counters, by reason; to add, with their values (those at zero are left to the
    kernel), to delete, every one the kernel holds."""
    quoted = _quoted(name)
    if verb == "delete":
        counters = [f"{quoted} . {reason}" for reason in sorted(dropped)]
    else:
        counters = _elements([Port(name, None, dropped)])[3]
    commands = [f"{verb} element {FAMILY} {TABLE} dropped {{ {', '.join(counters)} }}"] \
        if counters else []
    if mac is not None:
        learned = quoted if verb == "delete" else f"{quoted} : {mac}"
        commands += [f"{verb} element {FAMILY} {TABLE} learned {{ {learned} }}",
                     f"{verb} element {FAMILY} {TABLE} macs {{ {quoted} . {mac} }}"]
    # Added last and deleted first: a port is never guarded without its MAC in place.
    guard = f"{verb} element {FAMILY} {TABLE} guarded {{ {quoted} }}"
    return [guard, *commands] if verb == "delete" else [*commands, guard]


def _port_elements(name: str, mac: str | None,
                   counters: Iterable[int] = ()) -> list[nftnl.Element]:
    """A port's elements in the order they are added: its MAC, and only then
    ``guarded`` (deleted in the reverse order: a port is never guarded without its MAC
    in place). ``counters``: the reasons whose drop counter the kernel made for it (to
    delete them with the rest; a new port has none)."""
    _quoted(name)
    out = [nftnl.Element("dropped", nftnl.ifname_mark_key(name, reason))
           for reason in counters]
    if mac is not None:
        out += [nftnl.Element("learned", nftnl.ifname_key(name), nftnl.mac_bytes(mac)),
                nftnl.Element("macs", nftnl.ifname_mac_key(name, mac))]
    out.append(nftnl.Element("guarded", nftnl.ifname_key(name)))
    return out


def guard_port(nft: Nft, log_group: int, name: str, mac: str | None) -> None:
    """Guard one port (one transaction); creates the table if it is not there."""
    guard_ports(nft, log_group, [(name, mac)])


def guard_ports(nft: Nft, log_group: int, ports: list[tuple[str, str | None]]) -> None:
    """Guard several ports, (name, mac) each, in one transaction (all or none);
    creates the table if it is not there."""
    elements = [element for name, mac in ports for element in _port_elements(name, mac)]
    what = f"guarding {', '.join(name for name, _mac in ports)}"
    try:
        nft.raw.add(TABLE, elements)
        return
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise NftError.from_kernel(what, e) from None
    # The table is gone (flushed by someone): put an empty one back, then the ports.
    # The daemon hears of the flush and restores the other ports.
    if read_table(nft) is None:
        replace_table(nft, log_group, [])
    try:
        nft.raw.add(TABLE, elements)
    except OSError as e:
        raise NftError.from_kernel(what, e) from None


def read_dropped(nft: Nft, name: str) -> dict[int, tuple[int, int]]:
    """reason -> (packets, bytes) dropped from one port so far, for each reason it
    dropped a frame for (the kernel makes a reason's counter at its first drop)."""
    return read_dropped_many(nft, [name])[name]


def read_dropped_many(nft: Nft, names: list[str]) -> dict[str, dict[int, tuple[int, int]]]:
    """name -> reason -> (packets, bytes), for several ports in one trip."""
    return _read_ports(nft, names, learned_of=[])[0]


def _read_ports(nft: Nft, names: list[str], learned_of: list[str]
                ) -> tuple[dict[str, dict[int, tuple[int, int]]], dict[str, str | None]]:
    """The drop counters of ``names`` and the MACs learned by ``learned_of``, all in one
    trip: a lookup per key (a counter exists only where a port dropped something)."""
    wanted = [("dropped", nftnl.ifname_mark_key(_unquoted(name), reason))
              for name in names for reason in REASONS]
    wanted += [("learned", nftnl.ifname_key(_unquoted(name))) for name in learned_of]
    try:
        found = nft.raw.get(TABLE, wanted)
    except OSError as e:
        raise NftError.from_kernel("reading the guards' counters and learned MACs", e) \
            from None
    answers = iter(found)
    dropped: dict[str, dict[int, tuple[int, int]]] = {name: {} for name in names}
    for name in names:
        for reason in REASONS:
            element = next(answers)
            if element is not None:  # made at the first drop for that reason
                dropped[name][reason] = (element.packets or 0, element.bytes or 0)
    learned = {name: _mac_of(next(answers)) for name in learned_of}
    return dropped, learned


def _mac_of(found: nftnl.Found | None) -> str | None:
    if found is None or found.data is None or len(found.data) < 6:
        return None
    return ":".join(f"{b:02x}" for b in found.data[:6])


def _unquoted(name: str) -> str:
    _quoted(name)  # the same names as the table's text takes
    return name


def learned_mac(nft: Nft, name: str) -> str | None:
    """The MAC the kernel learned for a port, if any."""
    return _read_ports(nft, [], learned_of=[name])[1][name]


def unguard_port(nft: Nft, name: str, mac: str | None) -> dict[int, tuple[int, int]]:
    """Remove one port's guards; return what they dropped. NftError with ``missing``
    when the table does not hold what the arguments say (the caller then rebuilds the
    table)."""
    result = unguard_ports(nft, [(name, mac)])[name]
    if isinstance(result, NftError):
        raise result
    return result


def unguard_ports(nft: Nft, ports: list[tuple[str, str | None]]
                  ) -> dict[str, dict[int, tuple[int, int]] | NftError]:
    """Remove several ports' guards, (name, mac) each, in one transaction; for each,
    what they dropped, or the NftError that stopped it. A port whose MAC is given as
    None is asked for the one the kernel learned (a sample of its first frame may not
    have been read yet)."""
    names = [name for name, _mac in ports]
    dropped, learned = _read_ports(nft, names,
                                   learned_of=[name for name, mac in ports if mac is None])
    macs = {name: mac if mac is not None else learned[name] for name, mac in ports}
    # The port's link is gone: no frame of it can make a counter after the read.
    elements = [element for name in names
                for element in reversed(_port_elements(name, macs[name], dropped[name]))]
    try:
        nft.raw.delete(TABLE, elements)
        return dict(dropped)
    except OSError as e:
        if len(ports) == 1:
            return {names[0]: NftError.from_kernel(f"removing the guards of {names[0]}", e)}
    # One port's elements were not all there, and the whole transaction was refused:
    # the others go one by one.
    out: dict[str, dict[int, tuple[int, int]] | NftError] = {}
    for name in names:
        try:
            nft.raw.delete(TABLE, list(reversed(_port_elements(name, macs[name],
                                                               dropped[name]))))
            out[name] = dropped[name]
        except OSError as e:
            out[name] = NftError.from_kernel(f"removing the guards of {name}", e)
    return out


def rename_port(nft: Nft, old: str, new: str, mac: str | None) -> None:
    """Key a port by its new name (one transaction), keeping its counters."""
    # Frames of the renamed link carry its new name: none can add a counter for the
    # old name after this read.
    counters, learned = _read_ports(nft, [old], learned_of=[old] if mac is None else [])
    dropped = counters[old]
    if mac is None:
        mac = learned[old]
    nft.run("\n".join(_port_commands("add", new, mac, dropped)
                      + _port_commands("delete", old, mac, dropped)))


def forget_mac(nft: Nft, name: str, mac: str) -> None:
    """Take a MAC a port learned beyond its first out of @macs."""
    try:
        nft.raw.delete(TABLE, [nftnl.Element("macs", nftnl.ifname_mac_key(_unquoted(name),
                                                                          mac))])
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise NftError.from_kernel(f"forgetting MAC {mac} of {name}", e) from None
