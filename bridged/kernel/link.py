"""What the kernel layer reports: links, addresses, routes. Plain values."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

RT_SCOPE_UNIVERSE = 0
RTPROT_BOOT = 3  # what `ip route add` uses


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    master: int | None
    up: bool
    operstate: str
    address: str | None
    perm_address: str | None
    alias: str | None
    mtu: int
    family: int = 0


@dataclass(frozen=True)
class Address:
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    scope: int

    @property
    def is_global(self) -> bool:
        return self.scope == RT_SCOPE_UNIVERSE


@dataclass(frozen=True)
class Route:
    destination: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    priority: int | None = None
    protocol: int = RTPROT_BOOT
    scope: int = RT_SCOPE_UNIVERSE

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0
