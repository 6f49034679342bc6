"""The client side of the D-Bus API, used by bridgectl (and by the benchmark).

Clients speak to the daemon only over the bus; nothing here touches the kernel.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from bridged.api import (
    BRIDGE,
    BUS_NAME,
    ERROR_PREFIX,
    MANAGER,
    OBJECT_MANAGER,
    PROPERTIES,
    ROOT_PATH,
    TAP,
    TAP_OPTIONS,
)
from bridged.bus import compat

__all__ = ["BRIDGE", "MANAGER", "TAP", "Client", "ClientError", "OpenedTap", "unwrap"]

# The most fds Linux passes in one message (SCM_MAX_FD).
_MAX_FDS = 253


class ClientError(Exception):
    """A failed call, with the daemon's error name (short form) and message."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name.removeprefix(ERROR_PREFIX)
        self.message = message


class _WideFdSocket(socket.socket):
    """A socket whose recvmsg always leaves room for many fds.

    dbus-fast before 2.x (Debian 12 ships 1.84) sizes its ancillary buffer for one fd, so
    the kernel truncates a multi-queue OpenTap reply to its first fd (MSG_CTRUNC) and
    closes the rest. Reading through a dup of the bus socket with a larger buffer fixes
    that without touching the library.
    """

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0,
                ) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        return super().recvmsg(bufsize, max(ancbufsize, socket.CMSG_LEN(4 * _MAX_FDS)), flags)


@dataclass(frozen=True)
class OpenedTap:
    path: str
    ifname: str
    fds: list[int]


def unwrap(value: Any) -> Any:
    """Plain Python values from a tree of Variants."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def tap_options(options: dict[str, Any]) -> dict[str, Variant]:
    return {key: Variant(TAP_OPTIONS[key], value) for key, value in options.items()
            if value is not None}


class Client:
    """One connection to the system bus (or ``address``) talking to bridged."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    @classmethod
    async def connect(cls, address: str | None = None) -> Client:
        # DBUS_SYSTEM_BUS_ADDRESS is honoured by dbus-fast when no address is given.
        where = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "the system bus"
        try:
            bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM,
                             negotiate_unix_fd=True)
            plain = bus._sock
            if plain is not None:
                # Versions that connect in the constructor are the ones with the
                # one-fd receive buffer; newer ones connect in connect() and are fixed.
                wide = _WideFdSocket(plain.family, plain.type, fileno=os.dup(plain.fileno()))
                wide.setblocking(False)
                bus._sock = wide
            await bus.connect()
        except (OSError, ValueError) as exc:
            raise ClientError("NoBus", f"cannot connect to {where}: {exc}") from exc
        return cls(bus)

    def close(self) -> None:
        self.bus.disconnect()

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None) -> Message:
        # prepare(): dbus-fast 1.x mis-sizes non-ASCII strings (a label), and the bus
        # would drop us for the malformed message.
        reply = await self.bus.call(compat.prepare(Message(
            destination=BUS_NAME, path=path, interface=interface, member=member,
            signature=signature, body=body or [])))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else reply.error_name
            if reply.error_name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                                    "org.freedesktop.DBus.Error.NameHasNoOwner"):
                text = "bridged is not running (no owner of org.bridged.Bridged1 on the bus)"
            raise ClientError(reply.error_name or "Failed", str(text))
        return reply

    async def open_tap(self, options: dict[str, Any]) -> OpenedTap:
        reply = await self.call(ROOT_PATH, MANAGER, "OpenTap", "a{sv}", [tap_options(options)])
        path, ifname, indexes = reply.body
        fds = [reply.unix_fds[i] for i in indexes]
        # Anything the message carried that is not one of our queues is closed, not leaked.
        for fd in set(reply.unix_fds) - set(fds):
            os.close(fd)
        return OpenedTap(path, ifname, fds)

    async def create_tap(self, options: dict[str, Any]) -> tuple[str, str]:
        reply = await self.call(ROOT_PATH, MANAGER, "CreateTap", "a{sv}",
                                [tap_options(options)])
        return reply.body[0], reply.body[1]

    async def release_tap(self, ifname: str) -> None:
        await self.call(ROOT_PATH, MANAGER, "ReleaseTap", "s", [ifname])

    async def retry(self) -> None:
        await self.call(ROOT_PATH, MANAGER, "Retry")

    async def objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every object the daemon exports: path -> interface -> properties."""
        reply = await self.call(ROOT_PATH, OBJECT_MANAGER, "GetManagedObjects")
        return unwrap(reply.body[0])  # type: ignore[no-any-return]

    async def manager_properties(self) -> dict[str, Any]:
        reply = await self.call(ROOT_PATH, PROPERTIES, "GetAll", "s", [MANAGER])
        return unwrap(reply.body[0])  # type: ignore[no-any-return]
