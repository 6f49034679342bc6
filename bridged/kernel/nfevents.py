"""Events from netfilter, delivered on the asyncio loop: nf_tables changes and the
guards' log samples.

One NETLINK_NETFILTER socket, read with ``loop.add_reader`` (no thread, no polling):
- joined to NFNLGRP_NFTABLES, it hears every committed nf_tables transaction in the
  namespace. A transaction that touched the guards' table and was not committed by
  one of bridged's own threads (their names start with ``bridged-``; the kernel names
  the committing task in NFT_MSG_NEWGEN) is reported, so a ``flush ruleset`` (Debian's
  nftables.service does one on every restart) is undone within milliseconds;
- bound to an nfnetlink_log group, it receives the samples the table's rules send,
  rate-limited in the kernel: a port's first MAC being learned, and dropped frames.

Decoding reads only the attributes used, straight from bytes (linux/netfilter/
nfnetlink.h, nf_tables.h, nfnetlink_log.h).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from bridged.kernel.events import EventReader, event_socket
from bridged.kernel.nft import OWN_TASK_PREFIX
from bridged.kernel.rtnl import NLMSG_ERROR, NLMSGHDR, attributes, messages

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_ULOG, NFNL_SUBSYS_NFTABLES = 4, 10
NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big-endian on the wire)
NFPROTO_BRIDGE = 7
NFT_MSG_DELTABLE, NFT_MSG_NEWGEN = 2, 15
NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 2, 3
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 4, 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_META = 1
NFULA_IFINDEX_INDEV, NFULA_IFINDEX_PHYSINDEV, NFULA_HWADDR, NFULA_PREFIX = 4, 6, 8, 10
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4


@dataclass(frozen=True)
class LogSample:
    prefix: str
    index: int  # the port the frame came in on
    mac: str | None  # its source MAC


class NetfilterMonitor(EventReader):
    """Calls ``on_foreign_change`` when someone else changed table ``table`` (family
    bridge), ``on_sample`` for each log sample, ``on_overrun`` when events were lost."""

    what = "netfilter event"
    recovery = "re-reading the guards' table"

    def __init__(self, table: str, log_group: int, on_foreign_change: Callable[[], None],
                 on_sample: Callable[[LogSample], None],
                 on_overrun: Callable[[], None]) -> None:
        super().__init__(self._overran)
        self._table = table.encode()
        self._group = log_group
        self._on_foreign_change = on_foreign_change
        self._on_sample = on_sample
        self._on_netfilter_overrun = on_overrun
        self._touched = False  # the current transaction touched our table
        self.samples = False  # the log group is bound: samples arrive

    def _overran(self) -> None:
        self._touched = False
        self._on_netfilter_overrun()

    def _open(self) -> socket.socket:
        sock = event_socket(NETLINK_NETFILTER)
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        except BaseException:
            sock.close()
            raise
        try:
            self._bind_log_group(sock)
            self.samples = True
        except OSError as e:
            # The guards still drop; only the samples (learned MACs, drop notices) are
            # missing, and the table itself is read instead.
            log.warning("cannot receive the guards' log samples (nfnetlink_log group %d): "
                        "%s", self._group, e.strerror,
                        extra={"BRIDGED_EVENT": "guard-log-unavailable"})
        return sock

    def _bind_log_group(self, sock: socket.socket) -> None:
        """Bind the group (nfnetlink_log), sending metadata only (the port and the MAC),
        each sample at once (the kernel's default holds up to 100 for a second)."""
        header = NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(self._group))
        bind = _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))
        mode = _attr(NFULA_CFG_MODE, struct.pack(">IBx", 0, NFULNL_COPY_META)) + \
            _attr(NFULA_CFG_QTHRESH, struct.pack(">I", 1)) + \
            _attr(NFULA_CFG_TIMEOUT, struct.pack(">I", 1))
        kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
        for seq, body in enumerate((header + bind, header + mode), start=1):
            sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind,
                                    NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
            self._wait_ack(sock, seq)

    @staticmethod
    def _wait_ack(sock: socket.socket, seq: int) -> None:
        sock.setblocking(True)
        sock.settimeout(2)
        try:
            while True:
                data = sock.recv(1 << 16)
                for kind, got_seq, offset, _length in messages(data):
                    if kind == NLMSG_ERROR and got_seq == seq:
                        error = struct.unpack_from("=i", data, offset + NLMSGHDR.size)[0]
                        if error:
                            raise OSError(-error, os.strerror(-error))
                        return
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "no answer from nfnetlink_log") from None
        finally:
            sock.setblocking(False)

    def _dispatch(self, data: bytes) -> None:
        for kind, _seq, offset, length in messages(data):
            try:
                subsys, message = kind >> 8, kind & 0xFF
                if subsys == NFNL_SUBSYS_NFTABLES:
                    self._nftables(message, data, offset, length)
                elif subsys == NFNL_SUBSYS_ULOG and message == NFULNL_MSG_PACKET:
                    sample = decode_sample(data, offset, length)
                    if sample is not None:
                        self._on_sample(sample)
            except Exception:
                log.exception("handling a netfilter event (type %#x) failed", kind)

    def _nftables(self, message: int, data: bytes, offset: int, length: int) -> None:
        body = offset + NLMSGHDR.size
        attrs = attributes(data, body + NFGENMSG.size, offset + length)
        if message == NFT_MSG_NEWGEN:
            # The end of a transaction, naming the task that committed it.
            touched, self._touched = self._touched, False
            if touched and not _own_task(data, attrs):
                self._on_foreign_change()
            return
        family = data[body]
        # Attribute 1 names the table in every nf_tables object message.
        if family == NFPROTO_BRIDGE and 1 in attrs:
            start, end = attrs[1]
            if data[start:end].rstrip(b"\0") == self._table:
                self._touched = True


def _own_task(data: bytes, attrs: dict[int, tuple[int, int]]) -> bool:
    if NFTA_GEN_PROC_NAME in attrs:
        start, end = attrs[NFTA_GEN_PROC_NAME]
        if data[start:end].rstrip(b"\0").decode(errors="replace").startswith(OWN_TASK_PREFIX):
            return True
    if NFTA_GEN_PROC_PID in attrs:
        pid = struct.unpack_from(">I", data, attrs[NFTA_GEN_PROC_PID][0])[0]
        return os.path.exists(f"/proc/self/task/{pid}")
    return False


def decode_sample(data: bytes, offset: int, length: int) -> LogSample | None:
    attrs = attributes(data, offset + NLMSGHDR.size + NFGENMSG.size, offset + length)
    # In the bridge family the "input device" is the bridge; the port is the physical one.
    port = attrs.get(NFULA_IFINDEX_PHYSINDEV) or attrs.get(NFULA_IFINDEX_INDEV)
    if NFULA_PREFIX not in attrs or port is None:
        return None
    start, end = attrs[NFULA_PREFIX]
    prefix = data[start:end].rstrip(b"\0").decode(errors="replace")
    index = struct.unpack_from(">I", data, port[0])[0]
    mac = None
    if NFULA_HWADDR in attrs:
        start, _end = attrs[NFULA_HWADDR]
        hwlen = struct.unpack_from(">H", data, start)[0]
        if hwlen == 6:
            mac = ":".join(f"{b:02x}" for b in data[start + 4:start + 10])
    return LogSample(prefix, index, mac)


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes((4 - length % 4) % 4)
