"""Tap guards: a VM sends only as itself.

A member of group bridged writes frames into the fd of a tap it got with OpenTap, as a
guest would; a raw socket on the LAN namespace's side of the uplink shows what got
through the bridge. The guards are the kernel's (nftables, family bridge): the test
inspects them with nft inside the daemon's namespace (the daemon itself never runs nft).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.buslab import MEMBER, PrivateBus, kill_client
from tests.lab import Daemon, Lab, wait_for
from tests.test_bridge import SEED

pytestmark = [pytest.mark.root]
TAP = "org.bridged.Bridged1.Tap"
ROOT = "/org/bridged/Bridged1"

GUEST = "52:54:00:12:34:56"
OTHER_MAC = "52:54:00:66:66:66"
GATEWAY_MAC = "02:00:00:00:00:01"  # what a guest would pretend to be
BROADCAST = "ff:ff:ff:ff:ff:ff"
ETH_P_ALL = 0x0003


# --- frames a guest could write -------------------------------------------------------


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def marker(n: int) -> bytes:
    return b"BGTEST" + struct.pack(">H", n)


def ether(src: str, dst: str, ethertype: int, payload: bytes) -> bytes:
    return mac(dst) + mac(src) + struct.pack(">H", ethertype) + payload


def plain(src: str, n: int) -> bytes:
    """A broadcast frame of a local experimental ethertype carrying marker n."""
    return ether(src, BROADCAST, 0x88B5, marker(n) + bytes(40))


def checksum(data: bytes) -> int:
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp(src: str, sport: int, dport: int, n: int) -> bytes:
    payload = marker(n) + bytes(240)
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         socket.inet_aton("198.51.100.3"), socket.inet_aton("255.255.255.255"))
    # A valid header: br_netfilter, where loaded, drops bad ones before the guards could.
    header = header[:10] + struct.pack(">H", checksum(header)) + header[12:]
    return ether(src, BROADCAST, 0x0800, header + udp)


def ipv6(src: str, dst_mac: str, next_header: int, body: bytes) -> bytes:
    ip = struct.pack(">IHBB16s16s", 0x60000000, len(body), next_header, 255,
                     socket.inet_pton(socket.AF_INET6, "fe80::5054:ff:fe12:3456"),
                     socket.inet_pton(socket.AF_INET6, "ff02::1"))
    return ether(src, dst_mac, 0x86DD, ip + body)


def router_advert(n: int) -> bytes:
    # ICMPv6 type 134: "I am your router" (hop limit 64, lifetime 1800 s)
    icmp = struct.pack(">BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0) + marker(n)
    return ipv6(GUEST, "33:33:00:00:00:01", 58, icmp)


def dhcpv6_reply(n: int) -> bytes:
    payload = bytes([7, 0, 0, 1]) + marker(n)  # REPLY
    udp = struct.pack(">HHHH", 547, 546, 8 + len(payload), 0) + payload
    return ipv6(GUEST, "33:33:00:01:00:02", 17, udp)


def vlan_tagged(n: int) -> bytes:
    # A tagged router advertisement: what would go round guards that look at IPv6 only.
    inner = router_advert(n)
    return inner[:12] + struct.pack(">HH", 0x8100, 42) + inner[12:]


def arp(ether_src: str, sender_mac: str, n: int) -> bytes:
    body = struct.pack(">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac(sender_mac),
                       socket.inet_aton("198.51.100.1"), mac(BROADCAST),
                       socket.inet_aton("198.51.100.1"))
    return ether(ether_src, BROADCAST, 0x0806, body + marker(n))


# --- the LAN's view ----------------------------------------------------------------------


class Capture:
    """Every frame that reaches the LAN namespace through the uplink."""

    def __init__(self, lab: Lab) -> None:
        with lab.lan.entered():
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sock.bind((f"lan{lab.lan_index}", 0))
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                self.frames.append(self.sock.recv(4096))
            except TimeoutError:
                continue
            except OSError:
                return

    def seen(self, n: int) -> bool:
        return any(marker(n) in frame for frame in list(self.frames))

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def capture(lab: Lab) -> Iterator[Capture]:
    cap = Capture(lab)
    try:
        yield cap
    finally:
        cap.close()


# --- a guest's side: a tap client that writes what it is told ------------------------------


class Guest:
    def __init__(self, bus: PrivateBus, user: str, options: dict[str, Any]) -> None:
        cmd = ["runuser", "-u", user, "--", sys.executable,
               os.path.join(bus.clients, "tapclient.py"), bus.address, "open",
               json.dumps({"vnet_hdr": False, **options}), "--stdin"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        assert self.proc.stdout is not None
        self.reply = json.loads(self.proc.stdout.readline())

    @property
    def ifname(self) -> str:
        return str(self.reply["ifname"])

    def send(self, *frames: bytes) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        for frame in frames:
            self.proc.stdin.write(frame.hex() + "\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        kill_client(self.proc)  # type: ignore[arg-type]


@pytest.fixture
def guests(bus: PrivateBus) -> Iterator[Callable[..., Guest]]:
    made: list[Guest] = []

    def make(options: dict[str, Any] | None = None, user: str = MEMBER) -> Guest:
        guest = Guest(bus, user, options or {})
        made.append(guest)
        return guest

    yield make
    for guest in made:
        guest.close()


def table(lab: Lab) -> dict[str, Any]:
    """The guards' table as nft sees it: set name -> elements (keyed by tap name)."""
    result = lab.host.exec("nft", "-j", "list", "table", "bridge", "bridged", check=False)
    if result.returncode != 0:
        return {}
    out: dict[str, Any] = {"chains": []}
    for item in json.loads(result.stdout)["nftables"]:
        body = item.get("set") or item.get("map")
        if body is not None:
            out[body["name"]] = body.get("elem", [])
        if "chain" in item:
            out["chains"].append(item["chain"]["name"])
    return out


def mentions(elements: list[Any], ifname: str) -> bool:
    return ifname in json.dumps(elements)


def assert_only(capture: Capture, passed: list[int], dropped: list[int]) -> None:
    wait_for(lambda: all(capture.seen(n) for n in passed), timeout=5,
             what=f"frames {passed} on the LAN (seen: "
                  f"{[n for n in passed + dropped if capture.seen(n)]})")
    time.sleep(0.3)  # anything dropped would have arrived with the rest
    leaked = [n for n in dropped if capture.seen(n)]
    assert not leaked, f"frames {leaked} went through the guards"


def tap_property(bus: PrivateBus, ifname: str, name: str) -> Any:
    return bus.get_property(f"{ROOT}/tap/{ifname}", TAP, name)


# --- tests -------------------------------------------------------------------------------------


def test_guarded_tap_sends_only_as_its_guest(lab: Lab, bus: PrivateBus, daemon: Daemon,
                                             capture: Capture, guests: Callable[..., Guest]):
    guest = guests()
    assert tap_property(bus, guest.ifname, "Guarded") is True
    assert tap_property(bus, guest.ifname, "MAC") == ""  # not known before it sends
    guest.send(plain(GUEST, 1))  # the first MAC it uses is the one it keeps
    wait_for(lambda: tap_property(bus, guest.ifname, "MAC") == GUEST, what="MAC learned")
    guest.send(plain(OTHER_MAC, 2), plain(GATEWAY_MAC, 3), router_advert(4),
               ipv4_udp(GUEST, 67, 68, 5), dhcpv6_reply(6), vlan_tagged(7),
               arp(GUEST, GATEWAY_MAC, 8), arp(GATEWAY_MAC, GATEWAY_MAC, 9),
               ipv4_udp(GUEST, 68, 67, 10), arp(GUEST, GUEST, 11), plain(GUEST, 12))
    assert_only(capture, passed=[1, 10, 11, 12], dropped=[2, 3, 4, 5, 6, 7, 8, 9])
    assert GUEST in lab.host.link(guest.ifname)["ifalias"].replace(":", "") or \
        GUEST.replace(":", "") in lab.host.link(guest.ifname)["ifalias"]
    # The journal has the drops in summary, not one line each.
    wait_for(lambda: "guards dropped frames from a source MAC" in daemon.log(),
             what="drop logged")
    assert daemon.log().count("guards dropped frames from a source MAC") == 1
    guest.send(*(plain(OTHER_MAC, 100 + i) for i in range(20)))
    time.sleep(0.3)
    assert daemon.log().count("guards dropped frames from a source MAC") == 1
    # Freed with its fd (the kernel deletes the tap): its guards go, and the tap's one
    # removal line sums up what they dropped.
    guest.close()
    removed = f"tap {guest.ifname} removed: its last file descriptor was closed; "
    wait_for(lambda: removed in daemon.log(), what="summary")
    summary = next(line for line in daemon.log().splitlines() if removed in line)
    assert "its guards dropped 28 frames (source-mac 23, vlan 1, arp-sender 1, router 1, " \
        "dhcp-server 1, dhcp6-server 1)" in summary, summary
    assert "BRIDGED_GUARD_DROPPED=28" in summary, summary
    after = table(lab)
    for name in ("guarded", "learned", "macs", "dropped"):
        assert not mentions(after[name], guest.ifname), (name, after[name])


def test_given_mac_is_the_only_one_and_invalid_ones_are_refused(
        lab: Lab, bus: PrivateBus, daemon: Daemon, capture: Capture,
        guests: Callable[..., Guest]):
    guest = guests({"mac": GUEST.upper()})
    assert tap_property(bus, guest.ifname, "MAC") == GUEST
    guest.send(plain(OTHER_MAC, 1), plain(GUEST, 2))  # no learning: the first is not kept
    assert_only(capture, passed=[2], dropped=[1])
    for bad, words in (("01:00:5e:00:00:01", "not a unicast"), ("nonsense", "not a MAC"),
                       ("00:00:00:00:00:00", "not a unicast")):
        out = bus.client(MEMBER, "open", json.dumps({"mac": bad}))
        assert out["error"] == "org.bridged.Bridged1.Error.InvalidArgument", out
        assert words in out["message"]


def test_trusted_is_root_only_and_lets_everything_through(
        lab: Lab, bus: PrivateBus, daemon: Daemon, capture: Capture,
        guests: Callable[..., Guest]):
    out = bus.client(MEMBER, "open", json.dumps({"trusted": True}))
    assert out["error"] == "org.bridged.Bridged1.Error.AccessDenied"
    assert "only root" in out["message"]
    router = guests({"trusted": True}, user="root")
    assert tap_property(bus, router.ifname, "Guarded") is False
    router.send(plain(GUEST, 1), plain(OTHER_MAC, 2), router_advert(3),
                ipv4_udp(GUEST, 67, 68, 4), dhcpv6_reply(5), vlan_tagged(6))
    assert_only(capture, passed=[1, 2, 3, 4, 5, 6], dropped=[])
    assert not mentions(table(lab).get("guarded", []), router.ifname)


def test_guards_hold_through_sigkill_and_restart(lab: Lab, bus: PrivateBus, daemon: Daemon,
                                                daemon_factory: Callable[..., Daemon],
                                                capture: Capture,
                                                guests: Callable[..., Guest]):
    guest = guests()
    guest.send(plain(GUEST, 1))
    wait_for(lambda: tap_property(bus, guest.ifname, "MAC") == GUEST, what="MAC learned")
    os.kill(daemon.pid, signal.SIGKILL)
    assert daemon.proc is not None
    daemon.proc.wait(10)
    # Nobody is watching: the kernel still guards.
    guest.send(plain(OTHER_MAC, 2), router_advert(3), plain(GUEST, 4))
    assert_only(capture, passed=[1, 4], dropped=[2, 3])
    second = daemon_factory(SEED, extra_args=("--bus-address", bus.address)).start()
    assert tap_property(bus, guest.ifname, "Guarded") is True
    assert tap_property(bus, guest.ifname, "MAC") == GUEST
    guest.send(plain(OTHER_MAC, 5), ipv4_udp(GUEST, 67, 68, 6), plain(GUEST, 7))
    assert_only(capture, passed=[7], dropped=[5, 6])
    guest.close()
    wait_for(lambda: not mentions(table(lab).get("guarded", []), guest.ifname),
             what="guards gone with the tap")
    # What they dropped before the kill, while no daemon ran and after: all counted.
    wait_for(lambda: f"tap {guest.ifname} removed: its last file descriptor was closed; its "
             "guards dropped 4 frames (source-mac 2, router 1, dhcp-server 1)" in second.log(),
             what="the removal line with the whole life's drops")


def test_restart_removes_guards_of_taps_that_are_not_ours(
        lab: Lab, bus: PrivateBus, daemon: Daemon, daemon_factory: Callable[..., Daemon],
        guests: Callable[..., Guest]):
    guest = guests()
    daemon.stop()
    guest.close()  # the tap goes while the daemon is down; its guards stay behind
    wait_for(lambda: guest.ifname not in lab.host.links(), what="tap gone")
    assert mentions(table(lab)["guarded"], guest.ifname)
    daemon_factory(SEED, extra_args=("--bus-address", bus.address)).start()
    after = table(lab)
    assert after["guarded"] == [] and after["dropped"] == [], after


def test_a_flushed_ruleset_is_put_back(lab: Lab, bus: PrivateBus, daemon: Daemon,
                                       capture: Capture, guests: Callable[..., Guest]):
    guest = guests()
    guest.send(plain(GUEST, 1))
    wait_for(lambda: tap_property(bus, guest.ifname, "MAC") == GUEST, what="MAC learned")
    lab.host.exec("nft", "flush", "ruleset")  # what nftables.service does on restart
    wait_for(lambda: mentions(table(lab).get("macs", []), GUEST), what="table put back")
    wait_for(lambda: "another program changed the guards' nftables table" in daemon.log(),
             what="the change logged")
    guest.send(plain(OTHER_MAC, 2), router_advert(3), plain(GUEST, 4))
    assert_only(capture, passed=[1, 4], dropped=[2, 3])
    # Someone deleting one of its elements is undone too.
    lab.host.exec("nft", "delete", "element", "bridge", "bridged", "guarded",
                  f"{{ {guest.ifname} }}")
    wait_for(lambda: mentions(table(lab).get("guarded", []), guest.ifname),
             what="element put back")


def test_guard_off_in_config(lab: Lab, bus: PrivateBus, daemon_factory: Callable[..., Daemon],
                             capture: Capture, guests: Callable[..., Guest]):
    daemon_factory(SEED + "\n[taps]\nguard = false\n",
                   extra_args=("--bus-address", bus.address)).start()
    guest = guests({"mac": GUEST})
    assert tap_property(bus, guest.ifname, "Guarded") is False
    assert tap_property(bus, guest.ifname, "MAC") == GUEST
    guest.send(plain(OTHER_MAC, 1), router_advert(2))
    assert_only(capture, passed=[1, 2], dropped=[])
    assert table(lab) == {}  # nothing of the guards in the kernel


def test_a_name_reused_at_once_keeps_its_guards(lab: Lab, bus: PrivateBus, daemon: Daemon):
    """Guards are keyed by tap name: a tap closed and its name asked for again at once
    must not lose its guards to the old tap's removal, still under way."""
    made = 0
    for _ in range(20):
        wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(
            bus.manager("OpenTap", "a{sv}", "1", "name", "s", "tapreuse", user=MEMBER)),
            what="the name free again")  # busctl exits at once: the fd closes
        created = bus.manager("CreateTap", "a{sv}", "2", "name", "s", "tapreuse",
                              "linger", "b", "true", user=MEMBER)
        if created.returncode != 0:
            # Refused while the old guards go: a name in use, said so.
            assert "tapreuse already exists" in created.stderr, created.stderr
            continue
        made += 1
        time.sleep(0.2)  # any removal of the old tap's guards is done by now
        assert mentions(table(lab).get("guarded", []), "tapreuse"), table(lab)
        released = bus.manager("ReleaseTap", "s", "tapreuse", user=MEMBER)
        assert released.returncode == 0, released.stderr
        wait_for(lambda: not mentions(table(lab).get("guarded", []), "tapreuse")
                 and lab.host.link("tapreuse") is None, what="tap and guards gone")
    assert made > 0
