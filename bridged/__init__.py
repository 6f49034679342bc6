"""bridged: a daemon that owns a Linux bridge and hands TAP devices to unprivileged VMs."""

import sys

__version__ = "0.1.0"


def _import_dbus_fast_without_glib() -> None:
    """dbus-fast before 2.0 (Debian 12 has 1.84) imports its GLib integration, and with
    it PyGObject when that is installed: ~15 ms and ~4 MB at every start of the daemon
    and of bridgectl, for nothing (bridged runs on asyncio). Import dbus-fast with
    PyGObject hidden (dbus-fast takes the failed import as "no GLib"), then show it
    again: a process that imports bridged.client may still use PyGObject itself."""
    if "gi" in sys.modules or "dbus_fast" in sys.modules:
        return
    sys.modules["gi"] = None  # type: ignore[assignment]
    try:
        import dbus_fast  # noqa: F401
    except ImportError:
        pass  # what needs dbus-fast says so when it imports it
    finally:
        if "gi" in sys.modules and sys.modules["gi"] is None:
            del sys.modules["gi"]


_import_dbus_fast_without_glib()
