"""What bridgectl knows about qemu's command line. Pure logic.

helper/bridged-helper.c reads ``-name`` as guest_name() does; tests/test_helper.py holds
the two equal.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Sequence

# qemu's own OUI; 0x52 has the locally-administered bit set, so these never clash with
# a vendor's burned-in address.
_MAC_PREFIX = bytes([0x52, 0x54, 0x00])


def guest_name(argv: Sequence[str]) -> str | None:
    """The value of qemu's ``-name NAME`` or ``-name guest=NAME,...``, if any."""
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-name", "--name"):
            value = argv[i + 1]
            for part in value.split(","):
                if part.startswith("guest="):
                    return part[len("guest="):] or None
            first = value.split(",")[0]
            return first if "=" not in first and first else None
    return None


def machine_id() -> str:
    try:
        with open("/etc/machine-id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


def guest_mac(uid: int, key: str, host_id: str | None = None) -> str:
    """A MAC that is the same every time this user starts this VM on this host.

    Stable, so the guest's DHCP lease and the LAN's ARP caches survive a restart; keyed
    by host, user and VM (its label, or its whole command line), so two VMs differ.
    """
    seed = f"{host_id if host_id is not None else machine_id()}\0{uid}\0{key}".encode()
    digest = hashlib.sha256(seed).digest()
    return ":".join(f"{b:02x}" for b in _MAC_PREFIX + digest[:3])


def netdev_args(fds: Sequence[int], mac: str, netdev_id: str = "bridged0",
                model: str = "virtio-net-pci") -> list[str]:
    """The qemu arguments that put a NIC on tap queue fds inherited by qemu."""
    if len(fds) == 1:
        netdev = f"tap,id={netdev_id},fd={fds[0]}"
        device = f"{model},netdev={netdev_id},mac={mac}"
    else:
        netdev = f"tap,id={netdev_id},fds={':'.join(str(fd) for fd in fds)}"
        # One vector per queue in each direction, plus config and control.
        device = f"{model},netdev={netdev_id},mac={mac},mq=on,vectors={2 * len(fds) + 2}"
    return ["-netdev", netdev, "-device", device]
