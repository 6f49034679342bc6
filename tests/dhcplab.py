"""A real DHCP server on the LAN and a real systemd-networkd on the host, in namespaces.

busybox's udhcpd serves the LAN namespace. systemd-networkd (Debian's) runs in the host
namespace without systemd around it: a mount namespace of its own gives it a fresh
/run/systemd (its .network directory bound from a test directory, where bridged writes
too) and a read-only /sys, which is how networkd knows that no udev will announce the
links (it then configures them at once, as in a container). It joins the test's private
bus, with its own D-Bus policy, so bridged reloads it exactly as on a host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.buslab import PrivateBus
from tests.lab import LAN_V4, NetNS, wait_for

NETWORKD = "/lib/systemd/systemd-networkd"
NETWORKD_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.network1.conf")
POOL = ("198.51.100.100", "198.51.100.150")


def networkd_bus() -> PrivateBus:
    """A private system bus where networkd may own its name."""
    return PrivateBus({NETWORKD_POLICY.name: NETWORKD_POLICY.read_text()})


class DHCPServer:
    """busybox udhcpd on the LAN namespace's bridge."""

    def __init__(self, lan: NetNS, lease_s: int = 120) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bridged-dhcpd-"))
        (self.dir / "leases").touch()
        (self.dir / "udhcpd.conf").write_text(
            f"interface lanbr\nstart {POOL[0]}\nend {POOL[1]}\nmin_lease 10\n"
            f"opt router {LAN_V4}\nopt dns {LAN_V4}\nopt subnet 255.255.255.0\n"
            f"opt lease {lease_s}\nlease_file {self.dir}/leases\n"
            f"pidfile {self.dir}/udhcpd.pid\n")
        self.log = self.dir / "udhcpd.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", lan.name, "busybox", "udhcpd", "-f",
                 str(self.dir / "udhcpd.conf")], stdout=log, stderr=log)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Networkd:
    """systemd-networkd in the host namespace, reading ``network_dir`` as its
    /run/systemd/network."""

    def __init__(self, host: NetNS, bus: PrivateBus, network_dir: Path) -> None:
        self.host, self.bus, self.network_dir = host, bus, network_dir
        self.log = network_dir.parent / "networkd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        script = (
            "set -e\n"
            "mount -t tmpfs -o mode=755 tmpfs /run/systemd\n"
            "mkdir -p /run/systemd/network /run/systemd/netif\n"
            f"mount --bind {self.network_dir} /run/systemd/network\n"
            "chown systemd-network:systemd-network /run/systemd/netif\n"
            f"exec ip netns exec {self.host.name} sh -c "
            f"'mount -o remount,ro /sys && exec {NETWORKD}'\n")
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus.address,
                   SYSTEMD_LOG_LEVEL="debug")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                env=env, stdout=log, stderr=log)
        wait_for(lambda: self.bus.busctl("status", "org.freedesktop.network1").returncode == 0,
                 timeout=15, what="systemd-networkd on the bus")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        time.sleep(0.2)
        self.start()

    def state(self, ifname: str) -> str:
        """networkd's AdministrativeState of a link (e.g. "configured", "unmanaged")."""
        index = self.host.link(ifname)["ifindex"]  # type: ignore[index]
        path = f"/org/freedesktop/network1/link/_3{index}"
        out = self.bus.busctl("get-property", "org.freedesktop.network1", path,
                              "org.freedesktop.network1.Link", "AdministrativeState")
        return out.stdout.split('"')[1] if '"' in out.stdout else out.stderr.strip()

    def close(self) -> None:
        self.stop()
