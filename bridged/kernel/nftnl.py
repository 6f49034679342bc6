"""nf_tables set elements over raw netlink (NETLINK_NETFILTER), for the guards' per-port
work: add a port's elements, read its drop counters and learned MAC, delete them.

libnftables answers each such command by first reading the table into its cache, every
set with every element, so its cost grows with the number of guarded ports: reading
one port's counters took ~52 ms at 1000 ports, adding a port ~1 ms. The kernel finds
an element by its key in a hash, whatever the set's size: one request here costs tens
of microseconds. libnftables still writes the table itself (``nft.py``): that is rare,
and its text is what an admin reads with ``nft list``.

Keys are encoded as nft encodes them (linux/netfilter/nf_tables.h; nft's datatypes):
``ifname`` is 16 bytes, the name NUL-padded; in a concatenation each part fills whole
32-bit registers, so ``ifname . ether_addr`` is 16 + 8 bytes (the MAC, then two zero
bytes) and ``ifname . mark`` 16 + 4 (the mark in host byte order).

Not thread-safe: one ``NftSocket`` per thread (``nft.Nft.raw``).
"""

from __future__ import annotations

import contextlib
import errno as errnos
import socket
import struct
from dataclasses import dataclass

from bridged.kernel.rtnl import (
    CHANGES_PER_SEND,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSGHDR,
    SOL_NETLINK,
    DecodeError,
    NetlinkError,
    _attr,
    _headers,
    _nested,
    attributes,
    decode_error,
)

NETLINK_NETFILTER = 12
NETLINK_EXT_ACK, NETLINK_CAP_ACK = 11, 10
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM, NFT_MSG_DELSETELEM = 12, 13, 14
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (big-endian)
NFPROTO_BRIDGE = 7
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA = 1, 2
NFTA_SET_ELEM_EXPR, NFTA_SET_ELEM_EXPRESSIONS = 7, 10
NFTA_DATA_VALUE = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
IFNAMSIZ = 16
U64 = struct.Struct("!Q")
MARK = struct.Struct("=I")  # nft's mark type is in host byte order


def ifname_key(name: str) -> bytes:
    raw = name.encode()
    if not 0 < len(raw) < IFNAMSIZ:
        raise ValueError(f"{name!r} is not an interface name")
    return raw.ljust(IFNAMSIZ, b"\0")


def mac_bytes(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return raw


def ifname_mac_key(name: str, mac: str) -> bytes:
    return ifname_key(name) + mac_bytes(mac) + b"\0\0"


def ifname_mark_key(name: str, mark: int) -> bytes:
    return ifname_key(name) + MARK.pack(mark)


@dataclass(frozen=True)
class Element:
    """One set element to add or delete: its key, and its value in a map."""

    set: str
    key: bytes
    data: bytes | None = None


@dataclass(frozen=True)
class Found:
    """What the kernel holds for one element: its value (maps), its counter."""

    data: bytes | None = None
    packets: int | None = None
    bytes: int | None = None


class NftSocket:
    """A NETLINK_NETFILTER socket speaking nf_tables' set-element messages."""

    def __init__(self, family: int = NFPROTO_BRIDGE) -> None:
        self.family = family
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            for option in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
                with contextlib.suppress(OSError):  # older kernels: errors without words
                    sock.setsockopt(SOL_NETLINK, option, 1)
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._port = int(sock.getsockname()[0])
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    # --- requests ------------------------------------------------------------------

    def add(self, table: str, elements: list[Element]) -> None:
        """Add ``elements`` in one transaction (all or none). An element already there
        stays as it is. NetlinkError: ENOENT when the table or a set is missing."""
        self._transaction(NFT_MSG_NEWSETELEM, NLM_F_CREATE, table, elements)

    def delete(self, table: str, elements: list[Element]) -> None:
        """Delete ``elements`` in one transaction (all or none). NetlinkError: ENOENT
        when any of them (or the table) is not there."""
        self._transaction(NFT_MSG_DELSETELEM, 0, table, elements)

    def get(self, table: str, wanted: list[tuple[str, bytes]]) -> list[Found | None]:
        """Look up (set, key) pairs, in few trips; None for each key not there. At most
        CHANGES_PER_SEND lookups a send, for the reason RtnlSocket.changes gives: each
        brings an ack, and a thousand taps' counters at once would overrun our socket."""
        found: list[Found | None] = []
        for start in range(0, len(wanted), CHANGES_PER_SEND):
            found += self._get(table, wanted[start:start + CHANGES_PER_SEND])
        return found

    def _get(self, table: str, wanted: list[tuple[str, bytes]]) -> list[Found | None]:
        seqs, payload = [], b""
        for set_name, key in wanted:
            seq = self._next_seq()
            seqs.append(seq)
            body = self._list(table, set_name, [_element(key, None)])
            payload += _message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM,
                                NLM_F_REQUEST | NLM_F_ACK, seq, self._genmsg() + body)
        self._sock.send(payload)
        found: dict[int, Found | None] = {}
        acked: set[int] = set()
        while len(acked) < len(seqs):
            data = self._receive()
            for kind, _flags, seq, port, offset, length in _headers(data):
                if port != self._port or seq not in seqs or seq in acked:
                    continue
                if kind == NLMSG_ERROR:
                    acked.add(seq)
                    error = decode_error(data, offset, length)
                    if error is not None:
                        if error.errno != errnos.ENOENT:
                            raise error
                        found[seq] = None
                elif kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM:
                    found[seq] = _decode_found(data, offset, length)
        return [found.get(seq) for seq in seqs]

    # --- internals -----------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    def _genmsg(self) -> bytes:
        return NFGENMSG.pack(self.family, 0, 0)

    def _list(self, table: str, set_name: str, elements: list[bytes]) -> bytes:
        return (_attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                + _attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
                + _nested(NFTA_SET_ELEM_LIST_ELEMENTS, *elements))

    def _transaction(self, verb: int, flags: int, table: str, elements: list[Element]) -> None:
        if not elements:
            return
        # One message per set, in the order the sets first appear.
        by_set: dict[str, list[bytes]] = {}
        for element in elements:
            by_set.setdefault(element.set, []).append(_element(element.key, element.data))
        seqs = []
        payload = _message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, self._next_seq(),
                           NFGENMSG.pack(socket.AF_UNSPEC, 0, NFNL_SUBSYS_NFTABLES))
        for set_name, items in by_set.items():
            seq = self._next_seq()
            seqs.append(seq)
            payload += _message(NFNL_SUBSYS_NFTABLES << 8 | verb,
                                NLM_F_REQUEST | NLM_F_ACK | flags, seq,
                                self._genmsg() + self._list(table, set_name, items))
        payload += _message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self._next_seq(),
                            NFGENMSG.pack(socket.AF_UNSPEC, 0, NFNL_SUBSYS_NFTABLES))
        self._sock.send(payload)
        # Every message of the batch is acknowledged (0 or its errno) once the batch
        # is committed or aborted; the first error says why it was aborted.
        first_error: NetlinkError | None = None
        acked: set[int] = set()
        while len(acked) < len(seqs):
            data = self._receive()
            for kind, _flags, seq, port, offset, length in _headers(data):
                if port != self._port or kind != NLMSG_ERROR or seq not in seqs:
                    continue
                acked.add(seq)
                error = decode_error(data, offset, length)
                if error is not None and first_error is None:
                    first_error = error
        if first_error is not None:
            raise first_error

    def _receive(self) -> bytes:
        data, _ancillary, flags, _address = self._sock.recvmsg(1 << 16)
        if flags & socket.MSG_TRUNC:
            raise NetlinkError(errnos.EMSGSIZE, detail="a reply longer than 64 KiB")
        return data


def _message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def _element(key: bytes, data: bytes | None) -> bytes:
    parts = [_nested(NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, key))]
    if data is not None:
        parts.append(_nested(NFTA_SET_ELEM_DATA, _attr(NFTA_DATA_VALUE, data)))
    return _nested(NFTA_LIST_ELEM, *parts)


def _decode_found(data: bytes, offset: int, length: int) -> Found:
    """The element in a NEWSETELEM reply: its value, its counter."""
    start = offset + NLMSGHDR.size + NFGENMSG.size
    if length < NLMSGHDR.size + NFGENMSG.size or offset + length > len(data):
        raise DecodeError(f"a {length}-byte set element message")
    top = attributes(data, start, offset + length)
    if NFTA_SET_ELEM_LIST_ELEMENTS not in top:
        return Found()
    elements = attributes(data, *top[NFTA_SET_ELEM_LIST_ELEMENTS])
    if NFTA_LIST_ELEM not in elements:
        return Found()
    elem = attributes(data, *elements[NFTA_LIST_ELEM])
    value = None
    if NFTA_SET_ELEM_DATA in elem:
        inner = attributes(data, *elem[NFTA_SET_ELEM_DATA])
        if NFTA_DATA_VALUE in inner:
            begin, end = inner[NFTA_DATA_VALUE]
            value = data[begin:end]
    exprs: list[tuple[int, int]] = []
    if NFTA_SET_ELEM_EXPR in elem:  # one expression
        exprs.append(elem[NFTA_SET_ELEM_EXPR])
    if NFTA_SET_ELEM_EXPRESSIONS in elem:  # several: a list of them
        begin, end = elem[NFTA_SET_ELEM_EXPRESSIONS]
        exprs.extend(_list_items(data, begin, end))
    for span in exprs:
        expr = attributes(data, *span)
        if NFTA_EXPR_NAME not in expr or NFTA_EXPR_DATA not in expr:
            continue
        begin, end = expr[NFTA_EXPR_NAME]
        if data[begin:end].split(b"\0", 1)[0] != b"counter":
            continue
        counter = attributes(data, *expr[NFTA_EXPR_DATA])
        return Found(value, _u64(data, counter.get(NFTA_COUNTER_PACKETS)),
                     _u64(data, counter.get(NFTA_COUNTER_BYTES)))
    return Found(value)


def _list_items(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """Every NFTA_LIST_ELEM in a list (``attributes`` keeps one per type)."""
    items = []
    offset = start
    while offset + 4 <= end:
        size, kind = struct.unpack_from("=HH", data, offset)
        if size < 4 or offset + size > end:
            raise DecodeError(f"list item at byte {offset} claims {size} bytes")
        if kind & 0x3FFF == NFTA_LIST_ELEM:
            items.append((offset + 4, offset + size))
        offset += (size + 3) & ~3
    return items


def _u64(data: bytes, span: tuple[int, int] | None) -> int | None:
    if span is None or span[1] - span[0] < 8:
        return None
    return int(U64.unpack_from(data, span[0])[0])
