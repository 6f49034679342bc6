"""Test lab: network namespaces, the daemon in one, an sd_notify socket.

Rule zero: nothing here touches the machine's own network. Every test builds a host
namespace (where bridged runs, with a veth named eth0 as its uplink) and a "lan"
namespace holding the peer, and deletes both afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LAN_V4 = "198.51.100.1"
HOST_V4 = "198.51.100.2"
LAN_V6 = "2001:db8::1"
HOST_V6 = "2001:db8::2"


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


def wait_for(predicate: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class NetNS:
    """A named network namespace, deleted by ``close``."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}-{secrets.token_hex(3)}"
        sh("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args, check=check)

    def exec(self, *cmd: str, check: bool = True,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout)

    def links(self) -> dict[str, dict[str, Any]]:
        out = json.loads(self.ip("-j", "-d", "link", "show").stdout)
        return {link["ifname"]: link for link in out}

    def link(self, name: str) -> dict[str, Any] | None:
        return self.links().get(name)

    def addresses(self, name: str) -> set[str]:
        out = json.loads(self.ip("-j", "addr", "show", "dev", name).stdout)
        return {f"{a['local']}/{a['prefixlen']}" for entry in out for a in entry["addr_info"]
                if a.get("scope") == "global"}

    def routes(self, *args: str) -> list[dict[str, Any]]:
        return json.loads(self.ip("-j", *args, "route", "show").stdout)  # type: ignore[no-any-return]

    def ping(self, address: str, count: int = 1, timeout: int = 2) -> bool:
        result = self.exec("busybox", "ping", "-c", str(count), "-W", str(timeout), address,
                           check=False, timeout=timeout * count + 5)
        return result.returncode == 0

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """This process inside the namespace, then back where it was (setns)."""
        original = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            yield
        finally:
            _setns(original)
            os.close(target)
            os.close(original)

    def close(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


def _setns(fd: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns")


class Lab:
    """host namespace (bridged's) + lan namespace, joined by veth eth0 <-> lan0."""

    def __init__(self, lan_v4: str = LAN_V4, lan_v6: str = LAN_V6) -> None:
        """``lan_v4``/``lan_v6``: the LAN peer's addresses (several labs joined into one
        segment, as the overlay tests do, need distinct ones)."""
        self.host = NetNS("bridged-host")
        self.lan = NetNS("bridged-lan")
        self.lan_index = 0
        self.lan_v4, self.lan_v6 = lan_v4, lan_v6
        self.lan.ip("link", "add", "lanbr", "type", "bridge")
        self.lan.ip("link", "set", "lanbr", "up")
        self.lan.ip("addr", "add", f"{lan_v4}/24", "dev", "lanbr")
        self.lan.ip("addr", "add", f"{lan_v6}/64", "dev", "lanbr", "nodad")
        self.plug_uplink()

    def plug_uplink(self, name: str = "eth0", mac: str | None = None) -> None:
        """Create the uplink veth (hotplug): ``name`` in host, its peer on the LAN bridge;
        ``mac`` to plug the same NIC back in."""
        self.lan_index += 1
        peer = f"lan{self.lan_index}"
        self.host.ip("link", "add", name, *(("address", mac) if mac else ()), "type", "veth",
                     "peer", "name", peer, "netns", self.lan.name)
        self.lan.ip("link", "set", peer, "master", "lanbr", "up")
        self.host.ip("link", "set", name, "up")

    def unplug_uplink(self, name: str = "eth0") -> None:
        self.host.ip("link", "del", name)

    def classic_host_config(self) -> None:
        """What /etc/network/interfaces gave the host before the bridge: IP on eth0."""
        self.host.ip("addr", "add", f"{HOST_V4}/24", "dev", "eth0")
        self.host.ip("addr", "add", f"{HOST_V6}/64", "dev", "eth0", "nodad")
        self.host.ip("route", "add", "default", "via", LAN_V4)

    def close(self) -> None:
        self.host.close()
        self.lan.close()


class NotifySocket:
    """An sd_notify socket, as systemd provides one, collecting what the daemon sends."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, str]] = []
        self._arrived = threading.Condition()
        # Read continuously, as systemd does: a reader that lags makes senders block.
        self._reader = threading.Thread(target=self._read_forever, daemon=True)
        self._reader.start()

    def _read_forever(self) -> None:
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], "little")
            with self._arrived:
                self.messages.append((pid, data.decode()))
                self._arrived.notify_all()

    def wait(self, needle: str, timeout: float = 10, since: int = 0) -> str:
        """Wait for a message containing ``needle``, among those from index ``since`` on."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for _pid, message in self.messages[since:]:
                    if needle in message:
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no sd_notify {needle!r} within {timeout}s; "
                                         f"got {[m for _, m in self.messages]}")
                self._arrived.wait(left)

    def mark(self) -> int:
        """An index for ``wait(since=...)``: only messages after now count."""
        with self._arrived:
            return len(self.messages)

    def lines(self) -> list[str]:
        with self._arrived:
            return [line for _, message in self.messages for line in message.split("\n")]

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Daemon:
    """bridged running inside the host namespace, started the way systemd would."""

    def __init__(self, lab: Lab, config: str, *, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()) -> None:
        self.lab = lab
        self.dir = tempfile.mkdtemp(prefix="bridged-test-")
        self.config_path = os.path.join(self.dir, "bridged.toml")
        self.write_config(config)
        self.notify = NotifySocket(self.dir)
        self.log_path = os.path.join(self.dir, "stderr.log")
        # Bridge-only tests run without a bus; the D-Bus tests pass --bus-address.
        self.extra_args = extra_args if "--bus-address" in extra_args else \
            ("--no-bus", *extra_args)
        self.env = env or {}
        self.wrap = wrap
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, text: str) -> None:
        with open(self.config_path, "w") as f:
            f.write(text)

    def start(self, wait_ready: bool = True) -> Daemon:
        env = dict(os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=self.notify.path,
                   **self.env)
        cmd = [*self.wrap, "ip", "netns", "exec", self.lab.host.name, sys.executable,
               "-m", "bridged", "--config", self.config_path, *self.extra_args]
        with open(self.log_path, "ab") as log:
            # cwd: "python -m" puts the working directory first on sys.path, ahead of
            # PYTHONPATH; run from this checkout so that its bridged is the one started.
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=REPO)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15) -> str:
        try:
            message = self.notify.wait("READY=1", timeout)
        except AssertionError:
            raise AssertionError(f"bridged did not become ready; log:\n{self.log()}") from None
        self.assert_not_in_host_netns()
        return message

    @property
    def pid(self) -> int:
        """The daemon's own pid, as it reports it on the notify socket."""
        for pid, message in self.notify.messages:
            if "READY=1" in message and pid:
                return pid
        raise AssertionError("daemon pid unknown before READY=1")

    def assert_not_in_host_netns(self) -> None:
        ours = os.stat(f"/proc/{self.pid}/ns/net").st_ino
        assert ours != os.stat("/proc/self/ns/net").st_ino, "bridged runs in the test's netns!"
        try:
            init = os.stat("/proc/1/ns/net").st_ino
        except PermissionError:
            return  # PID 1 belongs to a sandbox above us; the test's own netns was checked
        assert ours != init, "bridged runs in PID 1's netns!"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 10) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code

    def close(self) -> None:
        self.stop()
        self.notify.close()
        shutil.rmtree(self.dir, ignore_errors=True)
