"""The config file: TOML in, frozen dataclasses out.

Every key is declared once in ``_SCHEMA`` with the parser that checks it, so an
unknown key, a wrong type or a bad value is refused with the file, the key and the
reason, before the daemon touches anything.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridged.errors import ConfigError

DEFAULT_PATH = "/etc/bridged/bridged.toml"

# The kernel's IFNAMSIZ is 16 including the NUL. We allow a conservative character set:
# the kernel accepts more, but names with "/", ":" or spaces break sysfs and tools.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# A Linux bridge holds at most 1023 ports (BR_MAX_PORTS - 1).
BRIDGE_MAX_PORTS = 1023
IP_MODES = ("static", "migrate", "none")
MAC_FROM_UPLINK = "uplink"


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

    def is_uplink(self, ifname: str, mac: str | None, perm_mac: str | None = None) -> bool:
        if ifname == self.name:
            return False
        return any(p.matches(ifname, mac, perm_mac) for p in self.uplinks)


@dataclass(frozen=True)
class IPConfig:
    mode: str = "none"
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    gateways: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()


@dataclass(frozen=True)
class TapsConfig:
    prefix: str = "tap"
    allow_groups: tuple[str, ...] = ("bridged",)
    max_per_user: int = 16
    max_total: int = 1000
    guard: bool = True


@dataclass(frozen=True)
class AuthConfig:
    polkit: bool = False


@dataclass(frozen=True)
class Config:
    path: str = DEFAULT_PATH
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    ip: IPConfig = field(default_factory=IPConfig)
    taps: TapsConfig = field(default_factory=TapsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)


class _Invalid(Exception):
    """Raised by a value parser; the loader adds the file and the key."""


# --- value parsers: each takes the TOML value and returns the typed one ---------------


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", str: "a string", list: "a list",
             dict: "a table", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_type_name(value)} ({value!r})")
    return value


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_type_name(value)} ({value!r})")
        if not low <= value <= high:
            raise _Invalid(f"{value} is out of range: must be between {low} and {high}")
        return value

    return parse


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_type_name(value)} ({value!r})")
    return value


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def parse(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"expected a list, got {_type_name(value)} ({value!r})")
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


def _ifname(value: Any) -> str:
    name = _str(value)
    if not IFNAME_RE.match(name) or name in (".", ".."):
        raise _Invalid(
            f"{name!r} is not a valid interface name: use 1 to 15 characters "
            "of A-Z, a-z, 0-9, '_', '.', '-'"
        )
    return name


def _mac(value: Any) -> str:
    mac = _str(value).lower()
    if not MAC_RE.match(mac):
        raise _Invalid(f"{value!r} is not a MAC address like aa:bb:cc:dd:ee:ff")
    if int(mac[:2], 16) & 1:
        raise _Invalid(f"{value!r} is a multicast MAC address; a bridge needs a unicast one")
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
            f"{text!r} is not an interface name, a glob like 'en*', or 'mac:aa:bb:cc:dd:ee:ff'"
        )
    return UplinkPattern(text)


def _interface_address(value: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    text = _str(value)
    if "/" not in text:
        raise _Invalid(f"{text!r} needs a prefix length, e.g. '{text}/24'")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise _Invalid(f"{text!r} is not an IP address with prefix length") from None


def _ip_address(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    text = _str(value)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _Invalid(f"{text!r} is not an IP address") from None


def _ip_mode(value: Any) -> str:
    mode = _str(value)
    if mode not in IP_MODES:
        raise _Invalid(f"{mode!r} is not one of: {', '.join(IP_MODES)}")
    return mode


def _tap_prefix(value: Any) -> str:
    prefix = _str(value)
    # Leave room for up to four digits (the bridge takes 1023 ports).
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,10}$", prefix):
        raise _Invalid(
            f"{prefix!r} is not a usable tap prefix: 1 to 11 characters of "
            "A-Z, a-z, 0-9, '_', '.', '-', not starting with a digit"
        )
    return prefix


def _group(value: Any) -> str:
    name = _str(value)
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$", name):
        raise _Invalid(f"{name!r} is not a group name")
    return name


# section -> key -> (dataclass field, parser)
_SCHEMA: dict[str, dict[str, tuple[str, Callable[[Any], Any]]]] = {
    "bridge": {
        "name": ("name", _ifname),
        "uplinks": ("uplinks", _list_of(_uplink)),
        "stp": ("stp", _bool),
        "forward_delay": ("forward_delay", _int_range(0, 30)),
        "mac": ("mac", _bridge_mac),
        "mtu": ("mtu", _int_range(68, 65535)),
        "teardown_on_stop": ("teardown_on_stop", _bool),
    },
    "ip": {
        "mode": ("mode", _ip_mode),
        "addresses": ("addresses", _list_of(_interface_address)),
        "gateway": ("gateways", _str_or_list_of(_ip_address)),
        "dns": ("dns", _list_of(_ip_address)),
    },
    "taps": {
        "prefix": ("prefix", _tap_prefix),
        "allow_groups": ("allow_groups", _list_of(_group)),
        "max_per_user": ("max_per_user", _int_range(0, BRIDGE_MAX_PORTS)),
        "max_total": ("max_total", _int_range(0, BRIDGE_MAX_PORTS)),
        "guard": ("guard", _bool),
    },
    "auth": {
        "polkit": ("polkit", _bool),
    },
}

_SECTION_TYPES: dict[str, type] = {
    "bridge": BridgeConfig,
    "ip": IPConfig,
    "taps": TapsConfig,
    "auth": AuthConfig,
}


def load(path: str) -> Config:
    """Read and check ``path``; raise ConfigError naming the key on any problem."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except PermissionError:
        raise ConfigError(path, "", "permission denied") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a directory, not a file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not valid UTF-8") from None
    return parse(raw, path)


def parse(raw: dict[str, Any], path: str = DEFAULT_PATH) -> Config:
    sections: dict[str, Any] = {}
    for section, body in raw.items():
        if section not in _SCHEMA:
            known = ", ".join(f"[{s}]" for s in _SCHEMA)
            raise ConfigError(path, section, f"unknown section (known: {known})")
        if not isinstance(body, dict):
            raise ConfigError(path, section,
                              f"expected a table [{section}], got {_type_name(body)}")
        values: dict[str, Any] = {}
        for key, value in body.items():
            spec = _SCHEMA[section].get(key)
            if spec is None:
                known = ", ".join(_SCHEMA[section])
                raise ConfigError(path, f"{section}.{key}", f"unknown key (known: {known})")
            field_name, parser = spec
            try:
                values[field_name] = parser(value)
            except _Invalid as e:
                raise ConfigError(path, f"{section}.{key}", str(e)) from None
        sections[section] = _SECTION_TYPES[section](**values)
    config = Config(path=path, **sections)
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    """Rules that involve more than one key."""
    path, bridge, ip, taps = config.path, config.bridge, config.ip, config.taps

    for pattern in bridge.uplinks:
        if pattern.mac is None and fnmatch.fnmatchcase(bridge.name, pattern.text):
            raise ConfigError(
                path, "bridge.uplinks",
                f"{pattern.text!r} matches the bridge {bridge.name!r} itself: "
                "a bridge cannot be its own uplink",
            )
        if pattern.mac is None and fnmatch.fnmatchcase(taps.prefix + "0", pattern.text):
            raise ConfigError(
                path, "bridge.uplinks",
                f"{pattern.text!r} would match bridged's own taps ({taps.prefix}0, ...): "
                "use a narrower pattern or another taps.prefix",
            )
    if bridge.name.startswith(taps.prefix) and bridge.name[len(taps.prefix):].isdigit():
        raise ConfigError(
            path, "taps.prefix",
            f"taps named {taps.prefix}N would collide with the bridge {bridge.name!r}",
        )
    if bridge.stp and bridge.forward_delay < 2:
        raise ConfigError(
            path, "bridge.forward_delay",
            "with stp = true the kernel needs a forward delay of 2 to 30 seconds",
        )
    if ip.mode == "static":
        if not ip.addresses:
            raise ConfigError(path, "ip.addresses", 'mode = "static" needs at least one address')
    else:
        for key, value in (("addresses", ip.addresses), ("gateway", ip.gateways),
                           ("dns", ip.dns)):
            if value:
                raise ConfigError(
                    path, f"ip.{key}",
                    f'only used with mode = "static" (mode is "{ip.mode}"); '
                    "remove it or change the mode",
                )
    families = [g.version for g in ip.gateways]
    if len(families) != len(set(families)):
        raise ConfigError(path, "ip.gateway", "at most one gateway per address family")
    for gateway in ip.gateways:
        on_link = any(gateway in a.network for a in ip.addresses if a.version == gateway.version)
        if not on_link and not gateway.is_link_local:
            raise ConfigError(
                path, "ip.gateway",
                f"{gateway} is not inside any of ip.addresses: the host could not reach it",
            )
    if taps.max_per_user > taps.max_total:
        raise ConfigError(
            path, "taps.max_per_user",
            f"{taps.max_per_user} is more than taps.max_total ({taps.max_total})",
        )
