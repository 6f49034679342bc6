"""The bus connection: exports the objects, knows who is calling, serves OpenTap.

dbus-fast's ``@method`` handlers never see the Message, so a message handler stores
each incoming call in a ContextVar; the Task that runs an ``async`` method copies the
context and so sees its own message. The caller's identity then comes from the bus
(GetConnectionCredentials), never from an argument.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections import OrderedDict
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from bridged.auth import Caller
from bridged.bridge import BridgeManager
from bridged.bus.interfaces import (
    BUS_NAME,
    MANAGER_IFACE,
    ROOT_PATH,
    BridgeInterface,
    ManagerInterface,
    TapInterface,
    bridge_path,
    tap_path,
    translate,
    unpack_options,
)
from bridged.errors import AccessDenied, BridgedError
from bridged.kernel import tun
from bridged.taps import Tap, TapRegistry, parse_options

PROPERTIES_BATCH_S = 0.02
log = logging.getLogger(__name__)

_current_message: contextvars.ContextVar[Message] = contextvars.ContextVar("current_message")

# Unique bus names are never reused while the bus runs, so credentials can be cached;
# the bound keeps a long-lived daemon's memory flat.
CREDENTIALS_CACHE = 4096


class NameTaken(Exception):
    pass


class BusService:
    def __init__(self, address: str | None, bridge: BridgeManager, taps: TapRegistry) -> None:
        self._address = address
        self._bridge = bridge
        self._taps = taps
        self.bus: MessageBus | None = None
        self._credentials: OrderedDict[str, Caller] = OrderedDict()
        self.manager = ManagerInterface(taps, bridge, self.current_caller)
        self.bridge_iface = BridgeInterface(bridge)
        self._tap_ifaces: dict[str, TapInterface] = {}
        self._bridge_props: dict[str, Any] = {}
        self._manager_props: dict[str, Any] = {}
        self._flush_pending = False

    async def start(self) -> None:
        kwargs: dict[str, Any] = {"bus_type": BusType.SYSTEM, "negotiate_unix_fd": True}
        if self._address:
            kwargs["bus_address"] = self._address
        self.bus = bus = await MessageBus(**kwargs).connect()
        bus.add_message_handler(self._on_message)
        bus.export(ROOT_PATH, self.manager)
        bus.export(bridge_path(self._bridge.config.name), self.bridge_iface)
        for tap in self._taps.taps.values():
            self._export_tap(tap, announce=False)
        self._taps.on_added.append(self._export_tap_soon)
        self._taps.on_removed.append(self._unexport_tap)
        self._bridge.on_change.append(self._properties_changed)
        self._bridge.on_uplink_changed.append(self._uplink_changed)
        self._bridge_props = self.bridge_iface.snapshot()
        self._manager_props = self._manager_snapshot()
        reply = await bus.request_name(BUS_NAME)
        if reply.value not in (1, 4):  # PRIMARY_OWNER, ALREADY_OWNER
            raise NameTaken(f"{BUS_NAME} is already owned by another process")

    def stop(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()

    # --- who is calling ----------------------------------------------------------------

    def _on_message(self, msg: Message) -> bool | None:
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        _current_message.set(msg)
        if msg.interface == MANAGER_IFACE and msg.member == "OpenTap" and \
                msg.path == ROOT_PATH and msg.signature == "a{sv}":
            asyncio.get_running_loop().create_task(self._open_tap(msg))
            return True
        return None  # the exported interfaces handle it

    async def current_caller(self) -> Caller:
        return await self.caller_of(_current_message.get().sender)

    async def caller_of(self, sender: str) -> Caller:
        cached = self._credentials.get(sender)
        if cached is not None:
            return cached
        assert self.bus is not None
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionCredentials",
            signature="s", body=[sender],
        ))
        if reply is None or reply.message_type == MessageType.ERROR:
            # Deny by default: a caller we cannot identify gets nothing.
            raise AccessDenied("the bus could not tell who is calling")
        creds: dict[str, Variant] = reply.body[0]
        if "UnixUserID" not in creds:
            raise AccessDenied("the bus could not tell who is calling")
        caller = Caller(
            uid=creds["UnixUserID"].value,
            pid=creds["ProcessID"].value if "ProcessID" in creds else 0,
            gids=frozenset(creds["UnixGroupIDs"].value if "UnixGroupIDs" in creds else ()),
            bus_name=sender,
        )
        self._credentials[sender] = caller
        if len(self._credentials) > CREDENTIALS_CACHE:
            self._credentials.popitem(last=False)
        return caller

    async def polkit_allows(self, sender: str, action: str) -> bool:
        """CheckAuthorization without interaction; False when polkit is not there."""
        assert self.bus is not None
        reply = await self.bus.call(Message(
            destination="org.freedesktop.PolicyKit1",
            path="/org/freedesktop/PolicyKit1/Authority",
            interface="org.freedesktop.PolicyKit1.Authority", member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[["system-bus-name", {"name": Variant("s", sender)}], action, {}, 0, ""],
        ))
        if reply is None or reply.message_type == MessageType.ERROR:
            log.warning("polkit check for %s failed: %s", sender,
                        reply.body if reply is not None else "no reply")
            return False
        return bool(reply.body[0][0])

    # --- OpenTap: fds in the reply, closed only once it is sent -------------------------

    async def _open_tap(self, msg: Message) -> None:
        assert self.bus is not None
        fds: list[int] = []
        try:
            async def run() -> tuple[Tap, list[int]]:
                request = parse_options(unpack_options(msg.body[0]), persistent=False)
                return await self._taps.open(await self.caller_of(msg.sender), request)

            tap, fds = await translate(run())
            reply = Message.new_method_return(
                msg, "osah", [tap_path(tap.name), tap.name, list(range(len(fds)))],
                unix_fds=fds,
            )
        except DBusError as e:
            reply = Message.new_error(msg, e.type, e.text)
        try:
            await self.bus.send(reply)
        finally:
            # Our copies go now; the tap lives on through the client's.
            tun.close_all(fds)

    # --- objects and signals -----------------------------------------------------------

    def _export_tap_soon(self, tap: Tap) -> None:
        # After the current step: OpenTap's reply goes out first, and nothing the
        # client sends next is read before the object exists (call_soon runs first).
        asyncio.get_running_loop().call_soon(self._export_if_alive, tap)

    def _export_if_alive(self, tap: Tap) -> None:
        if self._taps.taps.get(tap.name) is tap:  # not already gone again
            self._export_tap(tap)

    def _export_tap(self, tap: Tap, announce: bool = True) -> None:
        if self.bus is None or tap.name in self._tap_ifaces:
            return
        iface = TapInterface(tap, self._taps, self.current_caller)
        self._tap_ifaces[tap.name] = iface
        self.bus.export(tap_path(tap.name), iface)
        if announce:
            self.manager.TapAdded(tap_path(tap.name), tap.name)
        self._properties_changed()

    def _unexport_tap(self, tap: Tap) -> None:
        iface = self._tap_ifaces.pop(tap.name, None)
        if self.bus is None or iface is None:
            return
        self.bus.unexport(tap_path(tap.name), iface)
        self.manager.TapRemoved(tap_path(tap.name), tap.name)
        self._properties_changed()

    def _uplink_changed(self, ifname: str, state: str) -> None:
        if self.bus is not None:
            self.bridge_iface.UplinkChanged(ifname, state)

    def _manager_snapshot(self) -> dict[str, Any]:
        return {"State": self._bridge.state.value, "TapCount": len(self._taps.taps)}

    def _properties_changed(self) -> None:
        """Emit PropertiesChanged once for all changes of the next few milliseconds: a
        tap's creation brings several link events, each of which lands here, and with a
        thousand taps the Bridge's Ports array is costly to send for every one."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_later(PROPERTIES_BATCH_S, self._flush_properties)

    def _flush_properties(self) -> None:
        self._flush_pending = False
        if self.bus is None or not self.bus.connected:
            return
        for iface, old, new in (
            (self.manager, self._manager_props, self._manager_snapshot()),
            (self.bridge_iface, self._bridge_props, self.bridge_iface.snapshot()),
        ):
            changed = {k: v for k, v in new.items() if old.get(k) != v}
            if changed:
                old.update(changed)
                iface.emit_properties_changed(changed, [])


def bus_address_from_env(explicit: str | None) -> str | None:
    return explicit or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or None


__all__ = ["BridgedError", "BusService", "NameTaken", "bus_address_from_env"]
