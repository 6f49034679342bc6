"""The bus connection and one explicit dispatch for every call to bridged's objects.

Each method call is checked against ``spec`` (object, interface, member, signature),
then handed to a handler that gets the caller as an argument, with the caller's
identity taken from the bus (GetConnectionCredentials), never from the message. Every
handler and property getter answers through the same error mapping, so a caller sees a
named error with words, never a traceback. No method takes file descriptors: any that
arrive with a message are closed at once.

bridged serves Introspectable, Properties, ObjectManager and Peer for its objects
itself (rather than through dbus-fast's ServiceInterface), so a tap's object costs a
dict entry, and every answer to a call is one bridged built.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from bridged import __version__, api, pacing
from bridged.auth import Caller
from bridged.bridge import BridgeManager
from bridged.bus import compat, spec
from bridged.errors import AccessDenied, BridgedError
from bridged.kernel import tun
from bridged.overlay import Overlay
from bridged.taps import Tap, TapRegistry, parse_options

log = logging.getLogger(__name__)

PROPERTIES_BATCH_S = 0.02
# Unique bus names are never reused while the bus runs, so credentials can be cached;
# the bound keeps a long-lived daemon's memory flat.
CREDENTIALS_CACHE = 4096
DBUS_ERROR = "org.freedesktop.DBus.Error."
MACHINE_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id")


class NameTaken(Exception):
    pass


class CallError(Exception):
    """A standard D-Bus error about the call itself (no such method, bad arguments)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = DBUS_ERROR + name


Handler = Callable[[Message, Caller], Awaitable[tuple[str, list[Any], list[int]]]]


class BusService:
    def __init__(self, address: str | None, bridge: BridgeManager, taps: TapRegistry,
                 state: Callable[[], str], retry: Callable[[], Awaitable[None]],
                 status_text: Callable[[], str], overlay: Overlay) -> None:
        self._address = address
        self._bridge = bridge
        self._overlay = overlay
        self._taps = taps
        self._state = state
        self._status_text = status_text
        self._retry = retry
        self.bus: MessageBus | None = None
        self._credentials: OrderedDict[str, Caller] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._paths: dict[str, str] = {}  # tap object path -> tap name
        self._sent: dict[str, dict[str, Any]] = {}  # interface -> properties last announced
        self._flush_pending = False
        self._ports_announced = 0  # the bridge's ports_version last announced
        self._machine_id_text: str | None = None
        self._handlers: dict[tuple[str, str], Handler] = {
            (api.MANAGER, "OpenTap"): self._open_tap,
            (api.MANAGER, "CreateTap"): self._create_tap,
            (api.MANAGER, "ReleaseTap"): self._release_tap,
            (api.MANAGER, "Retry"): self._retry_move,
            (api.TAP, "Release"): self._release_this_tap,
        }

    # --- connection --------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect to the bus (before the bridge is set up: other network managers are
        told over it which links are bridged's); serve() answers calls later."""
        kwargs: dict[str, Any] = {"bus_type": BusType.SYSTEM, "negotiate_unix_fd": True}
        if self._address:
            kwargs["bus_address"] = self._address
        self.bus = await MessageBus(**kwargs).connect()
        compat.install(self.bus)

    async def serve(self) -> None:
        """Answer calls and take the bus name: the daemon is now reachable.

        The daemon subscribes tap_added/tap_removed before calling this: the objects are
        taken from the registry here, before the await, and the subscription keeps them
        true during it (a tap gone meanwhile must not stay an object nothing backs).
        """
        assert self.bus is not None
        self.bus.add_message_handler(self._on_message)
        self._paths = {api.tap_path(name): name for name in self._taps.taps}
        self._sent = {api.MANAGER: self._manager_values(), api.BRIDGE: self._bridge_values()}
        reply = await self.bus.request_name(api.BUS_NAME)
        if reply.value not in (1, 4):  # PRIMARY_OWNER, ALREADY_OWNER
            raise NameTaken(f"{api.BUS_NAME} is already owned by another process")

    def stop(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()

    def _send(self, message: Message) -> asyncio.Future[None] | None:
        if self.bus is None or not self.bus.connected:
            return None
        sent = self.bus.send(message)
        if not isinstance(sent, asyncio.Future):
            return None
        # A broken connection is noticed by the daemon's bus watch; don't leave the
        # exception unretrieved here.
        sent.add_done_callback(lambda f: f.cancelled() or f.exception())
        return sent

    # --- who is calling ----------------------------------------------------------------

    async def caller_of(self, sender: str) -> Caller:
        cached = self._credentials.get(sender)
        if cached is not None:
            return cached
        assert self.bus is not None
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionCredentials",
            signature="s", body=[sender]))
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
            bus_name=sender)
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
            body=[["system-bus-name", {"name": Variant("s", sender)}], action, {}, 0, ""]))
        if reply is None or reply.message_type == MessageType.ERROR:
            log.warning("polkit check for %s failed: %s", sender,
                        reply.body if reply is not None else "no reply")
            return False
        return bool(reply.body[0][0])

    # --- dispatch ----------------------------------------------------------------------

    def _on_message(self, msg: Message) -> bool | None:
        fds = msg.unix_fds
        if fds:
            # Nothing bridged serves or calls takes a file descriptor; each one left
            # open would be a descriptor a caller made us hold forever.
            tun.close_all(list(fds))
            msg.unix_fds = []
        if msg.message_type is not MessageType.METHOD_CALL:
            return None  # replies and signals: the library's
        try:
            if fds:
                raise CallError("InvalidArgs", "bridged takes no file descriptors")
            key = self._method_key(msg)
            handler = self._handlers.get(key)
            if handler is None:
                self._reply(msg, *self._serve_now(msg, key))
                return True
        except Exception as e:
            self._reply_error(msg, e)
            return True
        # Begun in a later slice: a hundred calls read at once are not one turn's work
        # ahead of the next client's (see pacing).
        pacing.spawn(self._serve_later(msg, handler), self._tasks)
        return True

    def _interfaces_at(self, path: str) -> tuple[spec.Interface, ...] | None:
        if path == api.ROOT_PATH:
            return spec.MANAGER, spec.OBJECT_MANAGER
        if path == api.bridge_path(self._bridge.config.name):
            return (spec.BRIDGE,)
        if path in self._paths:
            return (spec.TAP,)
        return None

    def _method_key(self, msg: Message) -> tuple[str, str]:
        path, member = msg.path or "", msg.member or ""
        ours = self._interfaces_at(path)
        if msg.interface == api.PEER:
            # Peer is the connection's, at any path. Served here rather than by the
            # library: its GetMachineId asks the bus, which the system bus policy refuses,
            # and dbus-fast 1.84 then fails building the error and never answers.
            iface = spec.PEER
        elif ours is None:
            # Only introspection reaches the nodes above and between our objects.
            if msg.interface in (None, api.INTROSPECTABLE) and member == "Introspect":
                iface = spec.INTROSPECTABLE
            else:
                raise CallError("UnknownObject", f"no object at {path}")
        else:
            served = (*ours, spec.PROPERTIES, spec.INTROSPECTABLE, spec.PEER)
            if msg.interface:
                found = next((i for i in served if i.name == msg.interface), None)
                if found is None:
                    raise CallError("UnknownInterface",
                                    f"{path} has no interface {msg.interface}")
            else:  # the interface field is optional in a call: the member decides
                found = next((i for i in served if i.method(member) is not None), None)
                if found is None:
                    raise CallError("UnknownMethod", f"{path} has no method {member}")
            iface = found
        method = iface.method(member)
        if method is None:
            raise CallError("UnknownMethod", f"{iface.name} has no method {member}")
        if (msg.signature or "") != method.in_signature:
            raise CallError("InvalidArgs", f"{iface.name}.{member} takes "
                            f"'{method.in_signature}', not '{msg.signature}'")
        return iface.name, member

    def _serve_now(self, msg: Message, key: tuple[str, str]) -> tuple[str, list[Any]]:
        """The calls answered at once, without asking who calls: reading is for anyone."""
        path = msg.path or ""
        if key == (api.PEER, "Ping"):
            return "", []
        if key == (api.PEER, "GetMachineId"):
            return "s", [self._machine_id()]
        if key == (api.INTROSPECTABLE, "Introspect"):
            return "s", [self._introspect(path)]
        if key == (api.MANAGER, "ListTaps"):
            return "ao", [[api.tap_path(name) for name in sorted(self._taps.taps)]]
        if key == (api.OBJECT_MANAGER, "GetManagedObjects"):
            return "a{oa{sa{sv}}}", [self._managed_objects()]
        if key == (api.PROPERTIES, "Get"):
            interface, name = msg.body
            getter = self._properties_at(path, interface).get(name)
            if getter is None:
                raise CallError("UnknownProperty", f"{interface} has no property {name}")
            return "v", [Variant(getter[0], getter[1]())]
        if key == (api.PROPERTIES, "GetAll"):
            return "a{sv}", [self._values_at(path, msg.body[0])]
        if key == (api.PROPERTIES, "Set"):
            interface, name, _value = msg.body
            if name not in self._properties_at(path, interface):
                raise CallError("UnknownProperty", f"{interface} has no property {name}")
            raise CallError("PropertyReadOnly", f"{interface}.{name} is read-only")
        raise CallError("UnknownMethod", f"{key[0]} has no method {key[1]}")

    async def _serve_later(self, msg: Message, handler: Handler) -> None:
        """A call that changes something: it needs to know who is calling."""
        fds: list[int] = []
        try:
            caller = await self.caller_of(msg.sender or "")
            signature, body, fds = await handler(msg, caller)
            if fds and self.bus is not None:
                # Ours close as the reply carries the fds out (see compat.hand_over).
                compat.hand_over(self.bus, fds)
            sent = self._reply(msg, signature, body, fds)
            if fds and sent is not None:
                await sent
        except Exception as e:
            self._reply_error(msg, e)
        finally:
            # Fds no reply carried are the tap's last: closing them blocks while the
            # kernel unregisters it (~16 ms), so not here.
            if fds:
                self._taps.close_fds(compat.take_back(self.bus, fds))

    def _reply(self, msg: Message, signature: str, body: list[Any],
               fds: list[int] | None = None) -> asyncio.Future[None] | None:
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return None
        return self._send(Message.new_method_return(msg, signature, body, unix_fds=fds or []))

    def _reply_error(self, msg: Message, error: Exception) -> None:
        """The one error mapping: named errors with words, never a traceback."""
        if isinstance(error, BridgedError):
            name, text = error.dbus_name, str(error)
        elif isinstance(error, CallError):
            name, text = error.name, str(error)
        else:
            log.error("internal error serving %s.%s from %s", msg.interface, msg.member,
                      msg.sender, exc_info=error, extra={"BRIDGED_EVENT": "internal-error"})
            name = api.ERROR_PREFIX + "Failed"
            text = "internal error in bridged; see 'journalctl -u bridged'"
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self._send(Message.new_error(msg, name, compat.error_text(text)))

    def _machine_id(self) -> str:
        if self._machine_id_text is None:
            for path in MACHINE_ID_PATHS:
                try:
                    with open(path) as f:
                        text = f.read(64).strip()
                except OSError:
                    continue
                if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
                    self._machine_id_text = text
                    break
            else:
                raise CallError("Failed", "this host has no machine id (/etc/machine-id)")
        return self._machine_id_text

    # --- handlers that change something ---------------------------------------------------

    async def _open_tap(self, msg: Message, caller: Caller) -> tuple[str, list[Any], list[int]]:
        request = parse_options(unpack(msg.body[0]), persistent=False)
        tap, fds = await self._taps.open(caller, request)
        return "osah", [api.tap_path(tap.name), tap.name, list(range(len(fds)))], fds

    async def _create_tap(self, msg: Message, caller: Caller) -> tuple[str, list[Any], list[int]]:
        request = parse_options(unpack(msg.body[0]), persistent=True)
        tap = await self._taps.create(caller, request)
        return "os", [api.tap_path(tap.name), tap.name], []

    async def _release_tap(self, msg: Message, caller: Caller) -> tuple[str, list[Any], list[int]]:
        await self._taps.release(caller, msg.body[0])
        return "", [], []

    async def _retry_move(self, msg: Message, caller: Caller) -> tuple[str, list[Any], list[int]]:
        if caller.uid != 0:
            raise AccessDenied("only root may retry the IP move (it changes the host's "
                               "network): run 'bridgectl retry' as root")
        await self._retry()
        return "", [], []

    async def _release_this_tap(self, msg: Message,
                                caller: Caller) -> tuple[str, list[Any], list[int]]:
        name = self._paths.get(msg.path or "")
        if name is None:
            raise CallError("UnknownObject", f"no object at {msg.path}")
        await self._taps.release(caller, name)
        return "", [], []

    # --- objects and properties ----------------------------------------------------------

    def _manager_values(self) -> dict[str, Any]:
        return {name: read() for name, (_sig, read) in self._manager_properties().items()}

    def _bridge_values(self) -> dict[str, Any]:
        """What PropertiesChanged announces with its value."""
        announced = {p.name for p in spec.BRIDGE.properties if p.emits == "true"}
        return {name: read() for name, (_sig, read) in self._bridge_properties().items()
                if name in announced}

    def _manager_properties(self) -> dict[str, tuple[str, Callable[[], Any]]]:
        return {
            "Version": ("s", lambda: __version__),
            "State": ("s", self._state),
            "Bridge": ("o", lambda: api.bridge_path(self._bridge.config.name)),
            "TapCount": ("u", lambda: len(self._taps.taps)),
            "StatusText": ("s", self._status_text),
        }

    def _bridge_properties(self) -> dict[str, tuple[str, Callable[[], Any]]]:
        bridge, config = self._bridge, self._bridge.config

        def link(read: Callable[[Any], Any], absent: Any) -> Callable[[], Any]:
            return lambda: read(bridge.bridge) if bridge.bridge is not None else absent

        return {
            "Name": ("s", lambda: config.name),
            "Index": ("i", link(lambda b: b.index, 0)),
            "MACAddress": ("s", link(lambda b: b.address or "", "")),
            "MTU": ("u", link(lambda b: b.mtu, 0)),
            "STP": ("b", lambda: config.stp),
            "ForwardDelay": ("u", lambda: config.forward_delay),
            "OperState": ("s", link(lambda b: b.operstate.lower(), "absent")),
            "Uplinks": ("as", lambda: [p.text for p in config.uplinks]),
            "Ports": ("as", lambda: [p.name for p in bridge.ports()]),
            "ForeignPorts": ("as", lambda: [p.name for p in bridge.foreign_ports()]),
            "Addresses": ("as", lambda: sorted(str(a.interface) for a in bridge.addresses
                                               if a.is_global)),
            # Seconds left of each lease: it changes every second, so it is read, not
            # announced (PropertiesChanged leaves it out).
            "Leases": ("a{su}", bridge.leases),
            **self._overlay_properties(),
        }

    def _overlay_properties(self) -> dict[str, tuple[str, Callable[[], Any]]]:
        overlay = self._overlay

        def vxlan(read: Callable[[Any], Any], absent: Any) -> Callable[[], Any]:
            return lambda: read(overlay.config) if overlay.config is not None else absent

        def underlay() -> str:
            link = overlay.underlay_link() if overlay.config is not None else None
            return link.name if link is not None else ""

        return {
            "VNI": ("u", vxlan(lambda c: c.vni, 0)),
            "VxlanDevice": ("s", vxlan(lambda c: c.device_name, "")),
            "VxlanLocal": ("s", vxlan(lambda c: str(c.local), "")),
            "VxlanControl": ("s", vxlan(lambda c: c.control or "static", "")),
            "VxlanUnderlay": ("s", underlay),
            "VxlanPeers": ("as", vxlan(lambda c: [str(p) for p in c.peers], [])),
            "VxlanLearnedPeers": ("as", lambda: [str(r.address) for r in overlay.remotes()
                                                 if r.learned]),
            "VxlanRemotes": ("a(sbbuu)", lambda: [
                [str(r.address), r.configured, r.flood, r.entries, r.macs]
                for r in overlay.remotes()]),
            "VxlanProblem": ("s", lambda: overlay.problem or ""),
        }

    @staticmethod
    def _tap_properties(tap: Tap) -> dict[str, tuple[str, Callable[[], Any]]]:
        return {
            "Name": ("s", lambda: tap.name), "Index": ("i", lambda: tap.index),
            "OwnerUID": ("u", lambda: tap.owner_uid), "Label": ("s", lambda: tap.label),
            "ClientPID": ("u", lambda: tap.client_pid),
            "Persistent": ("b", lambda: tap.persistent), "Queues": ("u", lambda: tap.queues),
            "VnetHdr": ("b", lambda: tap.vnet_hdr), "MTU": ("u", lambda: tap.mtu),
            "VLAN": ("q", lambda: tap.vlan), "Isolated": ("b", lambda: tap.isolated),
            "CreatedAt": ("t", lambda: tap.created_at_us),
            "Guarded": ("b", lambda: tap.guarded), "MAC": ("s", lambda: tap.mac),
        }

    def _properties_at(self, path: str,
                       interface: str) -> dict[str, tuple[str, Callable[[], Any]]]:
        served = self._interfaces_at(path) or ()
        if interface not in {i.name for i in served if i.properties}:
            raise CallError("UnknownInterface",
                            f"{path} has no interface {interface} with properties")
        if interface == api.MANAGER:
            return self._manager_properties()
        if interface == api.BRIDGE:
            return self._bridge_properties()
        tap = self._taps.taps.get(self._paths[path])
        if tap is None:
            raise CallError("UnknownObject", f"no object at {path}")
        return self._tap_properties(tap)

    def _values_at(self, path: str, interface: str) -> dict[str, Variant]:
        return {name: Variant(sig, read())
                for name, (sig, read) in self._properties_at(path, interface).items()}

    def _managed_objects(self) -> dict[str, dict[str, dict[str, Variant]]]:
        bridge = api.bridge_path(self._bridge.config.name)
        objects = {bridge: {api.BRIDGE: self._values_at(bridge, api.BRIDGE)}}
        for path in self._paths:
            objects[path] = {api.TAP: self._values_at(path, api.TAP)}
        return objects

    def _introspect(self, path: str) -> str:
        interfaces = self._interfaces_at(path) or ()
        below = path.rstrip("/") + "/"
        paths = [api.ROOT_PATH, api.bridge_path(self._bridge.config.name), *self._paths]
        children = sorted({p[len(below):].split("/", 1)[0] for p in paths
                           if p.startswith(below)})
        if not interfaces and not children:
            raise CallError("UnknownObject", f"no object at {path}")
        return spec.node_xml(interfaces, children)

    # --- what the daemon tells us ------------------------------------------------------------

    def tap_added(self, tap: Tap) -> None:
        path = api.tap_path(tap.name)
        self._paths[path] = tap.name
        # After the current step: a call's reply goes out before the signals about it.
        pacing.soon(self._announce_tap, tap, path)

    def _announce_tap(self, tap: Tap, path: str) -> None:
        self._signal(api.ROOT_PATH, spec.MANAGER, "TapAdded", [path, tap.name])
        self._signal(api.ROOT_PATH, spec.OBJECT_MANAGER, "InterfacesAdded",
                     [path, {api.TAP: {name: Variant(sig, read()) for name, (sig, read)
                                       in self._tap_properties(tap).items()}}])
        self.properties_changed()

    def tap_removed(self, tap: Tap) -> None:
        path = api.tap_path(tap.name)
        if self._paths.pop(path, None) is None:
            return
        pacing.soon(self._announce_tap_gone, tap, path)

    def _announce_tap_gone(self, tap: Tap, path: str) -> None:
        self._signal(api.ROOT_PATH, spec.MANAGER, "TapRemoved", [path, tap.name])
        self._signal(api.ROOT_PATH, spec.OBJECT_MANAGER, "InterfacesRemoved", [path, [api.TAP]])
        self.properties_changed()

    def tap_changed(self, tap: Tap, names: tuple[str, ...] = ("Guarded", "MAC")) -> None:
        """Some of a tap's properties changed (its MAC learned, guards switched). Sent
        in the pacer's order, behind the TapAdded / InterfacesAdded that may still wait
        there: a client hears of a property of an object it has been told exists."""
        pacing.soon(self._announce_tap_changed, tap, names)

    def _announce_tap_changed(self, tap: Tap, names: tuple[str, ...]) -> None:
        path = api.tap_path(tap.name)
        if self._paths.get(path) != tap.name:
            return
        props = self._tap_properties(tap)
        self._signal(path, spec.PROPERTIES, "PropertiesChanged",
                     [api.TAP, {n: Variant(props[n][0], props[n][1]()) for n in names}, []])

    def uplink_changed(self, ifname: str, state: str) -> None:
        self._signal(api.bridge_path(self._bridge.config.name), spec.BRIDGE, "UplinkChanged",
                     [ifname, state])

    def _signal(self, path: str, interface: spec.Interface, member: str,
                body: list[Any]) -> None:
        sig = interface.signal(member)
        assert sig is not None
        self._send(Message.new_signal(path, interface.name, member, sig.signature, body))

    def properties_changed(self) -> None:
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
        bridge_path = api.bridge_path(self._bridge.config.name)
        # Ports: only their names, when they changed (see spec: "invalidates").
        invalidated: list[str] = []
        if self._bridge.ports_version != self._ports_announced:
            self._ports_announced = self._bridge.ports_version
            invalidated = [p.name for p in spec.BRIDGE.properties if p.emits == "invalidates"]
        for path, interface, values, sigs, gone in (
                (api.ROOT_PATH, api.MANAGER, self._manager_values(), self._manager_properties(),
                 []),
                (bridge_path, api.BRIDGE, self._bridge_values(), self._bridge_properties(),
                 invalidated)):
            old = self._sent.setdefault(interface, {})
            changed = {k: v for k, v in values.items() if old.get(k) != v}
            if changed or gone:
                old.update(changed)
                self._signal(path, spec.PROPERTIES, "PropertiesChanged",
                             [interface, {k: Variant(sigs[k][0], v) for k, v in changed.items()},
                              gone])


def unpack(options: dict[str, Variant]) -> dict[str, tuple[str, Any]]:
    """a{sv} -> key -> (signature, value)."""
    return {key: (variant.signature, variant.value) for key, variant in options.items()}


def bus_address_from_env(explicit: str | None) -> str | None:
    return explicit or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or None

