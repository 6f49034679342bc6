"""The D-Bus API's names, said once: the service and every client import them from here.

DESIGN.md fixes these; changing one is changing the public contract.
"""

from __future__ import annotations

BUS_NAME = "org.bridged.Bridged1"
ROOT_PATH = "/org/bridged/Bridged1"
MANAGER = "org.bridged.Bridged1.Manager"
BRIDGE = "org.bridged.Bridged1.Bridge"
TAP = "org.bridged.Bridged1.Tap"
ERROR_PREFIX = "org.bridged.Bridged1.Error."

PROPERTIES = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"

# OpenTap / CreateTap options: name -> D-Bus signature. Unknown keys or other
# signatures are InvalidArgument, never ignored.
TAP_OPTIONS: dict[str, str] = {
    "name": "s", "label": "s", "queues": "u", "vnet_hdr": "b", "mtu": "u", "vlan": "q",
    "isolated": "b", "linger": "b", "pid": "u", "mac": "s", "trusted": "b",
}
# Options that only make sense for a persistent tap (CreateTap).
CREATE_ONLY = frozenset({"linger", "pid"})


def escape_path_element(text: str) -> str:
    """An object path element from any text (systemd's bus_label_escape)."""
    if not text:
        return "_"
    return "".join(c if c.isascii() and c.isalnum() else
                   "".join(f"_{b:02x}" for b in c.encode()) for c in text)


def tap_path(ifname: str) -> str:
    return f"{ROOT_PATH}/tap/{escape_path_element(ifname)}"


def bridge_path(ifname: str) -> str:
    return f"{ROOT_PATH}/bridge/{escape_path_element(ifname)}"
