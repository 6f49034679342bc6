"""bridged: a daemon that owns a Linux bridge and hands TAP devices to unprivileged VMs."""

import sys

__version__ = "0.1.0"

# dbus-fast before 2.0 (Debian 12 has 1.84) imports its GLib integration, and with it
# PyGObject when that is installed: ~15 ms at every start of the daemon and of
# bridgectl. bridged runs on asyncio and never uses GLib; dbus-fast treats the failed
# import as "no GLib". setdefault: a process that already loaded PyGObject keeps it.
sys.modules.setdefault("gi", None)  # type: ignore[arg-type]
