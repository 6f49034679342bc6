# No "from __future__ import annotations": dbus-fast reads D-Bus signatures from the
# annotation strings themselves.
"""The D-Bus interfaces: unpack, authorize, call the logic, map errors. Nothing more."""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import Variant
from dbus_fast.constants import PropertyAccess
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

from bridged import __version__
from bridged.auth import Caller
from bridged.bridge import BridgeManager
from bridged.errors import ERROR_PREFIX, BridgedError
from bridged.kernel.link import Link
from bridged.taps import Tap, TapRegistry, parse_options

log = logging.getLogger(__name__)

BUS_NAME = "org.bridged.Bridged1"
ROOT_PATH = "/org/bridged/Bridged1"
MANAGER_IFACE = "org.bridged.Bridged1.Manager"
BRIDGE_IFACE = "org.bridged.Bridged1.Bridge"
TAP_IFACE = "org.bridged.Bridged1.Tap"

CallerLookup = Callable[[], Awaitable[Caller]]


def escape_label(name: str) -> str:
    """An object path element from an interface name (systemd's bus_label_escape)."""
    return "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in name)


def tap_path(name: str) -> str:
    return f"{ROOT_PATH}/tap/{escape_label(name)}"


def bridge_path(name: str) -> str:
    return f"{ROOT_PATH}/bridge/{escape_label(name)}"


def unpack_options(options: dict[str, Variant]) -> dict[str, tuple[str, Any]]:
    return {key: (variant.signature, variant.value) for key, variant in options.items()}


async def translate(call: Awaitable[Any]) -> Any:
    """Our errors become named D-Bus errors; anything else a generic one, logged here."""
    try:
        return await call
    except BridgedError as e:
        # ASCII only: dbus-fast 1.84 (Debian 12) mis-sizes non-ASCII strings, and the bus
        # then drops our connection.
        text = str(e).encode("ascii", "backslashreplace").decode()
        raise DBusError(e.dbus_name, text) from None
    except DBusError:
        raise
    except Exception:
        log.exception("internal error while serving a request")
        raise DBusError(ERROR_PREFIX + "Failed",
                        "internal error in bridged; see 'journalctl -u bridged'") from None


class ManagerInterface(ServiceInterface):  # type: ignore[misc]
    def __init__(self, taps: TapRegistry, bridge: BridgeManager, caller: CallerLookup) -> None:
        super().__init__(MANAGER_IFACE)
        self._taps = taps
        self._bridge = bridge
        self._caller = caller

    @method()
    def OpenTap(self, options: "a{sv}") -> "osah":
        # Served by BusService's own handler, which must close the fds after the
        # reply is on the wire; declared here so introspection shows it.
        raise DBusError(ERROR_PREFIX + "Failed", "OpenTap is served elsewhere")

    @method()
    async def CreateTap(self, options: "a{sv}") -> "os":
        async def run() -> list[str]:
            request = parse_options(unpack_options(options), persistent=True)
            tap = await self._taps.create(await self._caller(), request)
            return [tap_path(tap.name), tap.name]
        return await translate(run())

    @method()
    async def ReleaseTap(self, ifname: "s") -> "":
        async def run() -> None:
            await self._taps.release(await self._caller(), ifname)
        await translate(run())

    @method()
    def ListTaps(self) -> "ao":
        return [tap_path(name) for name in sorted(self._taps.taps)]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return __version__

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":
        return self._bridge.state.value

    @dbus_property(access=PropertyAccess.READ)
    def Bridge(self) -> "o":
        return bridge_path(self._bridge.config.name)

    @dbus_property(access=PropertyAccess.READ)
    def TapCount(self) -> "u":
        return len(self._taps.taps)

    @signal()
    def TapAdded(self, tap: str, ifname: str) -> "os":
        return [tap, ifname]

    @signal()
    def TapRemoved(self, tap: str, ifname: str) -> "os":
        return [tap, ifname]


class BridgeInterface(ServiceInterface):  # type: ignore[misc]
    def __init__(self, bridge: BridgeManager) -> None:
        super().__init__(BRIDGE_IFACE)
        self._bridge = bridge

    def _link_field(self, read: Callable[[Link], Any], absent: Any) -> Any:
        link = self._bridge.bridge
        return read(link) if link is not None else absent

    def values(self) -> dict[str, Callable[[], Any]]:
        """How to read each property, one at a time (a Get reads one, not all)."""
        bridge, config = self._bridge, self._bridge.config
        return {
            "Name": lambda: config.name,
            "Index": lambda: self._link_field(lambda link: link.index, 0),
            "MACAddress": lambda: self._link_field(lambda link: link.address or "", ""),
            "MTU": lambda: self._link_field(lambda link: link.mtu, 0),
            "STP": lambda: config.stp,
            "ForwardDelay": lambda: config.forward_delay,
            "OperState": lambda: self._link_field(lambda link: link.operstate.lower(), "absent"),
            "Uplinks": lambda: [p.text for p in config.uplinks],
            "Ports": lambda: [p.name for p in bridge.ports()],
            "Addresses": lambda: sorted(str(a.interface) for a in bridge.addresses
                                        if a.is_global),
        }

    def snapshot(self) -> dict[str, Any]:
        """Every property's current value, to emit PropertiesChanged for what moved."""
        return {name: read() for name, read in self.values().items()}

    def _get(self, name: str) -> Any:
        return self.values()[name]()

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self._get("Name")

    @dbus_property(access=PropertyAccess.READ)
    def Index(self) -> "i":
        return self._get("Index")

    @dbus_property(access=PropertyAccess.READ)
    def MACAddress(self) -> "s":
        return self._get("MACAddress")

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> "u":
        return self._get("MTU")

    @dbus_property(access=PropertyAccess.READ)
    def STP(self) -> "b":
        return self._get("STP")

    @dbus_property(access=PropertyAccess.READ)
    def ForwardDelay(self) -> "u":
        return self._get("ForwardDelay")

    @dbus_property(access=PropertyAccess.READ)
    def OperState(self) -> "s":
        return self._get("OperState")

    @dbus_property(access=PropertyAccess.READ)
    def Uplinks(self) -> "as":
        return self._get("Uplinks")

    @dbus_property(access=PropertyAccess.READ)
    def Ports(self) -> "as":
        return self._get("Ports")

    @dbus_property(access=PropertyAccess.READ)
    def Addresses(self) -> "as":
        return self._get("Addresses")

    @signal()
    def UplinkChanged(self, ifname: str, state: str) -> "ss":
        return [ifname, state]


class TapInterface(ServiceInterface):  # type: ignore[misc]
    def __init__(self, tap: Tap, taps: TapRegistry, caller: CallerLookup) -> None:
        super().__init__(TAP_IFACE)
        self._tap = tap
        self._taps = taps
        self._caller = caller

    @method()
    async def Release(self) -> "":
        async def run() -> None:
            await self._taps.release(await self._caller(), self._tap.name)
        await translate(run())

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self._tap.name

    @dbus_property(access=PropertyAccess.READ)
    def Index(self) -> "i":
        return self._tap.index

    @dbus_property(access=PropertyAccess.READ)
    def OwnerUID(self) -> "u":
        return self._tap.owner_uid

    @dbus_property(access=PropertyAccess.READ)
    def Label(self) -> "s":
        return self._tap.label

    @dbus_property(access=PropertyAccess.READ)
    def ClientPID(self) -> "u":
        return self._tap.client_pid

    @dbus_property(access=PropertyAccess.READ)
    def Persistent(self) -> "b":
        return self._tap.persistent

    @dbus_property(access=PropertyAccess.READ)
    def Queues(self) -> "u":
        return self._tap.queues

    @dbus_property(access=PropertyAccess.READ)
    def VnetHdr(self) -> "b":
        return self._tap.vnet_hdr

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> "u":
        return self._tap.mtu

    @dbus_property(access=PropertyAccess.READ)
    def VLAN(self) -> "q":
        return self._tap.vlan

    @dbus_property(access=PropertyAccess.READ)
    def Isolated(self) -> "b":
        return self._tap.isolated

    @dbus_property(access=PropertyAccess.READ)
    def CreatedAt(self) -> "t":
        return self._tap.created_at_us

