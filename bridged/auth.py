"""Who may do what. Deny by default.

The caller is who the bus says it is (GetConnectionCredentials): never an argument.
"""

from __future__ import annotations

import grp
import logging
import pwd
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bridged.config import AuthConfig, TapsConfig
from bridged.errors import AccessDenied, NotOwner

log = logging.getLogger(__name__)

POLKIT_ACTION = "org.bridged.Bridged1.use-tap"


@dataclass(frozen=True)
class Caller:
    uid: int
    pid: int
    gids: frozenset[int]
    bus_name: str = ""

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


# Asks polkit whether a bus name may perform an action; None where polkit is off.
PolkitCheck = Callable[[str, str], Awaitable[bool]]


class Authorizer:
    def __init__(self, taps: TapsConfig, auth: AuthConfig,
                 polkit: PolkitCheck | None = None) -> None:
        self.taps = taps
        self.auth = auth
        self._polkit = polkit

    def allowed_gids(self) -> set[int]:
        gids = set()
        for name in self.taps.allow_groups:
            try:
                gids.add(grp.getgrnam(name).gr_gid)
            except KeyError:
                continue  # a group that does not exist admits nobody
        return gids

    async def check_may_create(self, caller: Caller) -> None:
        if caller.uid == 0:
            return
        if caller.gids & self.allowed_gids():
            return
        if self.auth.polkit and self._polkit is not None and caller.bus_name:
            if await self._polkit(caller.bus_name, POLKIT_ACTION):
                return
            raise AccessDenied(
                f"user {caller.user} may not create taps: not in group "
                f"{' or '.join(self.taps.allow_groups)} and polkit did not authorize "
                f"{POLKIT_ACTION}"
            )
        groups = " or ".join(self.taps.allow_groups) or "(none configured)"
        first = self.taps.allow_groups[0] if self.taps.allow_groups else "bridged"
        raise AccessDenied(
            f"user {caller.user} may not create taps: only root and members of group "
            f"{groups} may (usermod -aG {first} {caller.user}, then log in again)"
        )

    @staticmethod
    def check_may_change(caller: Caller, owner_uid: int, ifname: str) -> None:
        if caller.uid in (0, owner_uid):
            return
        raise NotOwner(f"{ifname} belongs to uid {owner_uid}; only its owner or root may "
                       f"release or change it")
