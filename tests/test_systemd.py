"""The Debian package inside a real systemd (PID 1, in namespaces): install, enable,
use, reload, crash, hang, and D-Bus activation; on Debian 12 (the machine's own root)
and on Debian 13 (a debootstrapped root, the .deb built here installed into it).

The container's network namespace is its own; its eth0 is a veth to the LAN namespace.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridged import __version__
from tests.buslab import MEMBER, OTHER, ensure_users
from tests.lab import HOST_V4, LAN_V4, Lab, wait_for
from tests.syslab import CONTAINER_CONFIG, SystemdContainer, trixie_root

pytestmark = [
    pytest.mark.root,
    pytest.mark.container,
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None,
                       reason="Debian build tools missing (scripts/install-deps)"),
]
CONFIG = CONTAINER_CONFIG
MANAGER = ("org.bridged.Bridged1", "/org/bridged/Bridged1", "org.bridged.Bridged1.Manager")



@pytest.fixture(scope="module", params=["debian12", "debian13"])
def system(request: pytest.FixtureRequest,
           deb: Path) -> Iterator[tuple[SystemdContainer, Lab]]:
    ensure_users()
    lower = trixie_root() if request.param == "debian13" else None
    lab = Lab()
    container = SystemdContainer(lower=lower)
    try:
        assert container.boot_state in ("running", "degraded"), container.boot_state
        container.install_bridged(deb)
        container.ensure_users()
        container.plug_uplink(lab.lan)
        container.run("mkdir", "-p", "/run/udev/rules.d")
        yield container, lab
    finally:
        container.close()
        lab.close()


def journal(c: SystemdContainer) -> list[dict[str, str]]:
    out = c.run("journalctl", "-u", "bridged", "-o", "json", "--no-pager").stdout
    return [json.loads(line) for line in out.splitlines()]


def busctl_call(c: SystemdContainer, member: str, *args: str,
                user: str | None = None) -> subprocess.CompletedProcess[str]:
    return c.run("busctl", "--json=short", "call", *MANAGER, member, *args, user=user,
                 check=False)


def test_installed_files_and_unit_checks(system: tuple[SystemdContainer, Lab],
                                         figures: Callable[[str], None]):
    c, _ = system
    files = set(c.run("dpkg", "-L", "bridged").stdout.split())
    for path in ("/usr/sbin/bridged", "/usr/bin/bridgectl", "/usr/libexec/bridged-helper",
                 "/lib/systemd/system/bridged.service", "/usr/lib/sysusers.d/bridged.conf",
                 "/usr/share/dbus-1/system.d/org.bridged.Bridged1.conf",
                 "/usr/share/dbus-1/system-services/org.bridged.Bridged1.service",
                 "/usr/share/polkit-1/actions/org.bridged.Bridged1.policy",
                 "/usr/share/polkit-1/rules.d/bridged.rules",
                 "/etc/bridged/bridged.toml", "/usr/share/man/man8/bridged.8.gz",
                 "/usr/share/man/man1/bridgectl.1.gz", "/usr/share/man/man5/bridged.toml.5.gz"):
        assert path in files, path
    # bridged-helper is C: the package's shared-library dependencies let it run.
    version = c.run("/usr/libexec/bridged-helper", "--version").stdout
    assert version == f"bridged-helper {__version__}\n"
    # sysusers made the daemon's user and the tap group; the service is not enabled yet.
    assert c.run("getent", "passwd", "_bridged").returncode == 0
    assert c.run("getent", "group", "bridged").returncode == 0
    assert c.run("systemctl", "is-enabled", "bridged", check=False).stdout.strip() == "disabled"
    verify = c.run("systemd-analyze", "verify", "bridged.service", check=False)
    complaints = verify.stderr
    if c.run("sh", "-c", "command -v man", check=False).returncode != 0:
        # A minimal root has no man-db: verify cannot resolve Documentation=man:...
        complaints = re.sub(r"bridged.service: Command 'man [^\n]*failed with code 1\n", "",
                            complaints)
    assert complaints.strip() == "", verify.stderr
    security = c.run("systemd-analyze", "security", "--no-pager", "bridged.service").stdout
    exposure = float(re.search(r"Overall exposure level for bridged\.service: ([\d.]+)",
                               security).group(1))  # type: ignore[union-attr]
    figures(f"systemd-analyze security bridged.service: exposure {exposure}")
    assert exposure <= 2.0, security


def test_enable_now_brings_the_bridge_up(system: tuple[SystemdContainer, Lab]):
    c, lab = system
    c.write("/etc/bridged/bridged.toml", CONFIG)
    c.run("systemctl", "enable", "--now", "bridged")
    c.wait_active()
    links = json.loads(c.run("ip", "-j", "-d", "link", "show").stdout)
    by_name = {link["ifname"]: link for link in links}
    assert by_name["eth0"]["master"] == "br0"
    assert by_name["br0"]["address"] == by_name["eth0"]["address"]
    assert c.run("busybox", "ping", "-c", "1", "-W", "3", LAN_V4, check=False).returncode == 0
    assert lab.lan.ping(HOST_V4)
    status = c.run("systemctl", "status", "--no-pager", "bridged", check=False).stdout
    assert "Status: \"br0 up, uplink eth0, 0 taps\"" in status, status
    # Least privilege, as the unit says.
    pid = c.main_pid()
    proc_status = c.run("cat", f"/proc/{pid}/status").stdout
    assert re.search(r"^Uid:\s+(\d+)", proc_status, re.M).group(1) != "0"  # type: ignore[union-attr]
    assert re.search(r"^CapEff:\s+0*1000$", proc_status, re.M), proc_status
    rules = c.run("cat", "/run/udev/rules.d/90-bridged.rules").stdout  # via the tmpfiles link
    assert 'KERNEL=="br0"' in rules and 'KERNEL=="eth0"' in rules


def test_bus_users_and_journal(system: tuple[SystemdContainer, Lab]):
    c, _ = system
    tree = c.run("busctl", "tree", "--no-pager", "org.bridged.Bridged1").stdout
    assert "/org/bridged/Bridged1/bridge/br0" in tree
    created = busctl_call(c, "CreateTap", "a{sv}", "1", "linger", "b", "true", user=MEMBER)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["data"][1] == "tap0"
    second = c.run("bridgectl", "create", "--linger", "--label", "vm2", user=MEMBER)
    assert second.stdout.strip() == "tap1"
    # Bound to the shell that ran bridgectl: the unprivileged, sandboxed daemon watches
    # another user's process through a pidfd and frees the tap when it exits.
    bound = c.run("sh", "-c", "bridgectl create --label bound && sleep 0.3", user=MEMBER)
    assert bound.stdout.strip() == "tap2"

    def names() -> list[str]:
        return [t["name"] for t in json.loads(c.run("bridgectl", "list", "--json").stdout)]

    wait_for(lambda: names() == ["tap0", "tap1"], what="bound tap freed with its shell")
    refused = c.run("bridgectl", "create", "--linger", user=OTHER, check=False)
    assert refused.returncode == 4 and "bridged" in refused.stderr
    listed = json.loads(c.run("bridgectl", "list", "--json").stdout)
    assert [(t["name"], t["owner"]) for t in listed] == [("tap0", MEMBER), ("tap1", MEMBER)]
    entries = journal(c)
    events = {e.get("BRIDGED_EVENT") for e in entries}
    assert {"uplink-enslaved", "ready", "tap-created"} <= events
    enslaved = next(e for e in entries if e.get("BRIDGED_EVENT") == "uplink-enslaved")
    assert enslaved["INTERFACE"] == "eth0" and enslaved["_SYSTEMD_UNIT"] == "bridged.service"
    # The sandboxed daemon guards the taps through libnftables, and hears nf_tables and
    # nfnetlink_log (AF_NETLINK), and filters its link events, without a warning.
    assert all(t["guarded"] for t in listed)
    assert "guards-ready" in events
    assert not events & {"guard-log-unavailable", "guard-watch-unavailable", "guard-failed",
                         "port-filter-unavailable"}
    guarded = c.run("nft", "list", "set", "bridge", "bridged", "guarded").stdout
    assert '"tap0"' in guarded and '"tap1"' in guarded, guarded


def test_reload_rereads_the_config(system: tuple[SystemdContainer, Lab]):
    c, _ = system
    c.write("/etc/bridged/bridged.toml", CONFIG + "\n[taps]\nmax_per_user = 2\n")
    c.run("systemctl", "reload", "bridged")
    wait_for(lambda: any(e.get("BRIDGED_EVENT") == "reloaded" for e in journal(c)),
             what="reload logged")
    over = c.run("bridgectl", "create", "--linger", user=MEMBER, check=False)
    assert over.returncode == 1 and "taps.max_per_user = 2" in over.stderr, over.stderr


def test_sigkill_restarts_and_adopts_taps(system: tuple[SystemdContainer, Lab]):
    c, _ = system
    before = c.main_pid()
    c.run("systemctl", "kill", "-s", "KILL", "bridged")
    wait_for(lambda: c.main_pid() not in (0, before), timeout=30, what="a new main pid")
    c.wait_active()
    listed = json.loads(c.run("bridgectl", "list", "--json").stdout)
    assert [t["name"] for t in listed] == ["tap0", "tap1"]
    assert any(e.get("BRIDGED_EVENT") == "tap-adopted" for e in journal(c))


def test_watchdog_restarts_a_stuck_daemon(system: tuple[SystemdContainer, Lab]):
    c, _ = system
    c.write("/etc/systemd/system/bridged.service.d/watchdog.conf",
            "[Service]\nWatchdogSec=2s\n")
    c.run("systemctl", "daemon-reload")
    c.run("systemctl", "restart", "bridged")
    c.wait_active()
    restarts = int(c.run("systemctl", "show", "-p", "NRestarts", "--value", "bridged").stdout)
    stuck = c.main_pid()
    c.run("kill", "-STOP", str(stuck))  # the event loop stops answering
    started = time.monotonic()
    wait_for(lambda: c.main_pid() not in (0, stuck), timeout=30, what="watchdog restart")
    c.wait_active()
    after = int(c.run("systemctl", "show", "-p", "NRestarts", "--value", "bridged").stdout)
    assert after == restarts + 1 and time.monotonic() - started < 20
    # Nothing but systemd's watchdog ends a stopped process: it was killed and replaced.
    assert c.run("kill", "-0", str(stuck), check=False).returncode != 0


def test_dbus_activation_starts_a_stopped_daemon(system: tuple[SystemdContainer, Lab]):
    c, _ = system
    c.run("systemctl", "stop", "bridged")
    assert c.run("systemctl", "is-active", "bridged", check=False).stdout.strip() == "inactive"
    reply = busctl_call(c, "ListTaps", user=MEMBER)
    assert reply.returncode == 0, reply.stderr
    assert len(json.loads(reply.stdout)["data"][0]) == 2  # the lingering taps, adopted again
    assert c.run("systemctl", "is-active", "bridged").stdout.strip() == "active"


def test_the_sandboxed_daemon_keeps_the_vxlan_port(system: tuple[SystemdContainer, Lab]):
    # As user _bridged with CAP_NET_ADMIN alone, under the unit's system call filter:
    # the VXLAN port is made, marked, put on the bridge, kept, its flood list kept.
    c, lab = system
    peer = f"sdu{c.main_pid() % 1000}"
    lab.lan.ip("link", "add", peer, "type", "veth", "peer", "name", "und0", "netns",
               str(c.pid))
    lab.lan.ip("link", "set", peer, "up")
    c.run("ip", "link", "set", "und0", "mtu", "1600", "up")
    c.run("ip", "addr", "add", "192.0.2.11/24", "dev", "und0")
    c.write("/etc/bridged/bridged.toml",
            CONFIG + '\n[vxlan]\nvni = 4242\nlocal = "192.0.2.11"\npeers = ["192.0.2.12"]\n')
    c.run("systemctl", "reload", "bridged")

    def kept() -> bool:
        link = json.loads(c.run("ip", "-j", "-d", "link", "show", "vx4242",
                                check=False).stdout or "[{}]")[0]
        fdb = c.run("bridge", "fdb", "show", "dev", "vx4242", check=False).stdout
        return link.get("master") == "br0" and link.get("ifalias") == "bridged:vxlan" and \
            "00:00:00:00:00:00 dst 192.0.2.12 self permanent" in fdb

    wait_for(kept, what="vx4242 made by the sandboxed daemon")
    c.run("ip", "link", "del", "vx4242")
    wait_for(kept, what="vx4242 made again")
    status = c.run("systemctl", "status", "--no-pager", "bridged", check=False).stdout
    assert "overlay vx4242 (VNI 4242) to 1 peer" in status, status
    created = [e for e in journal(c) if e.get("BRIDGED_EVENT") == "vxlan-created"]
    assert len(created) == 2 and created[0]["INTERFACE"] == "vx4242"
    assert created[0]["BRIDGED_VNI"] == "4242"
