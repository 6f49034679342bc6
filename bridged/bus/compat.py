"""What dbus-fast gets wrong on the versions we run with, worked around where it bites.

Checked at start-up by behaviour, not guessed from version numbers:

1. Up to 1.x (Debian 12 ships 1.84.2) the marshaller writes a string's length in
   characters instead of bytes. Any reply, error or signal carrying non-ASCII text is
   then malformed, dbus-daemon drops the connection, and the daemon is gone: one call
   with a label of "é" was enough. The marshaller is compiled (Cython), so it cannot be
   patched; it does, however, take the length from ``len()``. Strings are handed to it
   as a ``str`` whose ``len()`` is its UTF-8 length, so it writes the right number. If a
   version ever marshalls wrongly and this does not help, non-ASCII characters are
   escaped instead: a message must be well-formed before it can be pretty.
2. Every release so far writes with a non-blocking ``send()`` and treats EAGAIN (the
   bus has not yet read what we sent) as a lost connection; 1.84 also sends queued
   messages last-in first-out. Under load the daemon exited 69. The writer below waits
   for the socket to drain instead, and sends in order.

Only the writer is replaced; everything else is the library's own. It also closes the
daemon's copies of fds handed to a client the instant they are sent (see ``hand_over``).
"""

from __future__ import annotations

import array
import io
import logging
import os
import socket
from typing import Any

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.aio.message_bus import _MessageWriter

from bridged.journal import one_line

log = logging.getLogger(__name__)


class _Utf8Str(str):
    """A str whose len() is its UTF-8 length: what a character-counting marshaller needs."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.encode())


def _escape(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _roundtrips(text: str) -> bool:
    """Does a message carrying ``text`` survive marshalling and unmarshalling?"""
    from dbus_fast._private.unmarshaller import Unmarshaller

    message = Message(destination="org.bridged.Probe", path="/", interface="org.bridged.Probe",
                      member="Probe", signature="sa{sv}",
                      body=[text, {"k": Variant("s", text)}])
    try:
        stream: Any = io.BytesIO(bytes(message._marshall(False)))
        unmarshaller = Unmarshaller(stream)
        unmarshaller.unmarshall()
        decoded: Any = unmarshaller.message
        return bool(decoded.body == [text, {"k": Variant("s", text)}])
    except Exception:  # a malformed message fails in many ways
        return False


def _string_fix() -> Any:
    """How this library version needs non-ASCII strings prepared, or None."""
    if _roundtrips("é"):
        return None
    if _roundtrips(_Utf8Str("é")):
        return _Utf8Str
    return _escape


_FIX = _string_fix()


def needs_string_fix() -> bool:
    return _FIX is not None


def _prepared(value: Any) -> Any:
    """``value`` with every non-ASCII string prepared for the marshaller; the same
    object when there is none (the usual case, and no allocation then). Every message
    the daemon sends passes here, so the walk copies a container only on the first
    string that needs it."""
    kind = type(value)
    if kind is str:
        return value if value.isascii() else _FIX(value)
    if kind is int or kind is bool:
        return value
    if kind is list:
        copy = None
        for position, item in enumerate(value):
            prepared = _prepared(item)
            if prepared is not item:
                if copy is None:
                    copy = list(value)
                copy[position] = prepared
        return value if copy is None else copy
    if kind is dict:
        changed = False
        pairs = []
        for key, item in value.items():
            new_key, new_item = _prepared(key), _prepared(item)
            changed = changed or new_key is not key or new_item is not item
            pairs.append((new_key, new_item))
        return dict(pairs) if changed else value
    if isinstance(value, Variant):
        inner = _prepared(value.value)
        return value if inner is value.value else Variant(value.signature, inner)
    return value


def prepare(message: Message) -> Message:
    """Make ``message`` marshall correctly on this library version (in place)."""
    if _FIX is not None and message.body:
        message.body = _prepared(message.body)
    return message


class _Writer(_MessageWriter):  # type: ignore[misc]
    """The library's writer, waiting on a full socket instead of giving up on it."""

    # fds whose sender's copies close as soon as a message has carried them out.
    handed_over: set[int]

    def buffer_message(self, msg: Message, future: Any = None) -> None:
        super().buffer_message(prepare(msg), future)

    def write_callback(self, remove_writer: bool = True) -> None:
        sock: Any = self.sock
        fd: Any = self.fd
        try:
            while True:
                if self.buf is None:
                    if not self.messages:
                        if remove_writer:
                            self.loop.remove_writer(fd)
                        return
                    buf, unix_fds, fut = self.messages.popleft()  # in order
                    self.unix_fds = unix_fds
                    self.buf = memoryview(buf)
                    self.offset = 0
                    self.fut = fut
                try:
                    if self.unix_fds and self.negotiate_unix_fd:
                        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                   array.array("i", self.unix_fds))]
                        sent = sock.sendmsg([self.buf[self.offset:]], rights)
                        fds, self.unix_fds = self.unix_fds, None  # they went with the first byte
                        self._close_handed_over(fds)
                    else:
                        sent = sock.send(self.buf[self.offset:])
                except (BlockingIOError, InterruptedError):
                    # The bus has not read what we sent yet: back-pressure, not a loss.
                    self.loop.add_writer(fd, self.write_callback)
                    return
                self.offset += sent
                if self.offset < len(self.buf):
                    self.loop.add_writer(fd, self.write_callback)
                    return
                self.buf = None
                if self.fut is not None and not self.fut.done():
                    self.fut.set_result(None)
        except Exception as e:  # a real failure: the library's own handling
            if self.bus._user_disconnect:
                if self.fut is not None and not self.fut.done():
                    self.fut.set_result(None)
            elif self.fut is not None and not self.fut.done():
                self.fut.set_exception(e)
            self.bus._finalize(e)

    def _close_handed_over(self, fds: list[int]) -> None:
        for fd in fds:
            if fd in self.handed_over:
                self.handed_over.discard(fd)
                os.close(fd)


def hand_over(bus: MessageBus, fds: list[int]) -> None:
    """Close our copies of ``fds`` the instant the next message carrying them is sent.

    A message in flight holds what it carries, so closing ours then costs nothing. A
    moment later the client may have closed its own, and ours would be a tap's last: the
    close then blocks ~16 ms while the kernel unregisters the tap, and closes done one
    after the other on a lane held up the deletes of every ReleaseTap behind them (p50
    1.35 s with 64 clients).
    """
    writer: Any = bus._writer
    writer.handed_over.update(fds)


def take_back(bus: MessageBus | None, fds: list[int]) -> list[int]:
    """Those of ``fds`` handed over but not sent (not closed): the caller's again."""
    if bus is None:
        return list(fds)
    writer: Any = bus._writer
    handed: set[int] = writer.handed_over
    kept = [fd for fd in fds if fd in handed]
    handed.difference_update(kept)
    return kept


def install(bus: MessageBus) -> None:
    """Put our writer on a connected bus, taking over anything already queued."""
    old: Any = bus._writer
    writer = _Writer(bus)
    writer.handed_over = set()
    fd: Any = bus._fd
    writer.messages.extend(old.messages)
    writer.buf, writer.offset, writer.unix_fds, writer.fut = \
        old.buf, old.offset, old.unix_fds, old.fut
    bus._writer = writer
    bus._loop.remove_writer(fd)
    if writer.buf is not None or writer.messages:
        bus._loop.add_writer(fd, writer.write_callback)
    if _FIX is not None:
        log.debug("dbus-fast mis-sizes non-ASCII strings here; preparing them (%s)",
                  getattr(_FIX, "__name__", _FIX))


def error_text(text: str, limit: int = 1024) -> str:
    """Text for an error reply: bounded, one line, printable (a caller's input may be in it)."""
    text = one_line(text)
    return text if len(text) <= limit else text[:limit] + "..."


