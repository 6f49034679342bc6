"""A real systemd as PID 1, in namespaces, on a throw-away overlay of the machine's /.

Its network namespace is its own: the test hands it an eth0 (a veth whose peer is on a
LAN namespace's bridge), so bridged inside manages that and nothing of the machine's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.lab import REPO, NetNS, sh, wait_for

TARGET = """[Unit]
Description=bridged test boot target
Requires=basic.target
Wants=dbus.socket systemd-journald.socket
After=basic.target
AllowIsolate=yes
"""
CGROUP = "/sys/fs/cgroup/unified"


class SystemdContainer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bridged-systemd-"))
        (self.dir / "ov").mkdir()
        (self.dir / "console.log").touch()
        (self.dir / "bridged-test.target").write_text(TARGET)
        self.cgroup = None
        if os.path.isdir(CGROUP):
            # A cgroup of its own to put PID 1 in, so systemd finds a delegated subtree.
            self.cgroup = Path(CGROUP) / self.dir.name
            self.cgroup.mkdir()
        with open(self.dir / "launcher.log", "wb") as log:
            self.launcher = subprocess.Popen(
                ["unshare", "--pid", "--mount", "--net", "--uts", "--ipc", "--cgroup",
                 "--fork", "--propagation", "private", "bash",
                 str(REPO / "tests" / "systemd" / "boot.sh"), str(self.dir)],
                stdout=subprocess.DEVNULL, stderr=log, preexec_fn=self._enter_cgroup)
        self.pid = wait_for(self._systemd_pid, timeout=20, what="systemd to start")
        wait_for(lambda: os.path.exists(f"/proc/{self.pid}/root/run/systemd/private"),
                 timeout=20, what="systemd's private socket")
        result = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=60)
        self.boot_state = result.stdout.strip()

    def _enter_cgroup(self) -> None:
        if self.cgroup is not None:
            (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))

    def _systemd_pid(self) -> int | None:
        if self.launcher.poll() is not None:
            raise AssertionError("systemd container exited: "
                                 + (self.dir / "launcher.log").read_text()
                                 + (self.dir / "console.log").read_text()[-3000:])
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.launcher.pid)],
                             capture_output=True, text=True).stdout.split()
        for pid in out:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return None

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.pid}/root")

    def run(self, *cmd: str, user: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``cmd`` inside, as root or as ``user`` (with that user's real groups)."""
        prefix = ["nsenter", "-t", str(self.pid), "-a", "-r", "-w"]
        if user is not None:
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
        result = subprocess.run([*prefix, *cmd], capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def copy_in(self, source: Path, target: str) -> None:
        shutil.copy(source, self.root / target.lstrip("/"))

    def write(self, target: str, text: str) -> None:
        path = self.root / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def plug_uplink(self, lan: NetNS, name: str = "eth0") -> None:
        """An uplink veth: ``name`` inside, its peer on the LAN namespace's bridge."""
        peer = f"sd{os.getpid() % 10000}"
        lan.ip("link", "add", peer, "type", "veth", "peer", "name", name,
               "netns", str(self.pid))
        lan.ip("link", "set", peer, "master", "lanbr", "up")
        self.run("ip", "link", "set", name, "up")

    def main_pid(self, unit: str = "bridged.service") -> int:
        return int(self.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout)

    def wait_active(self, unit: str = "bridged.service", timeout: float = 30) -> None:
        def active() -> bool:
            state = self.run("systemctl", "is-active", unit, check=False).stdout.strip()
            return state == "active"
        wait_for(active, timeout=timeout, what=f"{unit} active")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.launcher.poll() is None:
                self.run("systemctl", "poweroff", "--no-block", check=False, timeout=10)
                try:
                    self.launcher.wait(20)
                except subprocess.TimeoutExpired:
                    self.launcher.kill()
                    self.launcher.wait()
        if self.cgroup is not None:
            for path in sorted(self.cgroup.rglob("*"), key=lambda p: len(str(p)), reverse=True):
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()
        time.sleep(0.1)
        sh("umount", "-l", str(self.dir / "ov"), check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
