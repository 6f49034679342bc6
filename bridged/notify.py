"""sd_notify: readiness, status, watchdog, reload and stop notifications.

Our own few lines instead of ``systemd.daemon.notify``: that one sends with a blocking
``sendmsg``, and a datagram socket whose reader falls behind (ten queued messages by
default) would then stall the whole event loop. We send with MSG_DONTWAIT and drop a
message the manager is too busy to take; the next STATUS or WATCHDOG replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Talks to the service manager when ``NOTIFY_SOCKET`` is set; a no-op otherwise."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address
        self.enabled = bool(address)
        self._sock: socket.socket | None = None
        self._last_status = ""
        self._watchdog: asyncio.TimerHandle | None = None

    def send(self, *lines: str) -> None:
        if not self.enabled:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self._address)
        except OSError as e:
            log.debug("sd_notify %r not delivered: %s", lines, e)

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def start_watchdog(self) -> float | None:
        """Ping the watchdog from the event loop, so a stuck loop gets us restarted."""
        interval = watchdog_interval()
        if not self.enabled or interval is None:
            return None
        loop = asyncio.get_running_loop()

        def ping() -> None:
            self.send("WATCHDOG=1")
            self._watchdog = loop.call_later(interval, ping)

        ping()
        return interval

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, when the watchdog is meant for this process."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None
