"""The config file: TOML in, frozen dataclasses out.

Every key is declared once in ``_SCHEMA`` with the parser that checks it, so an
unknown key, a wrong type or a bad value is refused with the file, the key and the
reason, before the daemon touches anything. Rules that involve more than one key
(conflicts, values the kernel would refuse in combination) run after all keys parsed,
so a config either passes as a whole or is refused as a whole.

``load`` blocks (it reads a file) but is bounded: it opens nothing but a regular file,
reads at most ``MAX_FILE_SIZE + 1`` bytes and refuses input that makes ``tomllib``
recurse or go quadratic, so the daemon can run it in an executor on every SIGHUP.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import math
import os
import re
import reprlib
import stat
import string
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bridged.errors import ConfigError
from bridged.kernel.link import IPV6_MIN_MTU

DEFAULT_PATH = "/etc/bridged/bridged.toml"

# A complete, commented bridged.toml is about 2 KiB; a megabyte is a mistake (or
# /dev/zero behind a symlink), and reading it must not exhaust memory.
MAX_FILE_SIZE = 1 << 20

# The kernel's IFNAMSIZ is 16 including the NUL. We allow a conservative character set:
# the kernel accepts more, but names with "/", ":" or spaces break sysfs and tools.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
IFNAME_MAX = 15
# Characters of a tap name after the prefix (taps.check_requested_name allows these).
# Ordered so that example names in messages look like the ones bridged hands out.
_NAME_CHARS = string.digits + string.ascii_lowercase + string.ascii_uppercase + "_.-"
_NAME_CHAR_SET = frozenset(_NAME_CHARS)
# The kernel refuses these for a new device: they are the net/ipv4/conf/{all,default}
# sysctl directories (seen here: EINVAL).
RESERVED_IFNAMES = ("all", "default")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# A Linux bridge holds at most 1023 ports (BR_MAX_PORTS - 1).
BRIDGE_MAX_PORTS = 1023
IP_MODES = ("static", "migrate", "dhcp", "none")
MAC_FROM_UPLINK = "uplink"
IP_MAX_MTU = 65535
# Seconds to wait for the gateway after an IP move; longer is not a probe any more.
PROBE_TIMEOUT_MAX = 300
VNI_MAX = (1 << 24) - 1
VXLAN_PORT = 4789
VXLAN_CONTROLS = ("evpn",)
# Outer Ethernet (14) + IP (20 or 40) + UDP (8) + VXLAN (8) headers.
VXLAN_OVERHEAD = {4: 50, 6: 70}
# tomllib builds a dotted key by tuple concatenation: a key of n parts costs n**2
# (a 1 MiB header "[a.a.a...]" took 177 s here). No key of bridged.toml has more than
# two parts, so a line with this many dots outside strings and comments is refused
# before tomllib sees it.
_MAX_DOTS_PER_LINE = 64

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class UplinkPattern:
    """One entry of ``bridge.uplinks``: an interface name, a glob, or ``mac:...``."""

    text: str

    @property
    def mac(self) -> str | None:
        return self.text[4:] if self.text.startswith("mac:") else None

    def matches(self, ifname: str, mac: str | None, perm_mac: str | None = None) -> bool:
        want = self.mac
        if want is not None:
            return want in (mac, perm_mac)
        return fnmatch.fnmatchcase(ifname, self.text)


@dataclass(frozen=True)
class BridgeConfig:
    name: str = "br0"
    uplinks: tuple[UplinkPattern, ...] = ()
    stp: bool = False
    forward_delay: int = 0
    mac: str | None = MAC_FROM_UPLINK
    mtu: int | None = None
    teardown_on_stop: bool = False
    # Take over an existing bridge that does not bear bridged's mark.
    adopt: bool = False

    def is_uplink(self, ifname: str, mac: str | None, perm_mac: str | None = None) -> bool:
        if ifname == self.name:
            return False
        return any(p.matches(ifname, mac, perm_mac) for p in self.uplinks)


@dataclass(frozen=True)
class IPConfig:
    mode: str = "none"
    addresses: tuple[IPInterface, ...] = ()
    gateways: tuple[IPAddress, ...] = ()
    dns: tuple[IPAddress, ...] = ()
    # Seconds the host has to reach its gateway through the bridge after an IP move
    # before the move is rolled back; 0 turns the probe (and the rollback) off.
    probe_timeout: float = 10.0


@dataclass(frozen=True)
class TapsConfig:
    prefix: str = "tap"
    allow_groups: tuple[str, ...] = ("bridged",)
    max_per_user: int = 16
    max_total: int = 1000
    # MAC / RA / DHCP-server guards on every tap that is not `trusted`.
    guard: bool = True


@dataclass(frozen=True)
class AuthConfig:
    polkit: bool = False


@dataclass(frozen=True)
class VxlanConfig:
    """A kernel VXLAN port on the bridge: one L2 segment with other hosts."""

    vni: int
    local: IPAddress
    # Static head-end replication: one all-zeros FDB entry per peer.
    peers: tuple[IPAddress, ...] = ()
    # None: the peers above; "evpn": FRR's BGP EVPN fills the FDB (learning off).
    control: str | None = None
    port: int = VXLAN_PORT

    @property
    def device_name(self) -> str:
        # At most "vx16777215": 10 characters, always a valid interface name.
        return f"vx{self.vni}"

    @property
    def evpn(self) -> bool:
        return self.control == "evpn"

    @property
    def overhead(self) -> int:
        """Bytes the underlay adds to every frame of the bridge."""
        return VXLAN_OVERHEAD[self.local.version]


@dataclass(frozen=True)
class Config:
    path: str = DEFAULT_PATH
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    ip: IPConfig = field(default_factory=IPConfig)
    taps: TapsConfig = field(default_factory=TapsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # None: no [vxlan] section, no overlay.
    vxlan: VxlanConfig | None = None


class _Invalid(Exception):
    """Raised by a value parser; the loader adds the file and the key."""


# --- how values appear in messages ------------------------------------------------------

# A value quoted back in an error is cut short and never spans lines: the error is one
# log line, and a file may hold a megabyte string or a list nested hundreds deep.
_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = 4
_short.maxdict = 4
_short.maxlevel = 2


def _show(value: Any) -> str:
    return _short.repr(value)


def _key_name(name: str) -> str:
    """A section or key name as written in messages; odd ones (newlines...) quoted."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        return name
    return _show(name)


# --- value parsers: each takes the TOML value and returns the typed one ---------------


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", str: "a string", list: "a list",
             dict: "a table", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_type_name(value)} ({_show(value)})")
    return value


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_type_name(value)} ({_show(value)})")
        if not low <= value <= high:
            raise _Invalid(f"{_show(value)} is out of range: must be between {low} and {high}")
        return value

    return parse


def _seconds(high: int) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"expected a number of seconds, got {_type_name(value)} "
                           f"({_show(value)})")
        # TOML has nan and inf; neither is a timeout.
        if not math.isfinite(value) or not 0 <= value <= high:
            raise _Invalid(f"{_show(value)} is out of range: must be between 0 and {high} "
                           "seconds (0 turns it off)")
        return float(value)

    return parse


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_type_name(value)} ({_show(value)})")
    return value


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def parse(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"expected a list, got {_type_name(value)} ({_show(value)})")
        out = []
        for i, element in enumerate(value):
            try:
                out.append(item(element))
            except _Invalid as e:
                raise _Invalid(f"item {i + 1}: {e}") from None
        return tuple(out)

    return parse


def _str_or_list_of(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    as_list = _list_of(item)

    def parse(value: Any) -> tuple[Any, ...]:
        return as_list([value] if isinstance(value, str) else value)

    return parse


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _str(value)
        if text not in choices:
            raise _Invalid(f"{_show(text)} is not one of: {', '.join(choices)}")
        return text

    return parse


def _ifname(value: Any) -> str:
    name = _str(value)
    if not IFNAME_RE.match(name) or name in (".", ".."):
        raise _Invalid(
            f"{_show(name)} is not a valid interface name: use 1 to 15 characters "
            "of A-Z, a-z, 0-9, '_', '.', '-'"
        )
    if name in RESERVED_IFNAMES:
        raise _Invalid(f"{name!r} is reserved by the kernel (net/ipv4/conf/{name}): "
                       "choose another name")
    if name == "lo":
        raise _Invalid("'lo' is the loopback device: choose another name")
    return name


def _mac(value: Any) -> str:
    mac = _str(value).lower()
    if not MAC_RE.match(mac):
        raise _Invalid(f"{_show(value)} is not a MAC address like aa:bb:cc:dd:ee:ff")
    if int(mac[:2], 16) & 1:
        raise _Invalid(f"{value!r} is a multicast MAC address; an interface needs a "
                       "unicast one")
    if mac == "00:00:00:00:00:00":
        raise _Invalid(f"{value!r} is the all-zeros MAC address, which the kernel refuses "
                       "for an interface")
    return mac


def _bridge_mac(value: Any) -> str | None:
    text = _str(value)
    if text == MAC_FROM_UPLINK:
        return MAC_FROM_UPLINK
    if text == "kernel":
        return None
    return _mac(text)


def _uplink(value: Any) -> UplinkPattern:
    text = _str(value)
    if text.startswith("mac:"):
        return UplinkPattern("mac:" + _mac(text[4:]))
    if not re.match(r"^[A-Za-z0-9_.*?\[\]!-]{1,15}$", text):
        raise _Invalid(
            f"{_show(text)} is not an interface name, a glob like 'en*', "
            "or 'mac:aa:bb:cc:dd:ee:ff'"
        )
    return UplinkPattern(text)


def _no_zone(text: str) -> None:
    if "%" in text:
        raise _Invalid(f"{_show(text)} has a zone ('%...'): leave it out, the interface is "
                       "the bridge")


def _interface_address(value: Any) -> IPInterface:
    text = _str(value)
    if "/" not in text:
        raise _Invalid(f"{_show(text)} needs a prefix length, e.g. '{text}/24'")
    _no_zone(text)
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise _Invalid(f"{_show(text)} is not an IP address with prefix length") from None


def _ip_address(value: Any) -> IPAddress:
    text = _str(value)
    _no_zone(text)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _Invalid(f"{_show(text)} is not an IP address") from None


def _unusable(address: IPAddress) -> str | None:
    """Why ``address`` cannot be a host's own address or a next hop, or None."""
    if address.is_unspecified:
        return "is the unspecified address"
    if address.is_loopback:
        return "is a loopback address"
    if address.is_multicast:
        return "is a multicast address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "is the limited broadcast address"
    return None


def _underlay_address(value: Any) -> IPAddress:
    address = _ip_address(value)
    why = _unusable(address)
    if why is not None:
        raise _Invalid(f"{address} {why}: a VXLAN endpoint is a unicast address of a host")
    if address.version == 6 and address.is_link_local:
        # The kernel: "Local interface required for link-local local/remote addresses".
        raise _Invalid(f"{address} is IPv6 link-local: the kernel needs an underlay device "
                       "for that; use a global or unique local address")
    return address


def _tap_prefix(value: Any) -> str:
    prefix = _str(value)
    # Leave room for up to four digits (the bridge takes 1023 ports).
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,10}$", prefix):
        raise _Invalid(
            f"{_show(prefix)} is not a usable tap prefix: 1 to 11 characters of "
            "A-Z, a-z, 0-9, '_', '.', '-', not starting with a digit"
        )
    return prefix


def _group(value: Any) -> str:
    name = _str(value)
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$", name):
        raise _Invalid(f"{_show(name)} is not a group name")
    return name


class _Key(NamedTuple):
    field: str
    parse: Callable[[Any], Any]
    # A key the section cannot do without (the section itself may be absent).
    required: bool = False


# section -> key -> how it is read
_SCHEMA: dict[str, dict[str, _Key]] = {
    "bridge": {
        "name": _Key("name", _ifname),
        "uplinks": _Key("uplinks", _list_of(_uplink)),
        "stp": _Key("stp", _bool),
        "forward_delay": _Key("forward_delay", _int_range(0, 30)),
        "mac": _Key("mac", _bridge_mac),
        "mtu": _Key("mtu", _int_range(68, IP_MAX_MTU)),
        "teardown_on_stop": _Key("teardown_on_stop", _bool),
        "adopt": _Key("adopt", _bool),
    },
    "ip": {
        "mode": _Key("mode", _one_of(IP_MODES)),
        "addresses": _Key("addresses", _list_of(_interface_address)),
        "gateway": _Key("gateways", _str_or_list_of(_ip_address)),
        "dns": _Key("dns", _list_of(_ip_address)),
        "probe_timeout": _Key("probe_timeout", _seconds(PROBE_TIMEOUT_MAX)),
    },
    "taps": {
        "prefix": _Key("prefix", _tap_prefix),
        "allow_groups": _Key("allow_groups", _list_of(_group)),
        "max_per_user": _Key("max_per_user", _int_range(0, BRIDGE_MAX_PORTS)),
        "max_total": _Key("max_total", _int_range(0, BRIDGE_MAX_PORTS)),
        "guard": _Key("guard", _bool),
    },
    "auth": {
        "polkit": _Key("polkit", _bool),
    },
    "vxlan": {
        "vni": _Key("vni", _int_range(1, VNI_MAX), required=True),
        "local": _Key("local", _underlay_address, required=True),
        "peers": _Key("peers", _list_of(_underlay_address)),
        "control": _Key("control", _one_of(VXLAN_CONTROLS)),
        "port": _Key("port", _int_range(1, 65535)),
    },
}

_SECTION_TYPES: dict[str, type] = {
    "bridge": BridgeConfig,
    "ip": IPConfig,
    "taps": TapsConfig,
    "auth": AuthConfig,
    "vxlan": VxlanConfig,
}


# --- reading the file --------------------------------------------------------------------


def load(path: str) -> Config:
    """Read and check ``path``; raise ConfigError naming the key on any problem.

    Blocking and bounded (see the module docstring); raises nothing but ConfigError.
    """
    return parse(_parse_toml(_read(path), path), path)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _require_regular(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = _file_kind(mode)
        what = kind if kind.startswith("not ") else f"is {kind}, not a regular file"
        raise ConfigError(path, "", what)


def _os_why(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def _refuse_special(path: str) -> None:
    """Refuse a path that is not a regular file without opening it: opening a device
    can act (a watchdog arms, a tape rewinds)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(path, "", _os_why(e)) from None
    except ValueError as e:  # a NUL in the path
        raise ConfigError(path, "", str(e)) from None
    _require_regular(path, st.st_mode)


def _too_big(path: str, size: int | None) -> ConfigError:
    what = f"file is {size} bytes" if size is not None else "file grew while being read"
    return ConfigError(path, "", f"{what}; the limit is {MAX_FILE_SIZE} bytes (1 MiB)")


def _read(path: str) -> bytes:
    _refuse_special(path)
    try:
        # O_NONBLOCK: if the path became a FIFO since the stat, open returns at once
        # instead of waiting for a writer; fstat below then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise ConfigError(path, "", _os_why(e)) from None
    try:
        st = os.fstat(fd)
        _require_regular(path, st.st_mode)
        if st.st_size > MAX_FILE_SIZE:
            raise _too_big(path, st.st_size)
        chunks: list[bytes] = []
        total = 0
        # At most one byte more than the cap: enough to see a file that grew past it.
        while total <= MAX_FILE_SIZE:
            chunk = os.read(fd, MAX_FILE_SIZE + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {_os_why(e)}") from None
    finally:
        os.close(fd)
    if total > MAX_FILE_SIZE:
        raise _too_big(path, None)
    return b"".join(chunks)


def _strip_strings_and_comment(line: str) -> str:
    line = re.sub(r""""(?:[^"\\]|\\.)*"|'[^']*'""", "", line)
    return line.split("#", 1)[0]


def _parse_toml(data: bytes, path: str) -> dict[str, Any]:
    try:
        # utf-8-sig: a byte order mark some editors write is not worth a refusal.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        at = data[:e.start].count(b"\n") + 1
        raise ConfigError(path, "", f"not valid UTF-8 (line {at}, byte "
                                    f"0x{data[e.start]:02x})") from None
    if text.count(".") > _MAX_DOTS_PER_LINE:
        for number, line in enumerate(text.split("\n"), 1):
            if (line.count(".") > _MAX_DOTS_PER_LINE
                    and _strip_strings_and_comment(line).count(".") > _MAX_DOTS_PER_LINE):
                raise ConfigError(
                    path, "", f"line {number} has more than {_MAX_DOTS_PER_LINE} dots outside "
                              "strings and comments: keys of bridged.toml have two levels "
                              "([section] then key)")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {_one_line(str(e))}") from None
    except RecursionError:
        raise ConfigError(path, "", "not usable TOML: nested too deeply (bridged.toml has "
                                    "sections of keys, nothing deeper)") from None
    except Exception as e:
        # tomllib lets some value errors through as they are, e.g. ValueError for an
        # integer of more than 4300 digits.
        raise ConfigError(path, "", f"not valid TOML: {_one_line(str(e))}") from None


def _one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return first[:200]


# --- from TOML to Config -----------------------------------------------------------------


def parse(raw: dict[str, Any], path: str = DEFAULT_PATH) -> Config:
    sections: dict[str, Any] = {}
    for section, body in raw.items():
        schema = _SCHEMA.get(section)
        if schema is None:
            known = ", ".join(f"[{s}]" for s in _SCHEMA)
            raise ConfigError(path, _key_name(section), f"unknown section (known: {known})")
        if not isinstance(body, dict):
            raise ConfigError(path, section,
                              f"expected a table [{section}], got {_type_name(body)}")
        values: dict[str, Any] = {}
        for key, value in body.items():
            spec = schema.get(key)
            if spec is None:
                known = ", ".join(schema)
                raise ConfigError(path, f"{section}.{_key_name(key)}",
                                  f"unknown key (known: {known})")
            try:
                values[spec.field] = spec.parse(value)
            except _Invalid as e:
                raise ConfigError(path, f"{section}.{key}", str(e)) from None
        for key, spec in schema.items():
            if spec.required and key not in body:
                raise ConfigError(path, f"{section}.{key}", f"required in [{section}]")
        sections[section] = _SECTION_TYPES[section](**values)
    config = Config(path=path, **sections)
    _check_consistency(config)
    return config


# --- rules that involve more than one key -------------------------------------------------


def _check_consistency(config: Config) -> None:
    _check_bridge(config)
    _check_uplinks(config)
    _check_ip(config)
    _check_taps(config)
    _check_vxlan(config)


def _check_bridge(config: Config) -> None:
    path, bridge, ip = config.path, config.bridge, config.ip
    if bridge.stp and bridge.forward_delay < 2:
        raise ConfigError(
            path, "bridge.forward_delay",
            "with stp = true the kernel needs a forward delay of 2 to 30 seconds",
        )
    if bridge.mtu is not None and bridge.mtu < IPV6_MIN_MTU:
        v6 = [a for a in ip.addresses if a.version == 6]
        if v6:
            raise ConfigError(
                path, "bridge.mtu",
                f"{bridge.mtu} is below {IPV6_MIN_MTU}, the IPv6 minimum MTU, and ip.addresses "
                f"has {v6[0]}: the kernel would refuse the address; raise mtu to at least "
                f"{IPV6_MIN_MTU} or remove the IPv6 address",
            )


def _glob_tokens(pattern: str) -> list[frozenset[str] | None]:
    """``pattern`` split as fnmatch splits it: None for ``*``, else the set of interface
    name characters that one position accepts."""
    tokens: list[frozenset[str] | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not tokens or tokens[-1] is not None:
                tokens.append(None)
        elif c == "?":
            tokens.append(_NAME_CHAR_SET)
        elif c == "[":
            # fnmatch's rule for where a class ends: "!" then "]" may open it, and a
            # "[" without a closing "]" is a literal "[".
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                tokens.append(frozenset("[") & _NAME_CHAR_SET)
            else:
                klass = pattern[i - 1:j + 1]
                # fnmatch itself decides what the class holds (ranges, negation).
                tokens.append(frozenset(ch for ch in _NAME_CHARS
                                        if fnmatch.fnmatchcase(ch, klass)))
                i = j + 1
        else:
            tokens.append(frozenset(c) & _NAME_CHAR_SET)
    return tokens


def _glob_example(pattern: str, prefix: str, max_len: int = IFNAME_MAX) -> str | None:
    """A name of at most ``max_len`` interface name characters that starts with
    ``prefix`` and that ``pattern`` matches (fnmatch rules), or None if there is none.

    Runs the glob as an automaton over the name alphabet, breadth first, so the example
    is a shortest such name.
    """
    tokens = _glob_tokens(pattern)
    end = len(tokens)

    def closure(states: set[int]) -> frozenset[int]:
        # A star may match nothing: being before it is being after it too.
        out = set(states)
        todo = list(states)
        while todo:
            p = todo.pop()
            if p < end and tokens[p] is None and p + 1 not in out:
                out.add(p + 1)
                todo.append(p + 1)
        return frozenset(out)

    def step(states: frozenset[int], ch: str) -> frozenset[int]:
        after: set[int] = set()
        for p in states:
            if p == end:
                continue
            token = tokens[p]
            if token is None:
                after.add(p)
            elif ch in token:
                after.add(p + 1)
        return closure(after)

    states = closure({0})
    for ch in prefix:
        states = step(states, ch)
        if not states:
            return None
    frontier = {states: prefix}
    for length in range(len(prefix), max_len + 1):
        for states, name in frontier.items():
            if end in states:
                return name
        if length == max_len:
            break
        following: dict[frozenset[int], str] = {}
        for states, name in frontier.items():
            for ch in _NAME_CHARS:
                after = step(states, ch)
                if after and after not in following:
                    following[after] = name + ch
        if not following:
            return None
        frontier = following
    return None


def _check_uplinks(config: Config) -> None:
    path, bridge, taps, vxlan = config.path, config.bridge, config.taps, config.vxlan
    seen: set[str] = set()
    for pattern in bridge.uplinks:
        text = pattern.text
        if text in seen:
            raise ConfigError(path, "bridge.uplinks", f"{text!r} is listed twice")
        seen.add(text)
        if pattern.mac is not None:
            continue
        if fnmatch.fnmatchcase(bridge.name, text):
            raise ConfigError(
                path, "bridge.uplinks",
                f"{text!r} matches the bridge {bridge.name!r} itself: "
                "a bridge cannot be its own uplink",
            )
        if fnmatch.fnmatchcase("lo", text):
            what = "is" if text == "lo" else "matches"
            raise ConfigError(
                path, "bridge.uplinks",
                f"{text!r} {what} the loopback device 'lo', which cannot be a bridge port: "
                "name the LAN interface (or a narrower pattern)",
            )
        if text in RESERVED_IFNAMES:
            raise ConfigError(path, "bridge.uplinks",
                              f"{text!r} is reserved by the kernel: no interface has that name")
        example = _glob_example(text, taps.prefix)
        if example is not None:
            raise ConfigError(
                path, "bridge.uplinks",
                f"{text!r} would match bridged's own taps (e.g. {example!r}; taps are "
                f"{taps.prefix!r} followed by letters, digits, '_', '.', '-'): "
                "use a narrower pattern or another taps.prefix",
            )
        if vxlan is not None and fnmatch.fnmatchcase(vxlan.device_name, text):
            raise ConfigError(
                path, "bridge.uplinks",
                f"{text!r} matches {vxlan.device_name!r}, the VXLAN port of [vxlan]: "
                "use a narrower pattern",
            )


def _check_ip(config: Config) -> None:
    path, ip = config.path, config.ip
    static_only = (("addresses", ip.addresses), ("gateway", ip.gateways), ("dns", ip.dns))
    if ip.mode == "static":
        if not ip.addresses:
            raise ConfigError(path, "ip.addresses", 'mode = "static" needs at least one address')
    elif ip.mode == "dhcp":
        for key, value in static_only:
            if value:
                raise ConfigError(
                    path, f"ip.{key}",
                    'mode = "dhcp" takes the address, gateway and DNS servers from the '
                    f'LAN\'s DHCP server: remove ip.{key}, or use mode = "static"',
                )
    else:
        for key, value in static_only:
            if value:
                raise ConfigError(
                    path, f"ip.{key}",
                    f'only used with mode = "static" (mode is "{ip.mode}"); '
                    "remove it or change the mode",
                )
    if ip.mode == "migrate" and not config.bridge.uplinks:
        raise ConfigError(
            path, "ip.mode",
            'mode = "migrate" moves the uplink\'s addresses to the bridge, but '
            "bridge.uplinks is empty: name the uplink, or use another mode",
        )
    _check_addresses(config)
    _check_gateways(config)
    for server in ip.dns:
        if server.is_unspecified or server.is_multicast:
            kind = "unspecified" if server.is_unspecified else "multicast"
            raise ConfigError(path, "ip.dns", f"{server} is a {kind} address, not a DNS server")


def _is_v4_net_or_broadcast(address: IPInterface) -> str | None:
    """Which special address of its IPv4 subnet ``address`` is, if any (/31 and /32
    have neither: RFC 3021)."""
    if address.version != 4 or address.network.prefixlen >= 31:
        return None
    if address.ip == address.network.network_address:
        return "network"
    if address.ip == address.network.broadcast_address:
        return "broadcast"
    return None


def _check_addresses(config: Config) -> None:
    path, addresses = config.path, config.ip.addresses
    seen: set[IPAddress] = set()
    for address in addresses:
        why = _unusable(address.ip)
        if why is not None:
            raise ConfigError(path, "ip.addresses",
                              f"{address} {why}: it cannot be the host's address")
        if address.ip in seen:
            raise ConfigError(path, "ip.addresses",
                              f"{address.ip} is listed twice: give each address once")
        seen.add(address.ip)
        special = _is_v4_net_or_broadcast(address)
        if special is not None:
            raise ConfigError(
                path, "ip.addresses",
                f"{address} is the {special} address of {address.network}, not a host "
                "address: pick another address or check the prefix length",
            )
    for i, first in enumerate(addresses):
        for second in addresses[i + 1:]:
            if first.version == second.version and first.network.overlaps(second.network):
                raise ConfigError(
                    path, "ip.addresses",
                    f"{first} and {second} are in overlapping subnets ({first.network} and "
                    f"{second.network}): the kernel would route both through one of them; "
                    "give one address per subnet",
                )


def _check_gateways(config: Config) -> None:
    path, ip = config.path, config.ip
    families = [g.version for g in ip.gateways]
    if len(families) != len(set(families)):
        raise ConfigError(path, "ip.gateway", "at most one gateway per address family")
    own = {a.ip for a in ip.addresses}
    for gateway in ip.gateways:
        why = _unusable(gateway)
        if why is not None:
            raise ConfigError(path, "ip.gateway", f"{gateway} {why}: it cannot be a gateway")
        if gateway in own:
            raise ConfigError(path, "ip.gateway",
                              f"{gateway} is one of the host's own ip.addresses: the gateway "
                              "is the router's address")
        same_family = [a for a in ip.addresses if a.version == gateway.version]
        if not same_family:
            raise ConfigError(
                path, "ip.gateway",
                f"{gateway} is an IPv{gateway.version} gateway but ip.addresses has no "
                f"IPv{gateway.version} address: add one or remove the gateway",
            )
        subnets = [a for a in same_family if gateway in a.network]
        # An IPv6 router is usually reached by its link-local address, which is on every
        # IPv6 link; IPv4 has no such rule (the kernel refuses an off-link next hop).
        if not subnets and not (gateway.version == 6 and gateway.is_link_local):
            raise ConfigError(
                path, "ip.gateway",
                f"{gateway} is not inside any of ip.addresses: the host could not reach it",
            )
        for address in subnets:
            network = address.network
            if gateway.version == 4 and network.prefixlen < 31 and gateway in (
                    network.network_address, network.broadcast_address):
                special = "network" if gateway == network.network_address else "broadcast"
                raise ConfigError(path, "ip.gateway",
                                  f"{gateway} is the {special} address of {network}, "
                                  "not a router's address")


def _check_taps(config: Config) -> None:
    path, bridge, taps = config.path, config.bridge, config.taps
    if bridge.name.startswith(taps.prefix) and bridge.name[len(taps.prefix):].isdigit():
        raise ConfigError(
            path, "taps.prefix",
            f"taps named {taps.prefix}N would collide with the bridge {bridge.name!r}",
        )
    if taps.max_per_user > taps.max_total:
        raise ConfigError(
            path, "taps.max_per_user",
            f"{taps.max_per_user} is more than taps.max_total ({taps.max_total})",
        )
    # Every uplink pattern takes at least one port when its link is there.
    others = len(bridge.uplinks) + (config.vxlan is not None)
    if taps.max_total + others > BRIDGE_MAX_PORTS:
        what = f"{len(bridge.uplinks)} uplink(s)"
        if config.vxlan is not None:
            what += " and the VXLAN port"
        raise ConfigError(
            path, "taps.max_total",
            f"{taps.max_total} taps and {what} exceed the {BRIDGE_MAX_PORTS} ports a bridge "
            f"holds: lower it to {BRIDGE_MAX_PORTS - others}",
        )


def _check_vxlan(config: Config) -> None:
    path, vxlan = config.path, config.vxlan
    if vxlan is None:
        return
    if vxlan.evpn and vxlan.peers:
        raise ConfigError(
            path, "vxlan.peers",
            'with control = "evpn" FRR\'s BGP EVPN finds the peers: remove peers, '
            "or remove control to list them here",
        )
    seen: set[IPAddress] = set()
    for peer in vxlan.peers:
        if peer.version != vxlan.local.version:
            raise ConfigError(
                path, "vxlan.peers",
                f"{peer} is IPv{peer.version} but vxlan.local ({vxlan.local}) is "
                f"IPv{vxlan.local.version}: a VXLAN device has one underlay family",
            )
        if peer == vxlan.local:
            raise ConfigError(path, "vxlan.peers",
                              f"{peer} is vxlan.local, this host: list the other hosts")
        if peer in seen:
            raise ConfigError(path, "vxlan.peers", f"{peer} is listed twice")
        seen.add(peer)
    name = vxlan.device_name
    if config.bridge.name == name:
        raise ConfigError(path, "bridge.name",
                          f"{name!r} is the name of the VXLAN port for vni {vxlan.vni}: "
                          "name the bridge otherwise")
    if name.startswith(config.taps.prefix):
        raise ConfigError(
            path, "taps.prefix",
            f"{config.taps.prefix!r} would match {name!r}, the VXLAN port for vni "
            f"{vxlan.vni}: choose another prefix",
        )
    mtu = config.bridge.mtu
    if mtu is not None and mtu + vxlan.overhead > IP_MAX_MTU:
        raise ConfigError(
            path, "bridge.mtu",
            f"{mtu} plus the {vxlan.overhead} bytes of VXLAN over IPv{vxlan.local.version} "
            f"exceeds {IP_MAX_MTU}, the largest underlay packet: at most "
            f"{IP_MAX_MTU - vxlan.overhead}",
        )


# --- reload ------------------------------------------------------------------------------


def check_reload(old: Config, new: Config) -> None:
    """Raise ConfigError if going from ``old`` to ``new`` needs a restart, so that a
    reload can be refused as a whole before anything is applied."""
    if new.bridge.name != old.bridge.name:
        raise ConfigError(
            new.path, "bridge.name",
            f"changed from {old.bridge.name!r} to {new.bridge.name!r}: renaming the bridge "
            "needs a restart (systemctl restart bridged); the running configuration stays",
        )
    if old.vxlan is not None and new.vxlan is not None and old.vxlan.vni != new.vxlan.vni:
        raise ConfigError(
            new.path, "vxlan.vni",
            f"changed from {old.vxlan.vni} to {new.vxlan.vni}: a new VNI is a new segment "
            "and needs a restart (systemctl restart bridged); the running configuration stays",
        )
