"""A real systemd as PID 1, in namespaces, on a throw-away overlay of the machine's /
(or of a debootstrapped Debian 13 root: ``lower=trixie_root()``).

Its network namespace is its own: the test hands it an eth0 (a veth whose peer is on a
LAN namespace's bridge), so bridged inside manages that and nothing of the machine's.
Other network managers (NetworkManager, ifupdown) are installed inside, never on the
machine: ``install(...)`` copies Debian's packages in (downloaded once to DEBS).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.buslab import GROUP, MEMBER, OTHER
from tests.lab import HOST_V4, LAN_V4, REPO, NetNS, sh, wait_for

# bridged.toml of the packaged daemon in the container: the seed recipe's br0 on eth0.
CONTAINER_CONFIG = f"""
[bridge]
name = "br0"
uplinks = ["eth0"]
mac = "uplink"

[ip]
mode = "static"
addresses = ["{HOST_V4}/24"]
gateway = "{LAN_V4}"
"""

TARGET = """[Unit]
Description=bridged test boot target
Requires=basic.target
Wants=dbus.socket systemd-journald.socket
After=basic.target
AllowIsolate=yes
"""
CGROUP = "/sys/fs/cgroup/unified"
# Debian packages for the container, downloaded once (scripts/install-deps does it too).
DEBS = Path(os.environ.get("BRIDGED_DEBS", "/var/tmp/bridged-debs"))
TRIXIE_ROOT = Path(os.environ.get("BRIDGED_TRIXIE_ROOT", "/var/tmp/bridged-trixie"))
# invoke-rc.d asks this before starting anything: 101 = "not now". The test starts the
# services itself, in the order it wants.
POLICY_RC_D = "#!/bin/sh\nexit 101\n"


def trixie_root() -> Path:
    """The Debian 13 root, built by scripts/make-trixie-root on first use (1-2.5 min;
    at once when it is there)."""
    subprocess.run([str(REPO / "scripts" / "make-trixie-root"), str(TRIXIE_ROOT)],
                   check=True, timeout=1200)
    return TRIXIE_ROOT


def debs(*packages: str) -> list[Path]:
    """The .deb files that install ``packages`` on top of the machine's own / (what the
    default container boots): downloaded into DEBS when missing, never installed here."""
    def plan() -> list[Path]:
        out = sh("apt-get", "-s", "-q", "install", "--no-install-recommends", *packages,
                 timeout=120).stdout
        files = []
        for name, version, arch in re.findall(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) .*\[(\w+)\]\)",
                                              out, re.M):
            files.append(DEBS / f"{name}_{version.replace(':', '%3a')}_{arch}.deb")
        return files

    files = plan()
    if not all(f.exists() for f in files):
        (DEBS / "partial").mkdir(parents=True, exist_ok=True)
        sh("apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "--download-only",
           "--no-install-recommends", "-o", f"Dir::Cache::archives={DEBS}", *packages,
           timeout=600)
        files = plan()
    missing = [str(f) for f in files if not f.exists()]
    assert not missing, f"apt-get downloaded no {missing}"
    return files


class SystemdContainer:
    def __init__(self, *, lower: Path | None = None, fresh_sysfs: bool = False,
                 writable_net_sysctl: bool = False) -> None:
        """Boot systemd on an overlay of ``lower`` (default: the machine's /).

        ``fresh_sysfs``: a sysfs of the container's own network namespace instead of the
        machine's /sys (NetworkManager reads its links there); ``writable_net_sysctl``:
        /proc/sys/net writable (per namespace; NetworkManager and networkd write it).
        """
        self.lower = lower
        self.dir = Path(tempfile.mkdtemp(prefix="bridged-systemd-"))
        (self.dir / "ov").mkdir()
        (self.dir / "console.log").touch()
        (self.dir / "bridged-test.target").write_text(TARGET)
        self.cgroup = None
        if os.path.isdir(CGROUP):
            # A cgroup of its own to put PID 1 in, so systemd finds a delegated subtree.
            self.cgroup = Path(CGROUP) / self.dir.name
            self.cgroup.mkdir()
        env = dict(os.environ, BRIDGED_FRESH_SYSFS="1" if fresh_sysfs else "0",
                   BRIDGED_NET_SYSCTL="rw" if writable_net_sysctl else "ro")
        with open(self.dir / "launcher.log", "wb") as log:
            self.launcher = subprocess.Popen(
                ["unshare", "--pid", "--mount", "--net", "--uts", "--ipc", "--cgroup",
                 "--fork", "--propagation", "private", "bash",
                 str(REPO / "tests" / "systemd" / "boot.sh"), str(self.dir),
                 str(lower or "/")],
                stdout=subprocess.DEVNULL, stderr=log, preexec_fn=self._enter_cgroup, env=env)
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

    def install(self, *packages: str) -> None:
        """Debian's ``packages`` installed inside, started by nothing (policy-rc.d)."""
        assert self.lower is None, "packages are downloaded for the machine's own release"
        files = debs(*packages)
        inside = self.root / "var/tmp/debs"
        inside.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, inside)
        self.write("/usr/sbin/policy-rc.d", POLICY_RC_D)
        os.chmod(self.root / "usr/sbin/policy-rc.d", 0o755)
        try:
            self.run("env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "-i",
                     *(f"/var/tmp/debs/{f.name}" for f in files), timeout=300)
        finally:
            self.run("rm", "-rf", "/usr/sbin/policy-rc.d", "/var/tmp/debs")

    def install_bridged(self, deb: Path) -> None:
        self.copy_in(deb, "/tmp/bridged.deb")
        self.run("dpkg", "-i", "/tmp/bridged.deb", timeout=120)

    def ensure_users(self) -> None:
        """The test users inside (the machine's own, on its overlay; made on another root)."""
        if self.run("id", MEMBER, check=False).returncode == 0:
            return
        if self.run("getent", "group", GROUP, check=False).returncode != 0:
            self.run("groupadd", "--system", GROUP)
        self.run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 "--groups", GROUP, MEMBER)
        self.run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER)

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
