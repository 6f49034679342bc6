"""A hostile local user of bridged: a generated, seeded stream of D-Bus requests.

usage: hostile.py ADDRESS --role member|other --seed S --count N --foreign NAME --alien NAME
                  [--force-fault KIND] [--fds K] [--only TEMPLATE,...]

Run as an unprivileged user (bt-member in group bridged, or bt-other) by
tests/test_hostile.py, with the suite's interpreter. Every request is built valid by
construction from a template, then zero or one fault from that template's list is
applied, so the script knows what the answer must be: "ok", or one of a few error
names. It counts:

- accepted wrongly: a faulty request (or a non-member's create) that succeeded;
- refused wrongly: a request that had to succeed and failed (QuotaExceeded aside);
- wrong error: a request that had to fail and failed with another error;
- wrong result: a success whose answer is not what was asked for (a label that does not
  read back exactly, a tap with another name).

Every tap a successful call made is freed at once (OpenTap: its fds closed; CreateTap:
ReleaseTap or Tap.Release), so the test can check that none is left. ``--foreign`` is a
tap root owns (the caller may read it, never release it); ``--alien`` a tap bridged does
not manage. This script knows the API from DESIGN.md, not from bridged's code: it is a
client like any other. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

BUS_NAME = "org.bridged.Bridged1"
ROOT = "/org/bridged/Bridged1"
BRIDGE_PATH = f"{ROOT}/bridge/br0"
MANAGER = "org.bridged.Bridged1.Manager"
BRIDGE = "org.bridged.Bridged1.Bridge"
TAP = "org.bridged.Bridged1.Tap"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PEER = "org.freedesktop.DBus.Peer"


def tap_path(ifname: str) -> str:
    """A tap's object path: its name escaped as systemd's bus_label_escape does."""
    return f"{ROOT}/tap/" + "".join(
        c if c.isascii() and c.isalnum() else "".join(f"_{b:02x}" for b in c.encode())
        for c in ifname)


def D(name: str) -> str:
    return "org.freedesktop.DBus.Error." + name


def B(name: str) -> str:
    return "org.bridged.Bridged1.Error." + name


OK = "ok"
NOREPLY = "noreply"

OPTIONS = {"name": "s", "label": "s", "queues": "u", "vnet_hdr": "b", "mtu": "u", "vlan": "q",
           "isolated": "b", "linger": "b", "pid": "u", "mac": "s", "trusted": "b"}
BAD_MACS = ["", "zz:zz:zz:zz:zz:zz", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00", "52:54:00:12:34", "52:54:00:12:34:56:78", "52-54-00-12-34-56",
            "52:54:00:12:34:5é", "52:54:00:12:34:56\n"]
PROPS = {
    MANAGER: {"Version": "s", "State": "s", "Bridge": "o", "TapCount": "u",
              "StatusText": "s"},
    BRIDGE: {"Name": "s", "Index": "i", "MACAddress": "s", "MTU": "u", "STP": "b",
             "ForwardDelay": "u", "OperState": "s", "Uplinks": "as", "Ports": "as",
             "ForeignPorts": "as", "Addresses": "as", "Leases": "a{su}", "VNI": "u",
             "VxlanDevice": "s", "VxlanLocal": "s", "VxlanControl": "s", "VxlanUnderlay": "s",
             "VxlanPeers": "as", "VxlanLearnedPeers": "as", "VxlanRemotes": "a(sbbuu)",
             "VxlanProblem": "s"},
    TAP: {"Name": "s", "Index": "i", "OwnerUID": "u", "Label": "s", "ClientPID": "u",
          "Persistent": "b", "Queues": "u", "VnetHdr": "b", "MTU": "u", "VLAN": "q",
          "Isolated": "b", "CreatedAt": "t", "Guarded": "b", "MAC": "s"},
}
# One value of each type, for wrong types and extra arguments ('h' carries an fd).
VALUES: dict[str, Any] = {
    "s": "x", "u": 7, "b": True, "q": 7, "i": -1, "t": 2**40, "x": -(2**40), "y": 7, "n": -7,
    "d": 1.5, "o": "/x", "g": "s", "as": ["a", "é"], "ay": b"ab",
    "a{sv}": {"k": Variant("s", "v")}, "a{su}": {"k": 1}, "(su)": ["a", 1],
    "a(sbbuu)": [["a", True, False, 1, 2]],
    "v": Variant("s", "x"), "h": 0,
}
LABELS = ["", "vm1", "é", "🦀", "虚拟机", "Ünïcödé vm", "שלום", "e\u0301", "a" * 64, "é" * 48,
          "🦀" * 24, "x y  z", 'quote" back\\slash', " BRIDGED_UID=0 X=y", "x]  [BRIDGED_UID=0",
          "[a] {b} =c", "%s %d %(x)s", "${HOME} $(id)"]
BAD_LABELS = ["a" * 65, "é" * 49, "🦀" * 25, "\n", "a\nb", "tab\there", "\r", "\x1b[31mred",
              "\x7f", "\u2028", "\u200b", "\x85", "vm\x00"[:-1] + "\x07", "\ufeff"]
BAD_NAMES = ["", "eth0", "br0", "lo", "TAP1", "tap1\n", "tap\n", "tap 1", "tap/x", "tapé",
             "tap" + "x" * 13, "tap:1", "tap\t1", "../tap", "tap🦀", "tap1\r"]


# --- strings on the wire -------------------------------------------------------------------

class _WireStr(str):
    """A str whose len() is its UTF-8 length: dbus-fast 1.x writes len() as the byte count."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.encode())


def _marshals_non_ascii() -> bool:
    from dbus_fast._private.unmarshaller import Unmarshaller

    message = Message(destination="a.b", path="/", interface="a.b", member="M",
                      signature="s", body=["é"])
    try:
        unmarshaller = Unmarshaller(io.BytesIO(bytes(message._marshall(False))))  # type: ignore[arg-type]
        unmarshaller.unmarshall()
        return bool(unmarshaller.message.body == ["é"])
    except Exception:
        return False


WIRE_FIX = not _marshals_non_ascii()


def wire(value: Any) -> Any:
    """``value`` ready for this dbus-fast's marshaller (a hostile client's messages must be
    well-formed too, or the bus drops the client instead of testing the daemon)."""
    if not WIRE_FIX:
        return value
    if isinstance(value, str):
        return value if value.isascii() else _WireStr(value)
    if isinstance(value, list):
        return [wire(v) for v in value]
    if isinstance(value, dict):
        return {wire(k): wire(v) for k, v in value.items()}
    if isinstance(value, Variant):
        return Variant(value.signature, wire(value.value))
    return value


# --- requests --------------------------------------------------------------------------------

@dataclass
class Request:
    template: str
    path: str
    interface: str | None
    member: str
    signature: str = ""
    body: list[Any] = field(default_factory=list)
    expect: frozenset[str] = frozenset({OK})
    fault: str = ""
    fds: int = 0
    creates: str = ""  # "open" or "create": a success made a tap to free at once
    queues: int = 1
    label: str | None = None
    name: str | None = None
    no_reply: bool = False
    signal: bool = False

    @property
    def what(self) -> str:
        return f"{self.interface or '-'}.{self.member}"

    def describe(self) -> str:
        body = json.dumps(self.body, default=repr, ensure_ascii=True)
        return (f"{self.template} {self.path} {self.what}({self.signature}) {body[:200]} "
                f"fault={self.fault or '-'} fds={self.fds}")


class Generator:
    """Requests from a seed: each template gives a valid request, each fault breaks it."""

    def __init__(self, seed: int, role: str, foreign: str, alien: str, fds: int = 0) -> None:
        self.rng = random.Random(seed)
        self.fds = fds
        self.member = role == "member"
        self.foreign = foreign
        self.alien = alien
        self.seq = 0
        self.type_faults = 0
        self.options_tried: dict[str, set[str]] = {k: set() for k in OPTIONS}
        self.templates = [
            ("open", self.open_tap), ("create", self.create_tap), ("list", self.list_taps),
            ("release", self.release_tap), ("tap-release", self.tap_release),
            ("get", self.get), ("get-all", self.get_all), ("set", self.set),
            ("introspect", self.introspect), ("managed-objects", self.managed_objects),
            ("ping", self.ping), ("machine-id", self.machine_id),
            ("no-reply", self.no_reply), ("signal", self.signal), ("retry", self.retry),
        ]

    def foreign_path(self) -> str:
        return f"{ROOT}/tap/{self.foreign}"

    # --- templates: each returns a valid request and the faults that apply to it ---------

    def _tap_options(self, persistent: bool) -> tuple[dict[str, tuple[str, Any]], Request]:
        rng = self.rng
        options: dict[str, tuple[str, Any]] = {}
        request = Request("", ROOT, MANAGER, "")
        if rng.random() < 0.6:
            label = rng.choice(LABELS)
            options["label"] = ("s", label)
            request.label = label
        if rng.random() < 0.3:
            self.seq += 1
            sep = rng.choice("-._")
            name = f"tap{'m' if self.member else 'o'}{sep}{self.seq}"[:15]
            options["name"] = ("s", name)
            request.name = name
        if rng.random() < 0.3:
            queues = rng.choice([1, 2, 4, 16])
            options["queues"] = ("u", queues)
            request.queues = queues
        if rng.random() < 0.3:
            options["vnet_hdr"] = ("b", rng.random() < 0.5)
        if rng.random() < 0.3:
            options["mtu"] = ("u", rng.choice([68, 576, 1280, 1500, 9000, 65521]))
        if rng.random() < 0.2:
            options["isolated"] = ("b", rng.random() < 0.5)
        if rng.random() < 0.2:
            options["mac"] = ("s", "52:54:00:" + ":".join(f"{rng.randrange(256):02x}"
                                                          for _ in range(3)))
        if rng.random() < 0.1:
            options["trusted"] = ("b", False)  # asking for the guards: anyone may
        if persistent:
            lifetime = rng.choice(["linger", "linger", "pid", "caller", "linger-false"])
            if lifetime == "linger":
                options["linger"] = ("b", True)
            elif lifetime == "linger-false":
                options["linger"] = ("b", False)
            elif lifetime == "pid":
                options["pid"] = ("u", os.getpid())
        return options, request

    def _tap_request(self, member: str, persistent: bool) -> tuple[Request, list[Any]]:
        options, request = self._tap_options(persistent)
        for key, (sig, _v) in options.items():
            self.options_tried[key].add(sig)
        request = replace(request, template=member, member=member, signature="a{sv}",
                          body=[{k: Variant(s, v) for k, (s, v) in options.items()}],
                          creates="create" if persistent else "open",
                          expect=frozenset({OK} if self.member else {B("AccessDenied")}))
        # Option faults twice over, so that a run of a thousand tries every option with
        # several wrong types.
        faults = [self.fault_option_unknown, self.fault_option_type, self.fault_option_type,
                  self.fault_option_type, self.fault_option_range, self.fault_option_range,
                  self.fault_label, self.fault_label, self.fault_name, self.fault_name,
                  self.fault_name_taken, self.fault_mac, self.fault_trusted]
        faults += [self.fault_create_only] if not persistent else \
            [self.fault_linger_and_pid, self.fault_pid]
        return request, faults

    def open_tap(self) -> tuple[Request, list[Any]]:
        return self._tap_request("OpenTap", persistent=False)

    def create_tap(self) -> tuple[Request, list[Any]]:
        return self._tap_request("CreateTap", persistent=True)

    def list_taps(self) -> tuple[Request, list[Any]]:
        interface = self.rng.choice([MANAGER, MANAGER, None])
        return Request("list", ROOT, interface, "ListTaps"), []

    def retry(self) -> tuple[Request, list[Any]]:
        # Retrying the IP move changes the host's network: root only, never these callers.
        interface = self.rng.choice([MANAGER, MANAGER, None])
        return Request("retry", ROOT, interface, "Retry",
                       expect=frozenset({B("AccessDenied")})), []

    def release_tap(self) -> tuple[Request, list[Any]]:
        # A valid ReleaseTap needs a tap of one's own: every CreateTap's release is one.
        # Alone, it is well-formed and must fail: somebody else's tap, or one that is
        # not bridged's, or none at all.
        rng = self.rng
        choice = rng.random()
        if choice < 0.3:
            target, expect = self.foreign, B("NotOwner")
        elif choice < 0.45:
            target, expect = self.alien, B("NoSuchTap")
        else:
            # No name bridged hands out: this caller's own taps may still be going.
            target = rng.choice([f"tapgone{rng.randrange(10000)}", *BAD_NAMES, "é", "tap0 ",
                                 "🦀" * 20, "x" * 300])
            expect = B("NoSuchTap")
        return Request("release", ROOT, MANAGER, "ReleaseTap", "s", [target],
                       expect=frozenset({expect})), []

    def tap_release(self) -> tuple[Request, list[Any]]:
        return Request("tap-release", self.foreign_path(), TAP, "Release",
                       expect=frozenset({B("NotOwner")})), []

    def _object(self) -> tuple[str, str]:
        return self.rng.choice([(ROOT, MANAGER), (BRIDGE_PATH, BRIDGE),
                                (self.foreign_path(), TAP)])

    def get(self) -> tuple[Request, list[Any]]:
        path, interface = self._object()
        prop = self.rng.choice(sorted(PROPS[interface]))
        return Request("get", path, PROPERTIES, "Get", "ss", [interface, prop]), \
            [self.fault_property, self.fault_property_interface]

    def get_all(self) -> tuple[Request, list[Any]]:
        path, interface = self._object()
        return Request("get-all", path, PROPERTIES, "GetAll", "s", [interface]), \
            [self.fault_property_interface]

    def set(self) -> tuple[Request, list[Any]]:
        path, interface = self._object()
        prop = self.rng.choice(sorted(PROPS[interface]))
        sig = PROPS[interface][prop]
        value = Variant(sig, VALUES[sig] if sig != "o" else "/x")
        return Request("set", path, PROPERTIES, "Set", "ssv", [interface, prop, value],
                       expect=frozenset({D("PropertyReadOnly"), D("AccessDenied")})), \
            [self.fault_property, self.fault_property_interface]

    def introspect(self) -> tuple[Request, list[Any]]:
        path = self.rng.choice([ROOT, BRIDGE_PATH, self.foreign_path(), "/", "/org",
                                "/org/bridged", f"{ROOT}/tap", f"{ROOT}/bridge"])
        interface = self.rng.choice([INTROSPECTABLE, INTROSPECTABLE, None])
        return Request("introspect", path, interface, "Introspect"), []

    def managed_objects(self) -> tuple[Request, list[Any]]:
        return Request("managed-objects", ROOT, OBJECT_MANAGER, "GetManagedObjects"), []

    def ping(self) -> tuple[Request, list[Any]]:
        return Request("ping", self.rng.choice([ROOT, BRIDGE_PATH]), PEER, "Ping"), []

    def machine_id(self) -> tuple[Request, list[Any]]:
        return Request("machine-id", ROOT, PEER, "GetMachineId"), []

    def no_reply(self) -> tuple[Request, list[Any]]:
        # Read-only calls that ask for no reply: nothing may come back, nothing may break.
        request, _ = self.rng.choice([self.list_taps, self.get, self.introspect,
                                      self.managed_objects, self.tap_release])()
        return replace(request, template="no-reply", no_reply=True,
                       expect=frozenset({NOREPLY})), []

    def signal(self) -> tuple[Request, list[Any]]:
        # A signal addressed to bridged: it must be ignored (and any fds in it closed).
        return Request("signal", ROOT, MANAGER, self.rng.choice(["TapAdded", "Hello"]),
                       "os", [f"{ROOT}/tap/tap0", "tap0"], signal=True,
                       expect=frozenset({NOREPLY})), []

    # --- faults: each returns the broken request and what it must get ------------------

    def fault_fds(self, r: Request) -> Request:
        return replace(r, fault="fds", fds=self.fds or self.rng.randint(1, 3),
                       expect=frozenset({D("InvalidArgs")}) if not r.expect & {NOREPLY}
                       else r.expect)

    def fault_extra_argument(self, r: Request) -> Request:
        sig = self.rng.choice(sorted(s for s in VALUES if s != "h"))
        return replace(r, fault=f"extra-argument:{sig}", signature=r.signature + sig,
                       body=[*r.body, VALUES[sig]], expect=self._bad_args(r))

    def fault_signature(self, r: Request) -> Request:
        choices = [("", []), ("s", ["x"]), ("a{ss}", [{"a": "b"}]), ("av", [[Variant("s", "x")]]),
                   ("as", [["tap0"]]), ("u", [1]), ("a{sv}a{sv}", [{}, {}]), ("ss", ["a", "b"]),
                   ("(a{sv})", [[{}]]), ("v", [Variant("a{sv}", {})]), ("o", [ROOT])]
        choices = [c for c in choices if c[0] != r.signature]
        sig, body = self.rng.choice(choices)
        return replace(r, fault=f"signature:{sig or '-'}", signature=sig, body=body,
                       expect=self._bad_args(r))

    def _bad_args(self, r: Request) -> frozenset[str]:
        if r.interface == PEER:  # the library's: "no such method with that signature"
            return frozenset({D("UnknownMethod"), D("InvalidArgs")})
        return frozenset({D("InvalidArgs")})

    def fault_member(self, r: Request) -> Request:
        member = self.rng.choice([r.member + "X", r.member.lower(), "Frobnicate", "Get_"])
        # (The nodes between bridged's objects have none: no object there at all.)
        return replace(r, fault=f"member:{member}", member=member,
                       expect=frozenset({D("UnknownMethod"), D("UnknownObject")}))

    def fault_interface(self, r: Request) -> Request:
        interface = self.rng.choice([(r.interface or MANAGER) + ".Nope",
                                     "org.bridged.Bridged2.Manager", "org.example.Evil",
                                     "org.freedesktop.DBus.Debug.Stats"])
        return replace(r, fault=f"interface:{interface}", interface=interface,
                       expect=frozenset({D("UnknownInterface"), D("UnknownMethod"),
                                         D("UnknownObject")}))

    def fault_path(self, r: Request) -> Request:
        path = self.rng.choice([f"{ROOT}/nope", f"{ROOT}/tap/nope{self.rng.randrange(99)}",
                                f"{ROOT}/bridge/eth0", "/org/bridged/Bridged2",
                                f"{ROOT}/tap/{self.alien}", f"{ROOT}/tap/tap0/x"])
        return replace(r, fault=f"path:{path}", path=path,
                       expect=frozenset({D("UnknownObject"), D("UnknownMethod"),
                                         D("UnknownInterface")}))

    def fault_wrong_object(self, r: Request) -> Request:
        path = self.rng.choice([p for p in (ROOT, BRIDGE_PATH, self.foreign_path())
                                if p != r.path])
        return replace(r, fault=f"object:{path}", path=path,
                       expect=frozenset({D("UnknownInterface"), D("UnknownMethod")}))

    def _refused(self, r: Request, error: str) -> frozenset[str]:
        # A non-member may be told either: bridged checks options before the caller.
        return frozenset({error} if self.member else {error, B("AccessDenied")})

    def _with_option(self, r: Request, key: str, sig: str, value: Any, fault: str,
                     error: str = B("InvalidArgument")) -> Request:
        options = dict(r.body[0])
        options[key] = Variant(sig, value)
        if key in self.options_tried:
            self.options_tried[key].add(sig)
        fds = 1 if sig == "h" else 0
        expect = frozenset({D("InvalidArgs")}) if fds else self._refused(r, error)
        return replace(r, fault=fault, body=[options], fds=fds, expect=expect)

    def fault_option_unknown(self, r: Request) -> Request:
        key = self.rng.choice(["bogus", "Name", "label ", "é", "", "MAC", "trusted2", "uid",
                               "owner", "🦀", "name\n"])
        return self._with_option(r, key, "s", "x", f"option-unknown:{key!r}")

    def fault_option_type(self, r: Request) -> Request:
        key = sorted(OPTIONS)[self.type_faults % len(OPTIONS)]  # every key in turn
        self.type_faults += 1
        sig = self.rng.choice(sorted(s for s in VALUES if s != OPTIONS[key]))
        return self._with_option(r, key, sig, VALUES[sig], f"option-type:{key}:{sig}")

    def fault_option_range(self, r: Request) -> Request:
        key, value = self.rng.choice([
            ("queues", 0), ("queues", 17), ("queues", 2**32 - 1), ("mtu", 0), ("mtu", 67),
            ("mtu", 65522), ("mtu", 65535), ("mtu", 2**32 - 1), ("vlan", 0), ("vlan", 1),
            ("vlan", 4094), ("vlan", 4095), ("vlan", 65535)])
        # vlan in range is refused too: this lab's kernel has no VLAN-filtering bridges.
        return self._with_option(r, key, OPTIONS[key], value, f"option-range:{key}={value}")

    def fault_mac(self, r: Request) -> Request:
        mac = self.rng.choice(BAD_MACS)
        return self._with_option(r, "mac", "s", mac, f"mac:{mac!r}")

    def fault_trusted(self, r: Request) -> Request:
        # No guards: for root alone.
        return self._with_option(r, "trusted", "b", True, "trusted", error=B("AccessDenied"))

    def fault_label(self, r: Request) -> Request:
        label = self.rng.choice(BAD_LABELS)
        return self._with_option(r, "label", "s", label, f"label:{label!r}")

    def fault_name(self, r: Request) -> Request:
        name = self.rng.choice(BAD_NAMES)
        return self._with_option(r, "name", "s", name, f"name:{name!r}")

    def fault_name_taken(self, r: Request) -> Request:
        name = self.rng.choice([self.foreign, self.alien])
        return self._with_option(r, "name", "s", name, f"name-taken:{name}",
                                 error=B("NameInUse"))

    def fault_create_only(self, r: Request) -> Request:
        key, value = self.rng.choice([("linger", True), ("linger", False),
                                      ("pid", os.getpid())])
        return self._with_option(r, key, OPTIONS[key], value, f"open-only:{key}")

    def fault_linger_and_pid(self, r: Request) -> Request:
        options = dict(r.body[0])
        options["linger"] = Variant("b", True)
        options["pid"] = Variant("u", os.getpid())
        return replace(r, fault="linger-and-pid", body=[options],
                       expect=self._refused(r, B("InvalidArgument")))

    def fault_pid(self, r: Request) -> Request:
        options = {k: v for k, v in r.body[0].items() if k != "linger"}
        pid = self.rng.choice([0, 1, 2**31, 2**32 - 1, 4194305, 4194303, os.getppid()])
        options["pid"] = Variant("u", pid)
        # os.getppid() is runuser's, which runs as root: not the caller's process.
        return replace(r, fault=f"pid:{pid}", body=[options],
                       expect=self._refused(r, B("InvalidArgument")))

    def fault_property(self, r: Request) -> Request:
        interface = r.body[0]
        prop = self.rng.choice(["Nope", "label", "Labelé", "", "🦀", "Version\n", "x" * 300])
        return replace(r, fault=f"property:{prop!r}", body=[interface, prop, *r.body[2:]],
                       expect=frozenset({D("UnknownProperty"), D("InvalidArgs")}))

    def fault_property_interface(self, r: Request) -> Request:
        others = [i for i in PROPS if i != r.body[0]]
        interface = self.rng.choice([*others, "é", "org.example.Nope", "🦀.x", "",
                                     "org.bridged.Bridged1.Managér", "x" * 300])
        expect = {D("UnknownInterface"), D("InvalidArgs")}
        if interface == "" and r.member != "Set":
            expect.add(OK)  # the spec lets "" stand for "whichever has the property"
        return replace(r, fault=f"property-interface:{interface!r}",
                       body=[interface, *r.body[1:]], expect=frozenset(expect))

    # --- the stream -------------------------------------------------------------------

    def generic_faults(self, r: Request) -> list[Any]:
        if r.signal:
            return [self.fault_fds]
        faults = [self.fault_fds, self.fault_extra_argument, self.fault_signature,
                  self.fault_member]
        if r.interface is not None and r.interface != PEER:
            faults += [self.fault_interface, self.fault_path]
        if r.interface not in (None, PEER, INTROSPECTABLE):  # those are on every object
            faults.append(self.fault_wrong_object)
        if r.no_reply:
            return [self.fault_fds, self.fault_member]
        return faults

    def next(self, index: int, force: str | None, only: list[str] | None) -> Request:
        templates = [t for t in self.templates if only is None or t[0] in only]
        # Round-robin over the templates, so every one is covered in any run of a few
        # dozen; faults are drawn at random (seeded).
        _name, template = templates[index % len(templates)]
        request, faults = template()
        faults = faults + self.generic_faults(request)
        if force == "fds":
            return self.fault_fds(request)
        if self.rng.random() < 0.5:
            return request
        broken = self.rng.choice(faults)(request)
        if request.no_reply or request.signal:
            broken = replace(broken, expect=frozenset({NOREPLY}))
        return broken


# --- running it --------------------------------------------------------------------------------

class Run:
    def __init__(self, bus: MessageBus, args: argparse.Namespace) -> None:
        self.bus = bus
        self.args = args
        self.member = args.role == "member"
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.covered: Counter[str] = Counter()
        self.accepted_wrongly: list[str] = []
        self.refused_wrongly: list[str] = []
        self.wrong_error: list[str] = []
        self.wrong_result: list[str] = []
        self.taps_made = 0
        self.taps_freed = 0
        self.quota = 0

    async def send(self, r: Request) -> Message | None:
        """Send ``r``; its reply, or None when none is asked for."""
        fds: list[int] = []
        for _ in range(r.fds):
            if len(fds) % 2 == 0:
                read, write = os.pipe()
                fds.append(read)
                os.close(write)
            else:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        try:
            flags = MessageFlag.NO_REPLY_EXPECTED if r.no_reply else MessageFlag.NONE
            message = Message(
                destination=BUS_NAME, path=r.path, interface=r.interface, member=r.member,
                signature=r.signature, body=wire(r.body), unix_fds=fds, flags=flags,
                message_type=MessageType.SIGNAL if r.signal else MessageType.METHOD_CALL)
            self.counts["sent"] += 1
            self.covered[r.what] += 1
            if r.no_reply or r.signal:
                sent = self.bus.send(message)
                if isinstance(sent, asyncio.Future):
                    await sent
                return None
            return await asyncio.wait_for(self.bus.call(message), 20)
        finally:
            for fd in fds:
                os.close(fd)

    async def request(self, r: Request) -> None:
        self.counts["faulty" if r.fault else "valid"] += 1
        if r.fds:
            self.counts["with-fds"] += 1
        self.faults[r.fault.split(":")[0] or "-"] += 1
        try:
            reply = await self.send(r)
        except TimeoutError:
            self._judge_error(r, "timeout", "no answer within 20 s")
            return
        if reply is None:
            return
        if reply.message_type == MessageType.ERROR:
            self.errors[reply.error_name or "?"] += 1
            text = reply.body[0] if reply.body else ""
            self._judge_error(r, reply.error_name or "?", text)
            self._close(reply)
            return
        if OK not in r.expect:
            self.accepted_wrongly.append(r.describe())
        self._check_result(r, reply)
        if r.creates:
            await self._free(r, reply)
        self._close(reply)

    def _judge_error(self, r: Request, name: str, text: str) -> None:
        if name in r.expect:
            return
        line = f"{r.describe()} -> {name}: {text[:200]!r}"
        if OK in r.expect:
            if name == B("QuotaExceeded"):
                self.quota += 1
                return
            self.refused_wrongly.append(line)
        else:
            self.wrong_error.append(line)

    @staticmethod
    def _close(reply: Message) -> None:
        for fd in reply.unix_fds or []:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _check_result(self, r: Request, reply: Message) -> None:
        body = reply.body
        bad = None
        if r.what == f"{PROPERTIES}.Get":
            expected = PROPS.get(r.body[0], {}).get(r.body[1])
            if not isinstance(body[0], Variant) or body[0].signature != expected:
                bad = f"Get answered {body!r}, not a '{expected}'"
        elif r.what == f"{PROPERTIES}.GetAll":
            if set(body[0]) != set(PROPS[r.body[0]]):
                bad = f"GetAll answered {sorted(body[0])}"
        elif r.member == "Introspect":
            try:
                ET.fromstring(body[0])
            except ET.ParseError as e:
                bad = f"Introspect XML does not parse: {e}"
        elif r.member == "ListTaps":
            if not all(p.startswith(f"{ROOT}/tap/") for p in body[0]):
                bad = f"ListTaps answered {body!r}"
        elif r.member == "GetManagedObjects":
            if f"{ROOT}/tap/{self.args.foreign}" not in body[0]:
                bad = "GetManagedObjects lacks the foreign tap"
        elif r.creates:
            path, ifname = body[0], body[1]
            if path != tap_path(ifname) or not ifname.startswith("tap") or \
                    (r.name is not None and ifname != r.name):
                bad = f"asked for {r.name!r}, got {ifname!r} at {path}"
            if r.creates == "open" and len(body[2]) != r.queues:
                bad = f"asked for {r.queues} queues, got {len(body[2])} fds"
        if bad:
            self.wrong_result.append(f"{r.describe()}: {bad}")

    async def _free(self, r: Request, reply: Message) -> None:
        path, ifname = reply.body[0], reply.body[1]
        self.taps_made += 1
        # Read back what was asked for, before the tap goes.
        checks = {"Name": ifname, "OwnerUID": os.getuid()}
        if r.label is not None:
            checks["Label"] = r.label
        for prop, expected in checks.items():
            got = await self._call(Request("readback", path, PROPERTIES, "Get", "ss",
                                           [TAP, prop]))
            if got is None or got.message_type == MessageType.ERROR or \
                    got.body[0].value != expected:
                answer = got.body if got is not None else None
                self.wrong_result.append(f"{r.describe()}: {prop} read back as {answer!r}, "
                                         f"not {expected!r}")
        if r.creates == "open":
            self.taps_freed += 1
            return  # its fds are closed with the reply
        if self.args.rng.random() < 0.5:
            release = Request("free", ROOT, MANAGER, "ReleaseTap", "s", [ifname])
        else:
            release = Request("free", path, TAP, "Release")
        got = await self._call(release)
        if got is None or got.message_type == MessageType.ERROR:
            self.refused_wrongly.append(f"{release.describe()} -> "
                                        f"{got.error_name if got else 'timeout'}")
        else:
            self.taps_freed += 1

    async def _call(self, r: Request) -> Message | None:
        self.counts["follow-up"] += 1
        try:
            return await self.send(r)
        except TimeoutError:
            return None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--role", choices=("member", "other"), required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--foreign", required=True)
    parser.add_argument("--alien", required=True)
    parser.add_argument("--force-fault", choices=("fds",))
    parser.add_argument("--fds", type=int, default=0, help="fds per call with fault fds")
    parser.add_argument("--only", help="comma-separated templates")
    args = parser.parse_args()
    args.rng = random.Random(args.seed + 1)
    bus = await MessageBus(bus_address=args.address, bus_type=BusType.SYSTEM,
                           negotiate_unix_fd=True).connect()
    generator = Generator(args.seed, args.role, args.foreign, args.alien, args.fds)
    run = Run(bus, args)
    only = args.only.split(",") if args.only else None
    started = time.monotonic()
    for index in range(args.count):
        await run.request(generator.next(index, args.force_fault, only))
    # Still connected, and the daemon still answers this connection.
    alive = await run._call(Request("final", ROOT, PEER, "Ping"))
    print(json.dumps({
        "dbus_fast_wire_fix": WIRE_FIX,
        "requests": args.count, "sent": run.counts["sent"], "valid": run.counts["valid"],
        "faulty": run.counts["faulty"], "with_fds": run.counts["with-fds"],
        "follow_ups": run.counts["follow-up"], "seconds": round(time.monotonic() - started, 2),
        "taps_made": run.taps_made, "taps_freed": run.taps_freed, "quota": run.quota,
        "accepted_wrongly": run.accepted_wrongly, "refused_wrongly": run.refused_wrongly,
        "wrong_error": run.wrong_error, "wrong_result": run.wrong_result,
        "errors": dict(run.errors), "faults": dict(run.faults), "covered": dict(run.covered),
        "options_tried": {k: sorted(v) for k, v in generator.options_tried.items()},
        "alive": alive is not None and alive.message_type == MessageType.METHOD_RETURN,
    }, ensure_ascii=True))
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
