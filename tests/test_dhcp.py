"""ip.mode = "dhcp": the bridge leases the host's address from the LAN's DHCP server
through systemd-networkd, keeps it across restarts, hotplug and reloads, and no DHCP
client is left on the enslaved uplink. A real udhcpd, a real networkd."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.buslab import MEMBER, PrivateBus, ensure_users
from tests.dhcplab import NETWORKD, POOL, DHCPServer, Networkd, networkd_bus
from tests.lab import HOST_V4, LAN_V4, Daemon, Lab, wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not os.path.exists(NETWORKD), reason="systemd-networkd is not installed"),
]
ROOT = "/org/bridged/Bridged1"
BRIDGE_IFACE = "org.bridged.Bridged1.Bridge"
ETH0_DHCP = "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n\n[DHCPv4]\nClientIdentifier=mac\n"
DHCP_CONFIG = """
[bridge]
name = "br0"
uplinks = ["eth0"]
mac = "uplink"

[ip]
mode = "dhcp"
probe_timeout = 8
"""


class DhcpHost:
    """The lab with a DHCP server on the LAN and networkd on the host; eth0 leased."""

    def __init__(self, lab: Lab, bus: PrivateBus, tmp: Path, lease_s: int = 120,
                 networkd: bool = True, leased_eth0: bool = True) -> None:
        self.lab, self.bus = lab, bus
        self.network_dir = tmp / "network"
        self.network_dir.mkdir()
        self.server = DHCPServer(lab.lan, lease_s)
        if leased_eth0:
            (self.network_dir / "50-eth0.network").write_text(ETH0_DHCP)
        self.networkd = Networkd(lab.host, bus, self.network_dir) if networkd else None
        self.lease = ""
        if leased_eth0 and networkd:
            self.lease = wait_for(lambda: self.global_v4("eth0"), timeout=20,
                                  what="eth0's lease from the LAN's server")

    def global_v4(self, ifname: str) -> str:
        link = self.lab.host.link(ifname)
        if link is None:
            return ""
        out = json.loads(self.lab.host.ip("-j", "-4", "addr", "show", "dev", ifname).stdout)
        found = [a for entry in out for a in entry["addr_info"] if a.get("scope") == "global"]
        return f"{found[0]['local']}/{found[0]['prefixlen']}" if found else ""

    def args(self) -> tuple[str, ...]:
        return ("--bus-address", self.bus.address,
                "--networkd-network", str(self.network_dir / "00-bridged.network"),
                "--networkd-dhcp", str(self.network_dir / "01-bridged-dhcp.network"))

    def bridge_property(self, name: str) -> object:
        return self.bus.get_property(f"{ROOT}/bridge/br0", BRIDGE_IFACE, name)

    def close(self) -> None:
        if self.networkd is not None:
            self.networkd.close()
        self.server.close()


@pytest.fixture
def dhcp_host(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., DhcpHost]]:
    ensure_users()
    bus = networkd_bus()
    made: list[DhcpHost] = []

    def make(**kwargs: object) -> DhcpHost:
        host = DhcpHost(lab, bus, tmp_path, **kwargs)  # type: ignore[arg-type]
        made.append(host)
        return host

    try:
        yield make
    finally:
        for host in made:
            host.close()
        bus.close()


def default_routes(lab: Lab) -> list[tuple[str, str, str]]:
    return [(r["gateway"], r["dev"], r.get("protocol", "")) for r in lab.host.routes()
            if r["dst"] == "default"]


def test_the_bridge_leases_the_address_the_host_had(
        lab: Lab, dhcp_host: Callable[..., DhcpHost], daemon_factory: Callable[..., Daemon],
        figures: Callable[[str], None]):
    h = dhcp_host()
    address = h.lease
    started = time.monotonic()
    daemon = daemon_factory(DHCP_CONFIG, extra_args=h.args()).start()
    figures(f"dhcp: READY {time.monotonic() - started:.2f} s after start (lease moved, "
            "probed, handed to networkd)")
    # The same address, now the bridge's, leased by networkd on br0 (same MAC).
    assert h.global_v4("br0") == address
    assert h.global_v4("eth0") == ""
    assert lab.host.link("eth0")["master"] == "br0"
    assert lab.host.link("br0")["address"] == lab.host.link("eth0")["address"]
    assert h.networkd is not None
    wait_for(lambda: h.networkd.state("br0") == "configured", what="networkd configured br0")
    # No DHCP client is left on the enslaved uplink.
    assert h.networkd.state("eth0") == "unmanaged"
    wait_for(lambda: ("198.51.100.1", "br0", "dhcp") in default_routes(lab),
             what="networkd's default route through br0")
    assert f"gateway {LAN_V4} reachable through br0 after the start" in daemon.log()
    leases = h.bridge_property("Leases")
    assert isinstance(leases, dict) and 0 < leases.get(address, -1) <= 120, \
        (leases, h.bridge_property("Addresses"), lab.host.ip("addr", "show", "br0").stdout)
    status = h.bus.bridgectl("status", user=MEMBER).stdout
    assert f"{address} (lease, " in status
    ip = address.split("/")[0]
    assert lab.lan.ping(ip) and lab.host.ping(LAN_V4)


def test_the_lease_is_renewed_on_the_bridge(lab: Lab, dhcp_host: Callable[..., DhcpHost],
                                            daemon_factory: Callable[..., Daemon]):
    h = dhcp_host(lease_s=12)
    daemon_factory(DHCP_CONFIG, extra_args=h.args()).start()

    def left() -> int:
        leases = h.bridge_property("Leases")
        assert isinstance(leases, dict)
        return int(leases.get(h.lease, -1))

    samples = []
    for _ in range(30):  # a lease and a half, sampled
        samples.append(left())
        time.sleep(0.5)
    assert all(0 < s <= 12 for s in samples), samples
    # The renewal at half the lease resets the clock; without it the address would go.
    assert any(later > earlier for earlier, later in itertools.pairwise(samples)), samples
    assert h.global_v4("br0") == h.lease, "still leased after more than a lease time"


def test_the_address_survives_a_restart_hotplug_and_reload(
        lab: Lab, dhcp_host: Callable[..., DhcpHost], daemon_factory: Callable[..., Daemon]):
    h = dhcp_host()
    daemon = daemon_factory(DHCP_CONFIG, extra_args=h.args()).start()
    assert h.global_v4("br0") == h.lease
    # SIGKILL: networkd keeps leasing br0; the restart adopts everything and moves nothing.
    daemon.signal(signal.SIGKILL)
    assert daemon.proc is not None
    daemon.proc.wait(10)
    assert h.global_v4("br0") == h.lease
    again = daemon_factory(DHCP_CONFIG, extra_args=h.args()).start()
    assert h.global_v4("br0") == h.lease and "rolled back" not in again.log()
    # The uplink unplugged and plugged back in (the same NIC: the same MAC).
    mac = lab.host.link("eth0")["address"]
    lab.unplug_uplink()
    lab.plug_uplink(mac=mac)
    wait_for(lambda: lab.host.link("eth0").get("master") == "br0", what="eth0 re-enslaved")
    assert h.global_v4("br0") == h.lease and h.global_v4("eth0") == ""
    # A reload with the same file changes nothing.
    mark = again.notify.mark()
    again.signal(signal.SIGHUP)
    again.notify.wait("READY=1", since=mark)
    assert h.global_v4("br0") == h.lease
    assert lab.lan.ping(h.lease.split("/")[0])


def test_migrate_hands_a_leased_address_over_to_dhcp(
        lab: Lab, dhcp_host: Callable[..., DhcpHost], daemon_factory: Callable[..., Daemon]):
    h = dhcp_host()
    config = DHCP_CONFIG.replace('mode = "dhcp"', 'mode = "migrate"')
    daemon = daemon_factory(config, extra_args=h.args()).start()
    assert h.global_v4("br0") == h.lease
    assert h.networkd is not None
    # Moved with its lifetime, then renewed by networkd on br0: not frozen.
    wait_for(lambda: h.networkd.state("br0") == "configured", what="networkd leases br0")
    assert "systemd-networkd leases br0's address" in daemon.log()
    assert h.networkd.state("eth0") == "unmanaged"


def test_no_lease_on_the_bridge_rolls_back(lab: Lab, dhcp_host: Callable[..., DhcpHost],
                                           daemon_factory: Callable[..., Daemon]):
    h = dhcp_host(leased_eth0=False)
    h.server.close()  # nobody answers DHCP on the LAN: the bridge gets no lease
    config = DHCP_CONFIG.replace("probe_timeout = 8", "probe_timeout = 3")
    daemon = daemon_factory(config, extra_args=h.args()).start()
    assert "no DHCP lease with a gateway on br0 within 3 s after the start" in daemon.log()
    assert lab.host.link("eth0").get("master") is None
    assert h.bus.get_property(ROOT, "org.bridged.Bridged1.Manager", "State") == "rolled-back"
    # networkd no longer leases for br0, and eth0 is not claimed from it any more.
    assert "br0" not in (h.network_dir / "01-bridged-dhcp.network").read_text()
    assert "eth0" not in (h.network_dir / "00-bridged.network").read_text()


def test_without_a_dhcp_client_the_uplink_is_left_alone(
        lab: Lab, dhcp_host: Callable[..., DhcpHost], daemon_factory: Callable[..., Daemon]):
    h = dhcp_host(networkd=False, leased_eth0=False)
    lab.classic_host_config()
    daemon = daemon_factory(DHCP_CONFIG, extra_args=h.args()).start()
    assert lab.host.link("eth0").get("master") is None
    assert h.global_v4("eth0") == "198.51.100.2/24"
    assert h.bus.get_property(ROOT, "org.bridged.Bridged1.Manager", "State") == "degraded"
    text = h.bus.get_property(ROOT, "org.bridged.Bridged1.Manager", "StatusText")
    assert isinstance(text, str) and "systemd-networkd is not running" in text
    assert "rolled back" not in daemon.log()
    assert POOL  # (the server ran: it is the client that is missing)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu is not installed")
def test_a_guest_leases_its_own_address_and_reaches_the_host(
        lab: Lab, dhcp_host: Callable[..., DhcpHost], daemon_factory: Callable[..., Daemon]):
    from tests.vmlab import build_guest, qemu_command, run_guest

    h = dhcp_host()
    daemon_factory(DHCP_CONFIG, extra_args=h.args()).start()
    host_ip = h.lease.split("/")[0]
    image = build_guest()
    command = h.bus.user_command(MEMBER, sys.executable, "-m", "bridged.cli", "run",
                                 "--label", "dhcp-guest", "--",
                                 *qemu_command(image, ip="dhcp", peer=host_ip))
    run = run_guest(["ip", "netns", "exec", lab.host.name, *command], lab.lan)
    assert run.ok, run.transcript()
    # Its own lease from the same server, not the host's.
    assert run.address != host_ip and run.address.startswith("198.51.100.1")


def test_migrate_keeps_lifetimes_and_route_attributes(lab: Lab, dhcp_host: Callable[..., DhcpHost],
        daemon_factory: Callable[..., Daemon]):
    # What a DHCP client leaves on eth0: a leased address and routes with attributes.
    lab.host.ip("addr", "add", f"{HOST_V4}/24", "dev", "eth0", "valid_lft", "300",
                "preferred_lft", "200")
    lab.host.ip("route", "add", "default", "via", LAN_V4, "dev", "eth0", "metric", "100")
    lab.host.ip("route", "add", "203.0.113.0/24", "via", LAN_V4, "dev", "eth0", "mtu", "1400",
                "advmss", "1300", "src", HOST_V4, "onlink")
    h = dhcp_host(leased_eth0=False)  # networkd runs, but eth0's lease is not its own
    config = DHCP_CONFIG.replace('mode = "dhcp"', 'mode = "migrate"')
    daemon_factory(config, extra_args=h.args()).start()
    assert lab.host.link("eth0")["master"] == "br0"
    [address] = [a for a in json.loads(lab.host.ip("-j", "addr", "show", "dev", "br0").stdout)
                 [0]["addr_info"] if a["family"] == "inet" and a["local"] == HOST_V4]
    assert address["local"] == HOST_V4
    assert 280 <= address["valid_life_time"] <= 300, "a lease keeps running out, not frozen"
    assert 180 <= address["preferred_life_time"] <= 200
    routes = {r["dst"]: r for r in lab.host.routes() if r["dst"] != "default"}
    # networkd, which the moved lease is handed to, may have leased it again already and
    # added its own default route (metric 1024) beside the moved one.
    defaults = [r for r in lab.host.routes() if r["dst"] == "default"]
    assert any(r["dev"] == "br0" and r.get("metric") == 100 for r in defaults), defaults
    moved = routes["203.0.113.0/24"]
    assert moved["dev"] == "br0" and moved["prefsrc"] == HOST_V4 and "onlink" in moved["flags"]
    assert moved["metrics"] == [{"mtu": 1400, "advmss": 1300}]
    assert lab.host.addresses("eth0") == set()
    assert lab.lan.ping(HOST_V4) and lab.host.ping(LAN_V4)
