"""A socket filter (classic BPF) that keeps the bridge's port notices out of a link
event socket, in the kernel.

A bridge reports each change of a port twice: as the link's own RTM_NEWLINK, and again
as an AF_BRIDGE RTM_NEWLINK/DELLINK, its view of the port. Nothing in bridged reads the
second kind, and it is more than half of what a tap's life brings (four of seven
datagrams when a tap is freed): dropping them before they are queued saves a wake-up, a
read and a decode each. Everything else passes, and so does anything the program cannot
be sure of (a datagram that is not exactly one message), for the reader to judge.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

from bridged.kernel.rtnl import AF_BRIDGE, RTM_DELLINK, RTM_NEWLINK

SO_ATTACH_FILTER = 26
_IFI_FAMILY = 16  # struct nlmsghdr (16 bytes), then struct ifinfomsg's family byte

# Classic BPF opcodes (linux/filter.h).
_LD_W_LEN = 0x00 | 0x00 | 0x80  # A = the datagram's length
_LDX_W_LEN = 0x01 | 0x00 | 0x80  # X = the datagram's length
_LD_H_ABS = 0x00 | 0x08 | 0x20  # A = the big-endian u16 at k
_LD_B_ABS = 0x00 | 0x10 | 0x20  # A = the byte at k
_LSH_K = 0x04 | 0x60 | 0x00  # A <<= k
_OR_X = 0x04 | 0x40 | 0x08  # A |= X
_TAX = 0x07 | 0x00  # X = A
_JEQ_K = 0x05 | 0x10 | 0x00
_JGE_K = 0x05 | 0x30 | 0x00
_JEQ_X = 0x05 | 0x10 | 0x08
_RET_K = 0x06 | 0x00
_ACCEPT, _DROP = 0xFFFFFFFF, 0

_Step = tuple[int, "int | str", "int | str", int]  # code, jump if true, if false, k


def _host_u16(value: int) -> int:
    """``value`` as the kernel writes it (host order), read as BPF reads (big-endian)."""
    return int.from_bytes(struct.pack("=H", value), "big")


def _program() -> list[tuple[int, int, int, int]]:
    # nlmsg_len is in host order, which BPF's word load does not read: put it together
    # from its four bytes.
    shifts = (0, 8, 16, 24) if sys.byteorder == "little" else (24, 16, 8, 0)
    length: list[_Step] = []
    for at, shift in enumerate(shifts):
        length += [(_LD_B_ABS, 0, 0, at), (_LSH_K, 0, 0, shift)]
        length += [(_OR_X, 0, 0, 0)] if at else []
        length += [(_TAX, 0, 0, 0)] if at < 3 else []
    steps: list[_Step] = [
        (_LD_W_LEN, 0, 0, 0),
        (_JGE_K, 0, "accept", _IFI_FAMILY + 1),  # too short to have a family byte
        (_LD_B_ABS, 0, 0, _IFI_FAMILY),
        (_JEQ_K, 0, "accept", AF_BRIDGE),
        (_LD_H_ABS, 0, 0, 4),  # nlmsg_type
        (_JEQ_K, "length", 0, _host_u16(RTM_NEWLINK)),
        (_JEQ_K, "length", "accept", _host_u16(RTM_DELLINK)),
        # "length": one message, the whole datagram (so nothing else goes with it).
        *length,
        (_LDX_W_LEN, 0, 0, 0),
        (_JEQ_X, "drop", "accept", 0),
    ]
    labels = {"length": 7, "drop": len(steps), "accept": len(steps) + 1}
    steps += [(_RET_K, 0, 0, _DROP), (_RET_K, 0, 0, _ACCEPT)]

    def offset(at: int, target: int | str) -> int:
        return labels[target] - at - 1 if isinstance(target, str) else target

    return [(code, offset(at, jt), offset(at, jf), k)
            for at, (code, jt, jf, k) in enumerate(steps)]


def drop_port_notices(sock: socket.socket) -> None:
    """Attach the filter to ``sock`` (the kernel copies the program)."""
    program = _program()
    code = ctypes.create_string_buffer(b"".join(
        struct.pack("=HBBI", c, jt, jf, k) for c, jt, jf, k in program))
    fprog = struct.pack("HP", len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
