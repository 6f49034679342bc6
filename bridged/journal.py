"""Logging: structured events to journald, readable lines on stderr otherwise.

Callers log with ``extra={"INTERFACE": ..., "BRIDGED_EVENT": ...}``; upper-case extra
keys become journal fields. On stderr they are appended as ``KEY=value``.
"""

from __future__ import annotations

import logging
import os
import sys

SYSLOG_IDENTIFIER = "bridged"

# logging level -> syslog priority
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


def _fields(record: logging.LogRecord) -> dict[str, str]:
    return {k: str(v) for k, v in record.__dict__.items()
            if k.isupper() and k.replace("_", "").isalnum()}


class JournalHandler(logging.Handler):
    """Sends each record to journald's native socket with its structured fields."""

    def __init__(self) -> None:
        super().__init__()
        from systemd import journal  # type: ignore[attr-defined]

        self._send = journal.send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            self._send(
                message,
                PRIORITY=str(_PRIORITY.get(record.levelno, 6)),
                SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                LOGGER=record.name,
                **_fields(record),
            )
        except Exception:
            self.handleError(record)


def one_line(text: str) -> str:
    """Text a user may have chosen (a label, a name), unable to break a log line."""
    if text.isprintable():  # nearly always: no copy, character by character
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _quoted(value: str) -> str:
    """A field value that cannot pass for more fields: quoted when it has to be."""
    value = one_line(value)
    if value and not any(c in value for c in ' ="\\[]'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {one_line(record.getMessage())}"
        fields = _fields(record)
        if fields:
            text += "  [" + " ".join(f"{k}={_quoted(v)}" for k, v in sorted(fields.items())) \
                + "]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to journald (JOURNAL_STREAM=dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def setup(target: str = "auto", level: int = logging.INFO) -> str:
    """Route the ``bridged`` loggers to journald or stderr; returns the choice made."""
    if target == "auto":
        target = "journal" if stderr_is_journal() else "console"
    handler: logging.Handler
    if target == "journal":
        handler = JournalHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(ConsoleFormatter())
    # Neither the journal's fields nor the console line name a thread or process (the
    # journal adds _PID itself): not looked up for every record (a tap's lifetime logs
    # two or three lines).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger("bridged")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    return target
