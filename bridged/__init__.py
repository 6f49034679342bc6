"""bridged: a daemon that owns a Linux bridge and hands TAP devices to unprivileged VMs."""

__version__ = "0.1.0"
