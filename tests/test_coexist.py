"""bridged beside the real NetworkManager, systemd-networkd and ifupdown, in a real
systemd (PID 1, in namespaces) with the .deb installed, both start orders and the
managers' restarts.

In each: the uplink never leaves the bridge for longer than a re-enslave, taps stay on
it, no address appears on the bridge that bridged did not configure, no DHCP request
leaves for a link of bridged's once it has claimed them, and the managers list those
links as unmanaged. The managers run as Debian ships them (installed inside the
container, never on the machine); there is no udev in the container, so the udev
rules never reach them: what holds is what bridged told them over D-Bus and in their
drop-ins.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.buslab import MEMBER, ensure_users
from tests.lab import HOST_V4, LAN_V4, NetNS, wait_for
from tests.syslab import CONTAINER_CONFIG, SystemdContainer, trixie_root

pytestmark = [
    pytest.mark.root,
    pytest.mark.container,
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None,
                       reason="Debian build tools missing (scripts/install-deps)"),
]
MANAGERS = ("network-manager", "ifupdown", "bridge-utils", "isc-dhcp-client")
CONFIG = CONTAINER_CONFIG
# The catch-all many hosts carry: every link gets DHCP.
CATCH_ALL = "[Match]\nName=*\n\n[Network]\nDHCP=yes\n"
# How long an uplink may be off the bridge: one re-enslave after someone took it.
REENSLAVE_LIMIT = 0.5
# NetworkManager's DHCP timeout in the test that waits it out (its default is 45 s).
NM_DHCP_TIMEOUT = 12



class DhcpServer:
    """busybox udhcpd on the LAN bridge (the LAN's DHCP server)."""

    def __init__(self, lan: NetNS) -> None:
        self.dir = tempfile.mkdtemp(prefix="bridged-dhcp-")
        conf = Path(self.dir, "udhcpd.conf")
        conf.write_text(f"interface lanbr\nstart 198.51.100.100\nend 198.51.100.150\n"
                        f"opt router {LAN_V4}\nopt subnet 255.255.255.0\nopt lease 600\n"
                        f"lease_file {self.dir}/leases\npidfile {self.dir}/pid\n")
        Path(self.dir, "leases").touch()
        self.proc = subprocess.Popen(["ip", "netns", "exec", lan.name, "busybox", "udhcpd",
                                      "-f", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class DhcpSniffer:
    """Every DHCP client message on the LAN (UDP to port 67): when, from which MAC, and
    its type (1 DISCOVER, 3 REQUEST, 4 DECLINE, 7 RELEASE, 8 INFORM)."""

    def __init__(self, lan: NetNS) -> None:
        with lan.entered():
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            self.sock.bind(("lanbr", 0))
        self.sock.settimeout(0.2)
        self.seen: list[tuple[float, str, int]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(frame) < 14 + 20 + 8 or frame[14 + 9] != 17:
                continue
            udp = 14 + (frame[14] & 0x0F) * 4
            (dport,) = struct.unpack("!H", frame[udp + 2:udp + 4])
            if dport == 67:
                self.seen.append((time.monotonic(), frame[6:12].hex(":"),
                                  _dhcp_type(frame[udp + 8:])))

    def asked(self, mac: str, since: float) -> list[int]:
        """The types of the messages ``mac`` sent since ``since`` that ask for a lease
        (a RELEASE is a client giving one up)."""
        return [kind for t, m, kind in self.seen if m == mac and t >= since and kind != 7]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def _dhcp_type(bootp: bytes) -> int:
    options = bootp[240:]  # after the fixed BOOTP fields and the magic cookie
    i = 0
    while i + 1 < len(options) and options[i] != 255:
        if options[i] == 0:
            i += 1
            continue
        if options[i] == 53 and i + 2 < len(options):
            return options[i + 2]
        i += 2 + options[i + 1]
    return 0


class LinkWatch:
    """``ip monitor link address`` inside the container: when a link left br0 or went
    down, and when it was back (on br0 and up); every address added. Times are the
    monitor's own stamps."""

    def __init__(self, c: SystemdContainer) -> None:
        fd, self.path = tempfile.mkstemp(prefix="bridged-linkwatch-")
        self.proc = subprocess.Popen(["nsenter", "-t", str(c.pid), "-a", "-r", "-w", "ip",
                                      "-ts", "-o", "monitor", "link", "address"], stdout=fd,
                                     stderr=subprocess.DEVNULL)
        os.close(fd)
        time.sleep(0.3)  # let it subscribe

    def _lines(self) -> list[str]:
        return Path(self.path).read_text(errors="replace").splitlines()

    def mark(self) -> int:
        """A position: only events after it count in ``longest_off(since=...)``."""
        return len(self._lines())

    def events(self, ifname: str, since: int = 0) -> list[tuple[float, bool]]:
        """(time, on br0 and up) for each event about ``ifname``."""
        out = []
        for line in self._lines()[since:]:
            m = re.match(r"\[([\d\-T:.]+)\]\s*(Deleted )?\d+: (\S+?)(@\S+)?: <([^>]*)>(.*)",
                         line)
            if not m or m.group(3) != ifname:
                continue
            when = datetime.fromisoformat(m.group(1)).timestamp()
            # "Deleted ... master br0" is the bridge dropping the port.
            on = "master br0" in m.group(6) and not m.group(2) and \
                "UP" in m.group(5).split(",")
            out.append((when, on))
        return out

    def added_addresses(self, ifname: str, since: int = 0) -> set[str]:
        """Global addresses that appeared on ``ifname`` after mark ``since``."""
        out = set()
        for line in self._lines()[since:]:
            m = re.match(r"\[[^\]]*\]\s*\d+: (\S+)\s+inet6? (\S+) .*scope global", line)
            if m and m.group(1) == ifname:
                out.add(m.group(2))
        return out

    def longest_off(self, ifname: str, since: int = 0) -> float:
        """The longest time ``ifname`` was off br0 (or down) once it had been on it."""
        longest, left, was_on = 0.0, None, False
        for when, on in self.events(ifname, since):
            was_on = was_on or on
            if not on and left is None and was_on:
                left = when
            elif on and left is not None:
                longest, left = max(longest, when - left), None
        if left is not None:
            longest = float("inf")  # still off
        return longest

    def detaches(self, ifname: str, since: int = 0) -> int:
        states = [on for _when, on in self.events(ifname, since)]
        return sum(1 for a, b in itertools.pairwise(states) if a and not b)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        os.unlink(self.path)


class Host:
    """A booted container with the managers and bridged installed, its LAN, and the
    instruments around it."""

    def __init__(self, deb: Path, *, debian13: bool = False, dhcp: bool = True) -> None:
        ensure_users()
        # The LAN: a bridge in a namespace of its own, the container's eth0 plugged in.
        self.lan = NetNS("bridged-lan")
        self._closers: list[Callable[[], None]] = [self.lan.close]
        self.lan.ip("link", "add", "lanbr", "type", "bridge")
        self.lan.ip("link", "set", "lanbr", "up")
        self.lan.ip("addr", "add", f"{LAN_V4}/24", "dev", "lanbr")
        self.c = SystemdContainer(lower=trixie_root() if debian13 else None,
                                  fresh_sysfs=True, writable_net_sysctl=True)
        self._closers.insert(0, self.c.close)
        assert self.c.boot_state in ("running", "degraded"), self.c.boot_state
        if not debian13:
            self.c.install(*MANAGERS)
        self.c.install_bridged(deb)
        self.c.ensure_users()
        self.c.write("/etc/bridged/bridged.toml", CONFIG)
        self.c.plug_uplink(self.lan)
        self.mac = self.link("eth0")["address"]
        self.sniffer = DhcpSniffer(self.lan)
        self._closers.insert(0, self.sniffer.close)
        self.watch = LinkWatch(self.c)
        self._closers.insert(0, self.watch.close)
        if dhcp:
            server = DhcpServer(self.lan)
            self._closers.insert(0, server.close)

    def close(self) -> None:
        for close in self._closers:
            with contextlib.suppress(Exception):
                close()

    # --- what the kernel says ----------------------------------------------------------

    def link(self, name: str) -> dict[str, str]:
        [link] = json.loads(self.c.run("ip", "-j", "link", "show", name).stdout)
        return link  # type: ignore[no-any-return]

    def master(self, name: str) -> str | None:
        return self.link(name).get("master")

    def addresses(self, name: str) -> set[str]:
        out = json.loads(self.c.run("ip", "-j", "addr", "show", "dev", name).stdout)
        return {f"{a['local']}/{a['prefixlen']}" for entry in out for a in entry["addr_info"]
                if a.get("scope") == "global"}

    # --- bridged -----------------------------------------------------------------------

    def start_bridged(self) -> float:
        """Start it and wait for its claim; the time (monotonic) it was done."""
        self.started = time.monotonic()
        self.c.run("systemctl", "start", "bridged")
        self.c.wait_active()
        return time.monotonic()

    def dhcp_during_start(self, claimed: float) -> list[int]:
        """DHCP message types the host sent while bridged started (before its claim)."""
        return [k for t, m, k in self.sniffer.seen if m == self.mac and
                self.started <= t < claimed]

    def journal(self, unit: str = "bridged") -> list[dict[str, str]]:
        out = self.c.run("journalctl", "-u", unit, "-o", "json", "--no-pager").stdout
        return [json.loads(line) for line in out.splitlines()]

    def events(self, event: str) -> list[dict[str, str]]:
        return [e for e in self.journal() if e.get("BRIDGED_EVENT") == event]

    def taps(self, count: int) -> list[str]:
        return [self.c.run("bridgectl", "create", "--linger", user=MEMBER).stdout.strip()
                for _ in range(count)]

    # --- the other managers' view ------------------------------------------------------

    def nm_states(self) -> dict[str, str]:
        out = self.c.run("nmcli", "-t", "-f", "DEVICE,STATE", "device").stdout
        return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)

    def nm_active_on(self, name: str) -> list[str]:
        out = self.c.run("nmcli", "-t", "-f", "NAME,DEVICE", "connection", "show",
                         "--active").stdout
        return [line.rsplit(":", 1)[0] for line in out.splitlines()
                if line.rsplit(":", 1)[-1] == name]

    def networkd_state(self, name: str) -> str:
        """AdministrativeState of ``name`` over networkd's D-Bus API."""
        reply = json.loads(self.c.run("busctl", "--json=short", "call", "org.freedesktop.network1",
                                      "/org/freedesktop/network1",
                                      "org.freedesktop.network1.Manager", "GetLinkByName",
                                      "s", name).stdout)
        path = reply["data"][1]
        prop = json.loads(self.c.run("busctl", "--json=short", "get-property",
                                     "org.freedesktop.network1", path,
                                     "org.freedesktop.network1.Link",
                                     "AdministrativeState").stdout)
        return prop["data"]  # type: ignore[no-any-return]


@pytest.fixture
def host_factory(deb: Path) -> Iterator[Callable[..., Host]]:
    made: list[Host] = []

    def make(**kwargs: bool) -> Host:
        made.append(Host(deb, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


def check_steady(h: Host, links: list[str], since: int, claimed: float,
                 figures: Callable[[str], None], scenario: str) -> None:
    """What must hold in every scenario: the link watch from mark ``since``, DHCP from
    ``claimed`` (monotonic) on."""
    assert h.master("eth0") == "br0"
    off = h.watch.longest_off("eth0", since)
    figures(f"coexist {scenario}: DHCP messages while bridged started: "
            f"{h.dhcp_during_start(claimed)}; eth0 longest off br0 (or down) {off * 1000:.0f} ms, "
            f"{h.watch.detaches('eth0', since)} times; DHCP messages from the host after "
            f"the claim: {[k for t, m, k in h.sniffer.seen if m == h.mac and t >= claimed]} "
            f"(7: release)")
    assert off <= REENSLAVE_LIMIT, f"eth0 was off br0 for {off:.3f} s"
    # Not even for a moment: every address br0 ever had since the mark.
    assert h.watch.added_addresses("br0", since) <= {f"{HOST_V4}/24"}
    assert h.addresses("br0") == {f"{HOST_V4}/24"}
    assert h.sniffer.asked(h.mac, claimed) == []
    for tap in links:
        if tap.startswith("tap"):
            assert h.master(tap) == "br0", tap


def calibrate(h: Host) -> None:
    """The watch sees an uplink leave the bridge: take it off once, bridged puts it back."""
    since = h.watch.mark()
    h.c.run("ip", "link", "set", "eth0", "nomaster")
    wait_for(lambda: h.master("eth0") == "br0", timeout=5, what="eth0 re-enslaved")
    time.sleep(0.2)
    off = h.watch.longest_off("eth0", since)
    assert 0 < off <= REENSLAVE_LIMIT and h.watch.detaches("eth0", since) == 1, off


# --- NetworkManager ------------------------------------------------------------------------


def test_networkmanager_first_its_dhcp_timing_out(host_factory: Callable[..., Host],
                                                  figures: Callable[[str], None]):
    """No DHCP server: NM's "Wired connection 1" is still trying when bridged starts.
    Before, NM released eth0 from br0 when its DHCP timeout (45 s) struck; here the
    timeout is NM_DHCP_TIMEOUT, so that the test waits past it in less time."""
    h = host_factory(dhcp=False)
    h.c.write("/etc/NetworkManager/conf.d/50-test-dhcp-timeout.conf",
              f"[connection]\nipv4.dhcp-timeout={NM_DHCP_TIMEOUT}\n")
    since = h.watch.mark()
    h.c.run("systemctl", "start", "NetworkManager")
    wait_for(lambda: h.nm_active_on("eth0"), timeout=20, what="NM activating eth0")
    nm_started = time.monotonic()
    wait_for(lambda: h.sniffer.seen, timeout=10, what="NM's first DHCP request")
    claimed = h.start_bridged()
    figures(f"coexist NetworkManager first: DHCP requests before bridged: "
            f"{len(h.sniffer.asked(h.mac, 0))}, NM's dhcp-timeout {NM_DHCP_TIMEOUT} s")
    # Told in two steps: the bridge and the taps before br0 existed (NetworkManager met
    # br0 unmanaged: the drop-in), the uplink once its addresses were on the bridge.
    [claim] = [e for e in h.events("manager-claimed")
               if e["BRIDGED_MANAGER"] == "NetworkManager" and "eth0" in e["MESSAGE"]]
    assert "(set unmanaged: eth0)" in claim["MESSAGE"], claim["MESSAGE"]
    [conflict] = [e for e in h.events("manager-conflict")
                  if e["BRIDGED_MANAGER"] == "NetworkManager"]
    assert "'Wired connection 1' is active on uplink eth0" in conflict["MESSAGE"]
    taps = h.taps(3)
    # Past NM's DHCP timeout, counted from its activation.
    time.sleep(max(0.0, nm_started + NM_DHCP_TIMEOUT + 5 - time.monotonic()))
    check_steady(h, taps, since, claimed, figures, "NetworkManager first, DHCP timing out")
    states = h.nm_states()
    assert all(states[n] == "unmanaged" for n in ("br0", "eth0", *taps)), states
    assert h.nm_active_on("eth0") == [] and h.nm_active_on("br0") == []

    # An NM restart: the drop-in holds, a new tap is unmanaged from its start.
    restarted = time.monotonic()
    h.c.run("systemctl", "restart", "NetworkManager")
    wait_for(lambda: "eth0" in h.nm_states(), timeout=20, what="NM back")
    taps += h.taps(1)
    time.sleep(3)
    states = h.nm_states()
    assert all(states[n] == "unmanaged" for n in ("br0", "eth0", *taps)), states
    check_steady(h, taps, since, restarted, figures, "NetworkManager restarted")
    calibrate(h)


def test_networkmanager_first_with_a_lease(host_factory: Callable[..., Host],
                                           figures: Callable[[str], None]):
    """NM's auto-connection leased an address on eth0 before bridged came."""
    h = host_factory()
    since = h.watch.mark()
    h.c.run("systemctl", "start", "NetworkManager")
    wait_for(lambda: h.addresses("eth0"), timeout=30, what="NM's lease on eth0")
    leased = h.addresses("eth0")
    claimed = h.start_bridged()
    time.sleep(8)
    check_steady(h, [], since, claimed, figures, f"NetworkManager first, lease {leased}")
    assert h.addresses("eth0") == set()  # the lease went, not to br0 (static mode)
    states = h.nm_states()
    assert states["br0"] == states["eth0"] == "unmanaged", states
    assert h.nm_active_on("eth0") == []


def test_bridged_first_then_networkmanager(host_factory: Callable[..., Host],
                                           figures: Callable[[str], None]):
    h = host_factory()
    since = h.watch.mark()
    claimed = h.start_bridged()
    taps = h.taps(2)
    assert not [e for e in h.events("manager-claimed")
                if e["BRIDGED_MANAGER"] == "NetworkManager"]  # not running: nothing to say
    h.c.run("systemctl", "start", "NetworkManager")
    wait_for(lambda: "eth0" in h.nm_states(), timeout=20, what="NM up")
    taps += h.taps(1)
    time.sleep(8)
    check_steady(h, taps, since, claimed, figures, "bridged first, then NetworkManager")
    states = h.nm_states()
    assert all(states[n] == "unmanaged" for n in ("br0", "eth0", *taps)), states
    assert h.nm_active_on("eth0") == [] and h.nm_active_on("br0") == []

    # bridged tears its bridge down: the claim goes with it, NetworkManager takes eth0.
    h.c.write("/etc/bridged/bridged.toml",
              CONFIG.replace('mac = "uplink"\n', 'mac = "uplink"\nteardown_on_stop = true\n'))
    h.c.run("systemctl", "reload", "bridged")
    wait_for(lambda: h.events("reloaded"), what="reload")
    h.c.run("systemctl", "stop", "bridged")
    assert [e["BRIDGED_MANAGER"] for e in h.events("manager-withdrawn")] == ["NetworkManager"]
    assert h.c.run("cat", "/run/NetworkManager/conf.d/90-bridged.conf").stdout.startswith(
        "# bridged claims no links")
    assert "Name=.bridged-none" in h.c.run("cat", "/run/systemd/network/00-bridged.network").stdout
    wait_for(lambda: h.nm_states().get("eth0") not in (None, "unmanaged"), timeout=15,
             what="NetworkManager managing eth0 again")


# --- systemd-networkd ----------------------------------------------------------------------


@pytest.mark.parametrize("release", ["debian12", "debian13"])
def test_networkd_catch_all_and_restart(host_factory: Callable[..., Host], release: str,
                                        figures: Callable[[str], None]):
    """networkd first with a Name=* DHCP=yes .network; then bridged; then a networkd
    restart with taps on the bridge (before, it took every tap off br0 for good)."""
    h = host_factory(debian13=release == "debian13")
    h.c.write("/etc/systemd/network/80-dhcp.network", CATCH_ALL)
    since = h.watch.mark()
    h.c.run("systemctl", "start", "systemd-networkd")
    wait_for(lambda: h.addresses("eth0"), timeout=30, what="networkd's lease on eth0")
    claimed = h.start_bridged()
    [conflict] = [e for e in h.events("manager-conflict")
                  if e["BRIDGED_MANAGER"] == "systemd-networkd"]
    assert "/etc/systemd/network/80-dhcp.network matches br0 eth0" in conflict["MESSAGE"]
    assert [e for e in h.events("manager-claimed") if e["BRIDGED_MANAGER"] == "systemd-networkd"]
    taps = h.taps(3)
    time.sleep(3)
    check_steady(h, taps, since, claimed, figures, f"networkd first ({release})")
    assert {n: h.networkd_state(n) for n in ("br0", "eth0", *taps)} == \
        dict.fromkeys(("br0", "eth0", *taps), "unmanaged")
    assert h.addresses("eth0") == set()

    restarted = time.monotonic()
    h.c.run("systemctl", "restart", "systemd-networkd")
    time.sleep(5)
    check_steady(h, taps, since, restarted, figures, f"networkd restarted ({release})")
    assert {n: h.networkd_state(n) for n in ("br0", "eth0", *taps)} == \
        dict.fromkeys(("br0", "eth0", *taps), "unmanaged")
    calibrate(h)


# --- ifupdown ------------------------------------------------------------------------------

SEED_BRIDGE = f"""auto lo br0
iface lo inet loopback

iface eth0 inet manual

iface br0 inet static
        address {HOST_V4}
        netmask 255.255.255.0
        gateway {LAN_V4}
        bridge-ports all tap0
        bridge_stp off
        bridge_maxwait 0
        bridge_fd      0
        pre-up ip tuntap add dev tap0 mode tap user root
        pre-up ip link set tap0 up
        post-down ip link set tap0 down
        post-down ip tuntap del dev tap0 mode tap
"""
SEED_BEFORE = f"""auto lo eth0
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet static
        address {HOST_V4}
        netmask 255.255.255.0
        gateway {LAN_V4}
"""


def test_seed_bridge_up_before_bridged_is_refused_and_named(host_factory: Callable[..., Host]):
    """The seed's /etc/network/interfaces made br0 (with a root-owned tap0) first:
    bridged does not take over another tool's bridge, and says whose it is and why."""
    h = host_factory(dhcp=False)
    h.c.write("/etc/network/interfaces", SEED_BRIDGE)
    h.c.run("ifup", "br0")
    assert h.master("eth0") == "br0" and h.master("tap0") == "br0"
    started = h.c.run("systemctl", "start", "bridged", check=False)
    assert started.returncode != 0
    messages = [e["MESSAGE"] for e in h.journal()]
    assert any("bridge br0 exists and bridged did not make it (ifupdown brought it up" in m
               and "bridge.adopt = true" in m for m in messages), messages
    whats = [e["MESSAGE"] for e in h.events("manager-conflict")
             if e["BRIDGED_MANAGER"] == "ifupdown"]
    assert any("'iface br0 inet static' (/etc/network/interfaces:6) configures bridged's "
               "bridge br0 with ports all tap0" in w for w in whats), whats
    assert any("'iface eth0 inet manual'" in w for w in whats), whats
    # Nothing of ifupdown's bridge was touched.
    assert h.master("eth0") == "br0" and h.master("tap0") == "br0"


def test_restart_networking_beside_bridged(host_factory: Callable[..., Host],
                                           figures: Callable[[str], None]):
    """The host's old eth0 stanza left in place; `systemctl restart networking`."""
    h = host_factory(dhcp=False)
    h.c.write("/etc/network/interfaces", SEED_BEFORE)
    h.c.run("systemctl", "start", "networking")
    assert h.addresses("eth0") == {f"{HOST_V4}/24"}
    since = h.watch.mark()
    claimed = h.start_bridged()
    [conflict] = [e for e in h.events("manager-conflict")
                  if e["BRIDGED_MANAGER"] == "ifupdown"]
    assert "'iface eth0 inet static' (/etc/network/interfaces:5) puts addresses on it" \
        in conflict["MESSAGE"]
    taps = h.taps(2)
    restart = h.c.run("systemctl", "restart", "networking", check=False)
    time.sleep(2)
    off = h.watch.longest_off("eth0", since)
    figures(f"coexist systemctl restart networking: exit {restart.returncode}, eth0 longest "
            f"off br0 {off * 1000:.0f} ms, eth0 addresses after: "
            f"{sorted(h.addresses('eth0')) or 'none'}")
    check_steady(h, taps, since, claimed, figures, "restart networking")
    assert h.link("eth0")["operstate"] == "UP"
