"""A private system bus loading our own policy, and real unprivileged users."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.lab import REPO, sh

MEMBER = "bt-member"
OTHER = "bt-other"
GROUP = "bridged"

SYSTEM_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- Debian's system.conf, less <user>, <fork>, <pidfile> and the activation helper. -->
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <includedir>{policy_dir}</includedir>
</busconfig>
"""


def ensure_users() -> None:
    """The group bridged, a user in it and one outside it (idempotent)."""
    if subprocess.run(["getent", "group", GROUP], capture_output=True).returncode != 0:
        sh("groupadd", "--system", GROUP)
    for user, groups in ((MEMBER, [GROUP]), (OTHER, [])):
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            sh("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
               *(["--groups", ",".join(groups)] if groups else []), user)


class PrivateBus:
    def __init__(self, extra_policies: dict[str, str] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="bridged-bus-")
        os.chmod(self.dir, 0o755)
        policy_dir = os.path.join(self.dir, "system.d")
        os.mkdir(policy_dir)
        # The policy file we ship, as shipped; and others' (polkit's) where a test needs them.
        shutil.copy(REPO / "dbus" / "org.bridged.Bridged1.conf", policy_dir)
        for name, text in (extra_policies or {}).items():
            Path(policy_dir, name).write_text(text)
        self.socket = os.path.join(self.dir, "system_bus_socket")
        self.address = f"unix:path={self.socket}"
        conf = os.path.join(self.dir, "system.conf")
        Path(conf).write_text(SYSTEM_CONF.format(socket=self.socket, policy_dir=policy_dir))
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("private dbus-daemon did not start")
            time.sleep(0.01)
        # Copies of the clients and of bridged where unprivileged users can read them.
        self.clients = os.path.join(self.dir, "clients")
        shutil.copytree(REPO / "tests" / "clients", self.clients)
        self.pythonpath = os.path.join(self.dir, "lib")
        shutil.copytree(REPO / "bridged", os.path.join(self.pythonpath, "bridged"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        for root, dirs, files in os.walk(self.dir):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        os.chmod(self.socket, 0o666)

    def busctl(self, *args: str, user: str | None = None,
               check: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = ["busctl", f"--address={self.address}", "--no-pager", *args]
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=check)

    def manager(self, member: str, *args: str, user: str | None = None,
                check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.busctl("--json=short", "call", "org.bridged.Bridged1",
                           "/org/bridged/Bridged1", "org.bridged.Bridged1.Manager", member,
                           *args, user=user, check=check)

    def get_property(self, path: str, interface: str, name: str) -> object:
        out = self.busctl("--json=short", "get-property", "org.bridged.Bridged1", path,
                          interface, name, check=True).stdout
        return json.loads(out)["data"]

    def user_command(self, user: str | None, *cmd: str) -> list[str]:
        """``cmd`` as ``user`` (or root), with this bus as the system bus and our code
        importable."""
        env = ["env", f"DBUS_SYSTEM_BUS_ADDRESS={self.address}", f"PYTHONPATH={self.pythonpath}"]
        prefix = ["runuser", "-u", user, "--"] if user is not None else []
        return [*prefix, *env, *cmd]

    def bridgectl(self, *args: str, user: str | None = None,
                  timeout: float = 30) -> subprocess.CompletedProcess[str]:
        cmd = self.user_command(user, sys.executable, "-m", "bridged.cli", *args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def client(self, user: str, *args: str, background: bool = False):  # type: ignore[no-untyped-def]
        """Run tests/clients/tapclient.py as ``user`` with this interpreter."""
        cmd = ["runuser", "-u", user, "--", sys.executable,
               os.path.join(self.clients, "tapclient.py"), self.address, *args]
        if background:
            # A session of its own, so kill_client() reaches the client behind runuser.
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                    start_new_session=True)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.splitlines()[0])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def kill_client(proc: subprocess.Popen[str]) -> None:
    """Kill a background client and everything it started (runuser forks)."""
    import signal
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
