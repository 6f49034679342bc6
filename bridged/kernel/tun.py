"""tun/tap ioctls on /dev/net/tun (linux/if_tun.h)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


def open_tap(name: str, queues: int = 1, vnet_hdr: bool = True) -> list[int]:
    """Create (or attach to) tap ``name`` and return one open fd per queue.

    Without TUNSETPERSIST the device lives exactly as long as one of these fds is open:
    a VM that crashes takes its tap with it.
    """
    flags = IFF_TAP | IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if queues > 1:
        flags |= IFF_MULTI_QUEUE
    fds: list[int] = []
    try:
        for _ in range(queues):
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, flags))
    except BaseException:
        close_all(fds)
        raise
    return fds


def make_persistent(fd: int, owner_uid: int) -> None:
    """Keep the tap after its fds close, and let ``owner_uid`` open it by name."""
    fcntl.ioctl(fd, TUNSETOWNER, owner_uid)
    fcntl.ioctl(fd, TUNSETPERSIST, 1)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
