"""The overlay against the real kernel: one L2 segment across "hosts" that share no LAN.

Every host is a namespace running bridged, with its own LAN namespace behind its
uplink eth0 and an underlay veth (192.0.2.1N, inside these namespaces only) on a bridge
of an underlay namespace. With static peers, and with FRR's BGP EVPN filling the FDB: a
real qemu guest on host A (started by bt-member with bridgectl run) pings the LAN peers
of hosts B and C and is pinged back; pings across the overlay are timed against pings
on one host.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.buslab import MEMBER, PrivateBus
from tests.lab import Daemon, NetNS, wait_for
from tests.overlaylab import (
    DEVICE,
    VNI,
    BackgroundPing,
    Fabric,
    Frr,
    Host,
    frr_conf,
    frr_installed,
    latency,
)
from tests.vmlab import GuestImage, build_guest, qemu_command, run_guest

pytestmark = pytest.mark.root

ZERO = "00:00:00:00:00:00"
NOBODY = "192.0.2.99"  # a peer nobody answers for: enough to see the flood list kept
Figures = Callable[[str], None]


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    fabric = Fabric(3)
    try:
        yield fabric
    finally:
        fabric.close()


@pytest.fixture
def one_host() -> Iterator[Host]:
    fabric = Fabric(1)
    try:
        yield fabric.hosts[0]
    finally:
        fabric.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.close()


def start(daemons: list[Daemon], host: Host, config: str, *args: str) -> Daemon:
    daemon = Daemon(host.lab, config, extra_args=args)
    daemons.append(daemon)
    return daemon.start()


def device(host: Host) -> dict[str, object]:
    link = host.ns.link(DEVICE)
    assert link is not None, f"no {DEVICE} on host {host.n}"
    return link


def kept(host: Host) -> bool:
    """The VXLAN port as bridged keeps it: bridged's, on br0, up, the bridge's MTU."""
    link, bridge = host.ns.link(DEVICE), host.ns.link("br0")
    return bool(link and bridge and link.get("ifalias") == "bridged:vxlan" and
                link.get("master") == "br0" and "UP" in link["flags"] and
                link["mtu"] == bridge["mtu"])


def state(daemon: Daemon) -> str:
    """The daemon's state as its last STATUS= shows it (degraded ones say why)."""
    statuses = [line for line in daemon.notify.lines() if line.startswith("STATUS=")]
    return statuses[-1] if statuses else ""


def wait_status(daemon: Daemon, needle: str, timeout: float = 10) -> None:
    wait_for(lambda: needle in state(daemon), timeout, what=f"STATUS with {needle!r}")


class Pingers:
    """Several LAN namespaces that each ping the guest when it is ready for it; before
    that, ``while_up`` looks at whatever needs the guest alive."""

    def __init__(self, *namespaces: NetNS, while_up: Callable[[], None] | None = None) -> None:
        self.namespaces = namespaces
        self.while_up = while_up

    def ping(self, address: str, count: int = 1, timeout: int = 2) -> bool:
        if self.while_up is not None:
            self.while_up()
        return all([ns.ping(address, count, timeout) for ns in self.namespaces])


def boot_guest(bus: PrivateBus, host: Host, image: GuestImage, label: str, peer: str,
               *pingers: NetNS, while_up: Callable[[], None] | None = None) -> None:
    """A real guest on ``host``'s bridge, started by bt-member: it pings ``peer`` and is
    pinged by every one of ``pingers``."""
    command = bus.user_command(MEMBER, sys.executable, "-m", "bridged.cli", "run",
                               "--label", label, "--", *qemu_command(image, peer=peer))
    run = run_guest(["ip", "netns", "exec", host.ns.name, *command],
                    Pingers(*pingers, while_up=while_up))
    assert run.ok and run.returncode == 0, \
        f"guest {label} failed (qemu exit {run.returncode}):\n{run.transcript()}"


def status(bus: PrivateBus) -> dict[str, object]:
    result = bus.bridgectl("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def record_latency(figures: Figures, host: Host, remote: Host, what: str) -> None:
    """Pings from ``host``'s LAN to its own bridge (one host) and to ``remote``'s LAN
    (across the overlay), interleaved, same run."""
    seen = latency(host.lan, host.bridge_ip, remote.lan_ip)
    local, far = seen["local"], seen["remote"]
    assert local["count"] >= 190 and far["count"] >= 190, seen
    figures(f"overlay latency ({what}): one host p50 {local['p50']:.3f} ms p99 "
            f"{local['p99']:.3f} ms; across the overlay p50 {far['p50']:.3f} ms p99 "
            f"{far['p99']:.3f} ms ({int(local['count'])}+{int(far['count'])} pings); "
            f"overlay adds {far['p50'] - local['p50']:.3f} ms at p50")


@pytest.fixture(scope="module")
def image() -> GuestImage:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 is not installed (scripts/install-deps)")
    return build_guest()


# --- one host: the device is bridged's and kept like an uplink -------------------------


def test_vxlan_port_is_made_marked_and_kept_like_an_uplink(one_host: Host,
                                                           daemons: list[Daemon]):
    host = one_host
    daemon = start(daemons, host, host.config([NOBODY]))
    link = device(host)
    info = link["linkinfo"]["info_data"]  # type: ignore[index]
    assert (info["id"], info["local"], info["port"], info["learning"]) == \
        (VNI, host.underlay_ip, 4789, False)
    assert kept(host) and link["mtu"] == 1500
    port = json.loads(host.ns.exec("bridge", "-j", "-d", "link", "show", "dev",
                                   DEVICE).stdout)[0]
    assert port["learning"] is True  # static peers: the bridge learns what is behind it
    assert host.flood_list() == {NOBODY}
    assert "overlay vx4242 (VNI 4242) to 1 peer" in state(daemon)
    assert "foreign" not in daemon.log()  # bridged's own port, never a foreign one

    # Deleted: made again, with its flood entry.
    index = link["ifindex"]
    host.ns.ip("link", "del", DEVICE)
    wait_for(lambda: kept(host) and device(host)["ifindex"] != index, what="vx4242 again")
    wait_for(lambda: host.flood_list() == {NOBODY}, what="flood entry again")
    assert "vxlan device vx4242 was deleted by another process; making it again" in \
        daemon.log()
    # Taken off the bridge, set down, given another MTU: put back each time.
    for change in (("nomaster",), ("down",), ("mtu", "1400")):
        host.ns.ip("link", "set", DEVICE, *change)
        wait_for(lambda: kept(host), what=f"vx4242 kept after {change}")
    # Its flood list is bridged's: a listed peer's entry comes back, others go.
    host.ns.exec("bridge", "fdb", "del", ZERO, "dev", DEVICE, "dst", NOBODY, "self")
    host.ns.exec("bridge", "fdb", "append", ZERO, "dev", DEVICE, "dst", "192.0.2.77", "self")
    wait_for(lambda: host.flood_list() == {NOBODY}, what="the flood list put right")
    assert "(its FDB entry was deleted by another process; putting it back)" in daemon.log()
    assert "vxlan peer 192.0.2.77 up on vx4242 (added by another tool; removing it)" in \
        daemon.log()

    # A restart adopts it as it is: same device, nothing made again.
    index = device(host)["ifindex"]
    created = daemon.log().count("vxlan device vx4242 created")
    daemon.signal(signal.SIGKILL)
    daemon.proc.wait(10)  # type: ignore[union-attr]
    mark = daemon.notify.mark()
    daemon.start(wait_ready=False)
    daemon.notify.wait("READY=1", since=mark)
    assert device(host)["ifindex"] == index and kept(host)
    assert daemon.log().count("vxlan device vx4242 created") == created
    assert host.flood_list() == {NOBODY}

    # Stopping leaves it (and its FDB) in place, as it leaves the bridge.
    assert daemon.stop() == 0
    assert kept(host) and host.flood_list() == {NOBODY}


def test_evpn_port_learning_stays_off_when_someone_takes_the_port_off_and_back(
        one_host: Host, daemons: list[Daemon]):
    """Under EVPN the bridge learns nothing on the VXLAN port. A port that leaves the
    bridge loses that setting, and joining again does not bring it back: taken off and
    put back by someone before the daemon looks, it is set again."""
    host = one_host
    daemon = start(daemons, host, host.config(evpn=True))

    def learning() -> bool:
        port = json.loads(host.ns.exec("bridge", "-j", "-d", "link", "show", "dev",
                                       DEVICE).stdout)[0]
        return bool(port["learning"])

    wait_for(lambda: kept(host) and not learning(), what="learning off")
    daemon.signal(signal.SIGSTOP)  # both changes wait in its socket
    try:
        host.ns.ip("link", "set", DEVICE, "nomaster")
        host.ns.ip("link", "set", DEVICE, "master", "br0")  # back, learning on
    finally:
        daemon.signal(signal.SIGCONT)
    wait_for(lambda: kept(host) and not learning(), what="learning off again")


def reload(daemon: Daemon, config: str) -> None:
    mark = daemon.notify.mark()
    daemon.write_config(config)
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait("READY=1", since=mark)


def info(host: Host) -> dict[str, object]:
    return device(host)["linkinfo"]["info_data"]  # type: ignore[index, no-any-return]


def test_reload_changes_the_device_in_place_or_anew_and_removes_it_with_its_section(
        one_host: Host, daemons: list[Daemon]):
    host = one_host
    config = host.config([NOBODY])
    daemon = start(daemons, host, config)
    index = device(host)["ifindex"]
    # A new local address is changed in place (once an interface holds it).
    host.ns.ip("addr", "add", "192.0.2.51/24", "dev", "und0")
    reload(daemon, config.replace(host.underlay_ip, "192.0.2.51"))
    wait_for(lambda: info(host)["local"] == "192.0.2.51", what="local changed")
    assert device(host)["ifindex"] == index and host.flood_list() == {NOBODY}
    # The port cannot change on a live device: it is made again, its flood list too.
    reload(daemon, config.replace("[vxlan]", "[vxlan]\nport = 4790"))
    wait_for(lambda: kept(host) and device(host)["ifindex"] != index, what="made again")
    assert (info(host)["port"], info(host)["local"]) == (4790, host.underlay_ip)
    wait_for(lambda: host.flood_list() == {NOBODY}, what="flood list on the new device")
    assert "recreating vxlan device vx4242: its port is 4789; vxlan.port is 4790" in \
        daemon.log()
    # From static peers to EVPN: a fresh device with an empty FDB, for zebra to fill.
    index = device(host)["ifindex"]
    reload(daemon, host.config(evpn=True).replace("[vxlan]", "[vxlan]\nport = 4790"))
    wait_for(lambda: kept(host) and device(host)["ifindex"] != index, what="made anew")
    assert host.flood_list() == set()
    assert "recreating vxlan device vx4242: vxlan.control changed to evpn" in daemon.log()
    # No [vxlan] any more: the device goes.
    reload(daemon, config.split("[vxlan]")[0])
    wait_for(lambda: host.ns.link(DEVICE) is None, what="vx4242 removed")
    assert "vxlan device vx4242 removed ([vxlan] is no longer configured)" in daemon.log()
    # Back again, and with teardown_on_stop the device goes with the daemon.
    reload(daemon, config.replace("[ip]", "teardown_on_stop = true\n[ip]"))
    wait_for(lambda: kept(host), what="vx4242 made again by reload")
    assert daemon.stop() == 0
    assert host.ns.link(DEVICE) is None and host.ns.link("br0") is None


def test_a_restart_with_another_vni_removes_the_device_bridged_left(one_host: Host,
                                                                   daemons: list[Daemon]):
    host = one_host
    daemon = start(daemons, host, host.config())
    assert kept(host) and daemon.stop() == 0
    assert host.ns.link(DEVICE) is not None  # left in place by the stop, as it should be
    daemon.write_config(host.config().replace(f"vni = {VNI}", "vni = 4243"))
    mark = daemon.notify.mark()
    daemon.start(wait_ready=False)
    daemon.notify.wait("READY=1", since=mark)
    assert host.ns.link(DEVICE) is None
    assert (host.ns.link("vx4243") or {}).get("master") == "br0"
    assert "vxlan device vx4242 removed (left from an earlier configuration)" in daemon.log()


def test_a_device_of_that_name_bridged_did_not_make_is_refused(one_host: Host,
                                                               daemons: list[Daemon]):
    host = one_host
    host.ns.ip("link", "add", DEVICE, "type", "vxlan", "id", "7", "dstport", "4789",
               "local", host.underlay_ip)
    daemon = start(daemons, host, host.config())
    # Degraded, not a failed start: the bridge and its taps work without the overlay.
    wait_status(daemon, "overlay vx4242 degraded: vx4242 exists and bridged did not make it")
    link = device(host)
    assert link.get("master") is None and not link.get("ifalias")  # left alone
    assert "ip link del vx4242" in daemon.log()
    # Once the other tool's device is gone, bridged makes its own.
    host.ns.ip("link", "del", DEVICE)
    wait_for(lambda: kept(host), what="bridged's own vx4242")
    wait_status(daemon, "overlay vx4242 (VNI 4242)")
    assert "overlay vx4242 works again" in daemon.log()


def test_bridge_mtu_must_fit_the_underlay(daemons: list[Daemon]):
    fabric = Fabric(1, mtu=1500)
    try:
        host = fabric.hosts[0]
        config = host.config()
        daemon = start(daemons, host, config)
        # Degraded, with the numbers and the two ways out; the port is still kept.
        wait_status(daemon, "overlay vx4242 degraded: the underlay und0 has MTU 1500")
        expected = ("error: overlay vx4242 degraded: the underlay und0 has MTU 1500: less the 50 "
                    "bytes of VXLAN over IPv4 that leaves 1450, below br0's MTU 1500, so "
                    "full-size frames would be fragmented or lost between the hosts: set "
                    "bridge.mtu = 1450, or raise und0's MTU to at least 1550")
        assert expected in daemon.log()
        assert kept(host)
        # The same at a reload that does not fix it...
        mark = daemon.notify.mark()
        daemon.signal(signal.SIGHUP)
        daemon.notify.wait("READY=1", since=mark)
        wait_for(lambda: daemon.log().count(expected) == 2, what="the problem said again")
        # ...and a reload that does: the bridge and its VXLAN port go to 1450.
        mark = daemon.notify.mark()
        daemon.write_config(config.replace("[ip]", "mtu = 1450\n[ip]"))
        daemon.signal(signal.SIGHUP)
        daemon.notify.wait("READY=1", since=mark)
        wait_for(lambda: kept(host) and device(host)["mtu"] == 1450, what="MTU 1450")
        wait_status(daemon, "overlay vx4242 (VNI 4242)")
        wait_for(lambda: "info: overlay vx4242 works again" in daemon.log(),
                 what="the journal told the overlay works again")
        # A smaller underlay later on is noticed by its own event.
        host.ns.ip("link", "set", "und0", "mtu", "1480")
        wait_status(daemon, "leaves 1430, below br0's MTU 1450")
    finally:
        fabric.close()


# --- three hosts, static peers --------------------------------------------------------


def underlay_counter(fabric: Fabric, src: Host, dst: Host) -> Callable[[], int]:
    """Packets the underlay carries from ``src`` to ``dst``'s VXLAN port (nftables
    counter on the underlay bridge: what the hosts do not see)."""
    ns = fabric.underlay
    ns.exec("nft", "add", "table", "bridge", "overlaytest")
    ns.exec("nft", "add", "chain", "bridge", "overlaytest", "seen",
            "{ type filter hook forward priority 0; }")
    ns.exec("nft", "add", "rule", "bridge", "overlaytest", "seen", "ip", "saddr",
            src.underlay_ip, "ip", "daddr", dst.underlay_ip, "udp", "dport", "4789", "counter")

    def packets() -> int:
        rules = json.loads(ns.exec("nft", "-j", "list", "chain", "bridge", "overlaytest",
                                   "seen").stdout)["nftables"]
        return sum(e["counter"]["packets"] for item in rules if "rule" in item
                   for e in item["rule"]["expr"] if "counter" in e)
    return packets


def test_static_peers_make_one_segment_across_three_hosts(
        fabric: Fabric, daemons: list[Daemon], bus: PrivateBus, image: GuestImage,
        figures: Figures):
    a, b, c = fabric.hosts
    began = time.monotonic()
    config_a = a.config([b, c])
    daemon_a = start(daemons, a, config_a, "--bus-address", bus.address)
    daemon_b = start(daemons, b, b.config([a, c]))
    start(daemons, c, c.config([a, b]))
    for host in fabric.hosts:
        assert kept(host), f"host {host.n}"
        assert host.flood_list() == {o.underlay_ip for o in fabric.hosts if o is not host}

    shown = status(bus)
    # bridged's own port: neither an uplink nor a foreign port.
    assert shown["uplinks"]["enslaved"] == ["eth0"]  # type: ignore[index]
    assert shown["foreign_ports"] == []
    assert bus.get_property("/org/bridged/Bridged1/bridge/br0", "org.bridged.Bridged1.Bridge",
                            "VNI") == VNI
    overlay = shown["overlay"]
    assert isinstance(overlay, dict)
    assert (overlay["device"], overlay["vni"], overlay["local"], overlay["control"],
            overlay["underlay"], overlay["problem"]) == \
        (DEVICE, VNI, a.underlay_ip, "static", "und0", "")
    assert overlay["peers_configured"] == [b.underlay_ip, c.underlay_ip]
    assert [(r["address"], r["configured"], r["flood"], r["fdb_entries"])
            for r in overlay["remotes"]] == [(b.underlay_ip, True, True, 1),
                                             (c.underlay_ip, True, True, 1)]
    assert a.lan.ping(b.lan_ip) and a.lan.ping(c.lan_ip) and b.lan.ping(c.lan_ip)
    record_latency(figures, a, b, "static peers")

    # A real guest on host A, on its bridge's tap: pings host B's LAN peer and is pinged
    # by B's and C's.
    boot_guest(bus, a, image, "overlay-1", b.lan_ip, b.lan, c.lan)

    # The underlay of host B goes down and up again: B's overlay says so, and carries on.
    b.ns.ip("link", "set", "und0", "down")
    wait_status(daemon_b, "overlay vx4242 degraded: the underlay und0 is down")
    b.ns.ip("link", "set", "und0", "up")
    wait_status(daemon_b, "overlay vx4242 (VNI 4242) to 2 peers", timeout=15)
    wait_for(lambda: a.lan.ping(b.lan_ip, timeout=1), what="A reaches B after the flap")

    # bridged on B killed and started again while A's LAN pings B's: nothing lost, the
    # device adopted as it was.
    index = device(b)["ifindex"]
    pinging = BackgroundPing(a.lan, b.lan_ip, count=60)
    daemon_b.signal(signal.SIGKILL)
    daemon_b.proc.wait(10)  # type: ignore[union-attr]
    mark = daemon_b.notify.mark()
    daemon_b.start(wait_ready=False)
    daemon_b.notify.wait("READY=1", since=mark)
    sent, answered = pinging.finish()
    assert answered == sent == 60, f"{sent - answered} of {sent} pings lost across a restart"
    assert device(b)["ifindex"] == index and kept(b)

    # The guest again, now to host C, after the flap and the restart.
    boot_guest(bus, a, image, "overlay-2", c.lan_ip, b.lan, c.lan)

    # C leaves A's peers by reload while A's LAN pings B's: no ping to B is lost, and A
    # sends nothing more to C.
    to_c = underlay_counter(fabric, a, c)
    assert a.lan.ping(c.lan_ip)
    assert to_c() > 0
    pinging = BackgroundPing(a.lan, b.lan_ip, count=40)
    time.sleep(0.5)  # the reload happens while the pings run
    mark = daemon_a.notify.mark()
    daemon_a.write_config(a.config([b]))
    daemon_a.signal(signal.SIGHUP)
    daemon_a.notify.wait("READY=1", since=mark)
    wait_for(lambda: a.flood_list() == {b.underlay_ip}, what="C off A's flood list")
    sent, answered = pinging.finish()
    assert answered == sent == 40, f"{sent - answered} of {sent} pings to B lost at reload"
    before = to_c()
    assert not a.lan.ping(c.lan_ip, count=3, timeout=1)
    assert to_c() == before, "A still sends to C"
    assert a.lan.ping(b.lan_ip)
    assert "vxlan peer 192.0.2.13 gone on vx4242 (no longer in vxlan.peers)" in daemon_a.log()
    # And back, again without losing a ping to B.
    pinging = BackgroundPing(a.lan, b.lan_ip, count=40)
    time.sleep(0.5)
    mark = daemon_a.notify.mark()
    daemon_a.write_config(config_a)
    daemon_a.signal(signal.SIGHUP)
    daemon_a.notify.wait("READY=1", since=mark)
    sent, answered = pinging.finish()
    assert answered == sent == 40, f"{sent - answered} of {sent} pings to B lost at reload"
    wait_for(lambda: a.lan.ping(c.lan_ip, timeout=1), what="A reaches C again")
    figures(f"overlay static-peers test: {time.monotonic() - began:.1f} s (2 guest boots)")


# --- three hosts, BGP EVPN by FRR ------------------------------------------------------


@pytest.mark.skipif(not frr_installed(), reason="frr is not installed (scripts/install-deps)")
def test_evpn_frr_fills_the_fdb_and_the_same_pings_work(
        fabric: Fabric, daemons: list[Daemon], bus: PrivateBus, image: GuestImage,
        figures: Figures):
    a, b, c = fabric.hosts
    began = time.monotonic()
    daemon_a = start(daemons, a, a.config(evpn=True), "--bus-address", bus.address)
    for host in (b, c):
        start(daemons, host, host.config(evpn=True))
    for host in fabric.hosts:
        assert kept(host) and host.flood_list() == set()  # bridged adds no peers
        port = json.loads(host.ns.exec("bridge", "-j", "-d", "link", "show", "dev",
                                       DEVICE).stdout)[0]
        assert port["learning"] is False  # FRR installs the remote MACs on the bridge too
    routers: list[Frr] = []
    try:
        frr_started = time.monotonic()
        for host in fabric.hosts:
            routers.append(Frr(host.ns, frr_conf(host, a, [b, c])).start())
        wait_for(lambda: a.lan.ping(b.lan_ip, timeout=1), timeout=60,
                 what="A's LAN reaching B's over EVPN")
        converged = time.monotonic() - frr_started
        assert a.lan.ping(c.lan_ip) and b.lan.ping(c.lan_ip)
        for host in fabric.hosts:
            assert host.flood_list() == {o.underlay_ip for o in fabric.hosts
                                         if o is not host}, routers[host.n - 1].log("zebra")

        # The remote LAN peers' MACs, in A's VXLAN FDB as EVPN installed them.
        mac_b = b.lan.link("lanbr")["address"]  # type: ignore[index]
        wait_for(lambda: any(e["mac"] == mac_b and e["dst"] == b.underlay_ip and
                             "extern_learn" in e["flags"] for e in a.fdb()),
                 what="B's LAN MAC in A's FDB, extern_learn")
        record_latency(figures, a, b, "BGP EVPN")

        def guest_macs() -> set[str]:
            return {str(e["mac"]) for e in b.fdb() if e["dst"] == a.underlay_ip and
                    "extern_learn" in e["flags"] and str(e["mac"]).startswith("52:54:00:")}

        seen: list[set[str]] = []

        def guest_in_b() -> None:
            # While the guest runs, its MAC reaches B's FDB the same way, pointing at A.
            seen.append(wait_for(guest_macs, what="the guest's MAC in B's FDB"))

        boot_guest(bus, a, image, "overlay-evpn", c.lan_ip, b.lan, c.lan, while_up=guest_in_b)
        assert len(seen) == 1 and len(seen[0]) == 1
        # Gone with its tap: EVPN withdraws it from the other hosts.
        wait_for(lambda: not guest_macs() & seen[0], what="the guest's MAC withdrawn")

        def overlay() -> dict[str, object]:
            found = status(bus)["overlay"]
            assert isinstance(found, dict)
            return found

        wait_for(lambda: all(r["remote_macs"] >= 1 for r in overlay()["remotes"]),
                 what="remote MACs per peer on D-Bus")
        shown = overlay()
        assert (shown["control"], shown["peers_configured"], shown["peers_learned"]) == \
            ("evpn", [], [b.underlay_ip, c.underlay_ip])
        for remote in shown["remotes"]:
            assert remote["flood"] and not remote["configured"]
            assert remote["fdb_entries"] == remote["remote_macs"] + 1
        text = bus.bridgectl("status").stdout
        assert f"Overlay: {DEVICE}, VNI {VNI}, local {a.underlay_ip} via und0, BGP EVPN" in text
        assert f"{b.underlay_ip} (learned, " in text and "remote MAC" in text
        log = daemon_a.log()
        for peer in (b, c):
            assert f"vxlan peer {peer.underlay_ip} up on vx4242 (learned from BGP EVPN)" in log
        figures(f"overlay EVPN test: {time.monotonic() - began:.1f} s (1 guest boot); "
                f"first ping across {converged:.1f} s after FRR started")
    finally:
        for router in routers:
            router.close()
