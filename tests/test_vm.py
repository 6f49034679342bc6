"""End to end: a real qemu guest, started by an unprivileged user, on bridged's bridge.

Three ways to start it, each as user bt-member (group bridged), never as root:
bridgectl run (fd passing), -netdev bridge with bridged-helper (qemu's helper protocol),
and the seed's own -netdev tap,ifname= on a tap from bridgectl create. Each time the
guest pings the LAN peer and is pinged back, through the daemon's bridge, and once qemu
has exited its tap and the tap's D-Bus object are gone.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.buslab import MEMBER, OTHER, PrivateBus
from tests.lab import Daemon, Lab, wait_for
from tests.vmlab import GuestImage, GuestRun, qemu_command, run_guest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86 is not installed (scripts/install-deps)"),
]


def in_host(lab: Lab, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", lab.host.name, *cmd]


def assert_guest_ok(run: GuestRun) -> None:
    assert run.ok, f"guest run failed (qemu exit {run.returncode}):\n{run.transcript()}"
    assert run.returncode == 0, run.transcript()


def assert_all_gone(lab: Lab, bus: PrivateBus) -> None:
    wait_for(lambda: not any(n.startswith("tap") for n in lab.host.links()),
             what="tap gone after qemu exited")
    listed = bus.manager("ListTaps")
    assert json.loads(listed.stdout)["data"] == [[]], listed.stderr


def bridgectl(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridged.cli", *args]


def test_guest_via_bridgectl_run(lab: Lab, bus: PrivateBus, daemon: Daemon, image: GuestImage):
    command = bus.user_command(MEMBER, *bridgectl("run", "--label", "e2e-run", "--",
                                                  *qemu_command(image)))
    run = run_guest(in_host(lab, *command), lab.lan)
    assert_guest_ok(run)
    assert any(line.startswith("bridgectl: tap0 on the bridge for e2e-run") for line in run.lines)
    assert_all_gone(lab, bus)
    assert "tap0 removed" in daemon.log()
    # The guards were on from the first frame, with the MAC bridgectl gave the guest,
    # and a guest that is itself lost nothing to them.
    assert "(e2e-run); guarded, guest MAC 52:54:00:" in daemon.log()
    wait_for(lambda: any(line.startswith("info: tap tap0 removed: ") and
                         "; its guards dropped nothing" in line
                         for line in daemon.log().splitlines()),
             what="the tap's removal line, with its guards' summary")


def test_guest_via_qemu_bridge_helper_protocol(lab: Lab, bus: PrivateBus, daemon: Daemon,
                                               image: GuestImage, helper_binary: str):
    # The real bridged-helper, built from helper/ as the package builds it; qemu runs it.
    netdev = ["-netdev", f"bridge,id=n0,br=br0,helper={helper_binary}",
              "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:03",
              "-name", "e2e-helper"]
    command = bus.user_command(MEMBER, *qemu_command(image), *netdev)
    run = run_guest(in_host(lab, *command), lab.lan)
    assert_guest_ok(run)
    assert_all_gone(lab, bus)
    assert "(e2e-helper)" in daemon.log()  # the label came from qemu -name
    # No MAC given through the helper protocol: the guest's first one is learned.
    assert "guest MAC 52:54:00:00:00:03 learned" in daemon.log()

    # Outside group bridged: qemu stops at once with our reason, and no tap is made.
    refused = subprocess.run(in_host(lab, *bus.user_command(OTHER, *qemu_command(image),
                                                            *netdev)),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "bridged-helper: " in refused.stderr and "bridged" in refused.stderr
    assert not any(n.startswith("tap") for n in lab.host.links())


def test_guest_on_created_tap_by_ifname_the_seed_way(lab: Lab, bus: PrivateBus, daemon: Daemon,
                                                     image: GuestImage, tmp_path):
    # /dev/net/tun is 0600 on these machines (no udev); a real system's udev makes it
    # 0666. Give qemu a 0666 node in a private mount namespace, as udev would.
    tun = tmp_path / "tun"
    subprocess.run(["mknod", "-m", "666", str(tun), "c", "10", "200"], check=True)
    qemu = [*qemu_command(image),
            "-netdev", "tap,id=n0,ifname=$tap,script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:04"]
    wrapper = (f"tap=$({shlex.join(bridgectl('create', '--label', 'e2e-seed'))}) || exit 1; "
               f"exec {' '.join(shlex.quote(a) if '$tap' not in a else a for a in qemu)}")
    user = bus.user_command(MEMBER, "sh", "-c", wrapper)
    command = in_host(lab, "unshare", "--mount", "sh", "-c",
                      'mount --bind "$0" /dev/net/tun && exec "$@"', str(tun), *user)
    run = run_guest(command, lab.lan)
    assert_guest_ok(run)
    # The tap was bound to the wrapper shell, which became qemu: gone with qemu.
    assert_all_gone(lab, bus)
