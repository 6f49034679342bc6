"""What the kernel layer reports about a network interface."""

from __future__ import annotations

from dataclasses import dataclass


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
