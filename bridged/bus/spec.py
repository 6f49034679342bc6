"""The D-Bus API's shape: every interface's methods, properties and signals.

The service checks each call's signature against this table and builds its
introspection data from it; ``dbus/org.bridged.Bridged1.xml`` is the same table as
XML, and a test holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridged import api


def quoteattr(value: str) -> str:
    """``value`` as a quoted XML attribute. Not xml.sax.saxutils': importing it brings
    urllib.request, http.client and email along, ~12 ms of every daemon start."""
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"),
                         ("\n", "&#10;"), ("\r", "&#13;"), ("\t", "&#9;")):
        value = value.replace(char, entity)
    return f'"{value}"'


@dataclass(frozen=True)
class Arg:
    name: str
    signature: str


@dataclass(frozen=True)
class Method:
    name: str
    inputs: tuple[Arg, ...] = ()
    outputs: tuple[Arg, ...] = ()

    @property
    def in_signature(self) -> str:
        return "".join(a.signature for a in self.inputs)

    @property
    def out_signature(self) -> str:
        return "".join(a.signature for a in self.outputs)


@dataclass(frozen=True)
class Property:
    name: str
    signature: str
    # PropertiesChanged carries the value ("true"), only the name ("invalidates": a
    # thousand ports, rebuilt and sent for every tap, cost more than the tap), or nothing
    # ("false": a value that changes all the time, such as seconds left).
    emits: str = "true"


@dataclass(frozen=True)
class Signal:
    name: str
    args: tuple[Arg, ...] = ()

    @property
    def signature(self) -> str:
        return "".join(a.signature for a in self.args)


@dataclass(frozen=True)
class Interface:
    name: str
    methods: tuple[Method, ...] = ()
    properties: tuple[Property, ...] = ()
    signals: tuple[Signal, ...] = ()

    def method(self, name: str) -> Method | None:
        return next((m for m in self.methods if m.name == name), None)

    def property(self, name: str) -> Property | None:
        return next((p for p in self.properties if p.name == name), None)

    def signal(self, name: str) -> Signal | None:
        return next((s for s in self.signals if s.name == name), None)

    def xml(self, indent: str = "  ") -> str:
        lines = [f"{indent}<interface name={quoteattr(self.name)}>"]
        for m in self.methods:
            args = [(a, "in") for a in m.inputs] + [(a, "out") for a in m.outputs]
            if not args:
                lines.append(f"{indent}  <method name={quoteattr(m.name)}/>")
                continue
            lines.append(f"{indent}  <method name={quoteattr(m.name)}>")
            lines += [f"{indent}    <arg name={quoteattr(a.name)} type={quoteattr(a.signature)}"
                      f" direction=\"{d}\"/>" for a, d in args]
            lines.append(f"{indent}  </method>")
        for s in self.signals:
            lines.append(f"{indent}  <signal name={quoteattr(s.name)}>")
            lines += [f"{indent}    <arg name={quoteattr(a.name)} type={quoteattr(a.signature)}/>"
                      for a in s.args]
            lines.append(f"{indent}  </signal>")
        for p in self.properties:
            head = (f"{indent}  <property name={quoteattr(p.name)} "
                    f"type={quoteattr(p.signature)} access=\"read\"")
            if p.emits == "true":
                lines.append(head + "/>")
            else:
                lines += [head + ">", f"{indent}    <annotation name=\"org.freedesktop.DBus."
                          f"Property.EmitsChangedSignal\" value=\"{p.emits}\"/>",
                          f"{indent}  </property>"]
        lines.append(f"{indent}</interface>")
        return "\n".join(lines)


MANAGER = Interface(
    api.MANAGER,
    methods=(
        Method("OpenTap", (Arg("options", "a{sv}"),),
               (Arg("tap", "o"), Arg("ifname", "s"), Arg("fds", "ah"))),
        Method("CreateTap", (Arg("options", "a{sv}"),), (Arg("tap", "o"), Arg("ifname", "s"))),
        Method("ReleaseTap", (Arg("ifname", "s"),)),
        Method("ListTaps", (), (Arg("taps", "ao"),)),
        Method("Retry"),
    ),
    properties=(Property("Version", "s"), Property("State", "s"), Property("Bridge", "o"),
                Property("TapCount", "u"), Property("StatusText", "s")),
    signals=(Signal("TapAdded", (Arg("tap", "o"), Arg("ifname", "s"))),
             Signal("TapRemoved", (Arg("tap", "o"), Arg("ifname", "s")))),
)

BRIDGE = Interface(
    api.BRIDGE,
    properties=(Property("Name", "s"), Property("Index", "i"), Property("MACAddress", "s"),
                Property("MTU", "u"), Property("STP", "b"), Property("ForwardDelay", "u"),
                Property("OperState", "s"), Property("Uplinks", "as"),
                Property("Ports", "as", emits="invalidates"),
                Property("ForeignPorts", "as", emits="invalidates"), Property("Addresses", "as"),
                Property("Leases", "a{su}", emits="false"),

                # The overlay ([vxlan]); VNI 0 and empty values without one.
                Property("VNI", "u"), Property("VxlanDevice", "s"), Property("VxlanLocal", "s"),
                Property("VxlanControl", "s"), Property("VxlanUnderlay", "s"),
                Property("VxlanPeers", "as"), Property("VxlanLearnedPeers", "as"),
                # (address, configured, flood entry, FDB entries, remote MACs from EVPN)
                Property("VxlanRemotes", "a(sbbuu)"), Property("VxlanProblem", "s")),
    signals=(Signal("UplinkChanged", (Arg("ifname", "s"), Arg("state", "s"))),),
)

TAP = Interface(
    api.TAP,
    methods=(Method("Release"),),
    properties=(Property("Name", "s"), Property("Index", "i"), Property("OwnerUID", "u"),
                Property("Label", "s"), Property("ClientPID", "u"), Property("Persistent", "b"),
                Property("Queues", "u"), Property("VnetHdr", "b"), Property("MTU", "u"),
                Property("VLAN", "q"), Property("Isolated", "b"), Property("CreatedAt", "t"),
                Property("Guarded", "b"), Property("MAC", "s")),
)

# The standard interfaces bridged serves itself.
PROPERTIES = Interface(
    api.PROPERTIES,
    methods=(
        Method("Get", (Arg("interface_name", "s"), Arg("property_name", "s")),
               (Arg("value", "v"),)),
        Method("GetAll", (Arg("interface_name", "s"),), (Arg("properties", "a{sv}"),)),
        Method("Set", (Arg("interface_name", "s"), Arg("property_name", "s"),
                       Arg("value", "v"))),
    ),
    signals=(Signal("PropertiesChanged", (Arg("interface_name", "s"),
                                          Arg("changed_properties", "a{sv}"),
                                          Arg("invalidated_properties", "as"))),),
)

INTROSPECTABLE = Interface(
    api.INTROSPECTABLE, methods=(Method("Introspect", (), (Arg("xml_data", "s"),)),))

OBJECT_MANAGER = Interface(
    api.OBJECT_MANAGER,
    methods=(Method("GetManagedObjects", (),
                    (Arg("objects", "a{oa{sa{sv}}}"),)),),
    signals=(Signal("InterfacesAdded", (Arg("object_path", "o"),
                                        Arg("interfaces_and_properties", "a{sa{sv}}"))),
             Signal("InterfacesRemoved", (Arg("object_path", "o"),
                                          Arg("interfaces", "as")))),
)

PEER = Interface(
    api.PEER,
    methods=(Method("Ping"), Method("GetMachineId", (), (Arg("machine_uuid", "s"),))),
)

DOCTYPE = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
           ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">')


def node_xml(interfaces: tuple[Interface, ...], children: list[str]) -> str:
    """Introspection data of one object: its interfaces, then its child nodes."""
    parts = [DOCTYPE, "<node>"]
    if interfaces:
        parts += [PEER.xml(), INTROSPECTABLE.xml(), PROPERTIES.xml()]
        parts += [i.xml() for i in interfaces]
    parts += [f"  <node name={quoteattr(c)}/>" for c in children]
    parts.append("</node>")
    return "\n".join(parts) + "\n"


def api_xml() -> str:
    """dbus/org.bridged.Bridged1.xml: bridged's own interfaces, version 1."""
    body = "\n".join(i.xml() for i in (MANAGER, BRIDGE, TAP))
    return (f"{DOCTYPE}\n<!-- org.bridged.Bridged1, API version 1; see bridged(8). "
            f"A test holds this equal to what bridged serves. -->\n<node>\n{body}\n</node>\n")
