"""The D-Bus API on a private system bus with our policy, called by real users."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.buslab import MEMBER, OTHER, PrivateBus, kill_client
from tests.lab import HOST_V4, LAN_V4, REPO, Daemon, Lab, wait_for
from tests.test_bridge import SEED, lost_in_an_overrun

pytestmark = pytest.mark.root
MANAGER = "org.bridged.Bridged1.Manager"
ROOT = "/org/bridged/Bridged1"


@pytest.fixture
def daemon(lab: Lab, bus: PrivateBus, daemon_factory: Callable[..., Daemon]) -> Daemon:
    config = SEED + "\n[taps]\nmax_per_user = 4\nmax_total = 6\n"
    return daemon_factory(config, extra_args=("--bus-address", bus.address)).start()


def uid(user: str) -> int:
    import pwd
    return pwd.getpwnam(user).pw_uid


def tap_names(lab: Lab) -> set[str]:
    return {name for name in lab.host.links() if name.startswith("tap")}


def call_json(result) -> list:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stderr
    if not result.stdout.strip():
        return []  # a method that returns nothing
    return json.loads(result.stdout)["data"]  # type: ignore[no-any-return]


def test_member_gets_a_working_fd_that_reaches_the_lan(lab: Lab, bus: PrivateBus,
                                                       daemon: Daemon):
    out = bus.client(MEMBER, "open", json.dumps({"label": "vm1", "vnet_hdr": False}),
                     "--arp", "198.51.100.50", LAN_V4)
    assert out["ifname"] == "tap0" and out["fds"] == 1
    assert out["arp_reply"], "the LAN peer's ARP reply must come back through the bridge"
    # The client exited: its fd closed, so the tap is gone and so is its object.
    wait_for(lambda: "tap0" not in lab.host.links(), what="tap0 gone after fd closed")
    wait_for(lambda: "tap0 removed" in daemon.log(), what="tap removal logged")
    assert call_json(bus.manager("ListTaps")) == [[]]


def test_open_tap_object_properties_and_multiqueue(lab: Lab, bus: PrivateBus, daemon: Daemon):
    proc = bus.client(MEMBER, "open", json.dumps({"label": "vm2"}),
                      "--hold", "30", background=True)
    try:
        out = json.loads(proc.stdout.readline())
        link = lab.host.link(out["ifname"])
        assert link["master"] == "br0" and "UP" in link["flags"]
        assert link["address"].startswith("fe:")
        # A bridge port has no address of its own, not even IPv6 link-local.
        assert link["inet6_addr_gen_mode"] == "none"
        assert json.loads(lab.host.ip("-j", "addr", "show", "dev", out["ifname"]).stdout)[0][
            "addr_info"] == []
        assert link["ifalias"].startswith(f"bridged:uid={uid(MEMBER)}:")
        path = out["path"]
        assert path == f"{ROOT}/tap/tap0"
        iface = "org.bridged.Bridged1.Tap"
        assert bus.get_property(path, iface, "OwnerUID") == uid(MEMBER)
        assert bus.get_property(path, iface, "Label") == "vm2"
        assert bus.get_property(path, iface, "Queues") == 1
        assert bus.get_property(path, iface, "VnetHdr") is True
        assert bus.get_property(path, iface, "Persistent") is False
        assert bus.get_property(ROOT, MANAGER, "TapCount") == 1
        assert bus.get_property(ROOT, MANAGER, "State") == "ready"
        tree = bus.busctl("tree", "org.bridged.Bridged1").stdout
        assert "/org/bridged/Bridged1/tap/tap0" in tree
        assert "/org/bridged/Bridged1/bridge/br0" in tree
        ports = bus.get_property(f"{ROOT}/bridge/br0", "org.bridged.Bridged1.Bridge", "Ports")
        assert ports == ["eth0", "tap0"]
        assert "STATUS=br0 up, uplink eth0, 1 tap" in daemon.notify.lines()
    finally:
        kill_client(proc)
    wait_for(lambda: tap_names(lab) == set(), what="tap gone after client killed")


def test_multiqueue_open_tap_returns_one_fd_per_queue(lab: Lab, bus: PrivateBus,
                                                      daemon: Daemon):
    # busctl here: Debian 12's dbus-fast (1.84) receives only one fd per message.
    _path, name, fds = call_json(bus.manager("OpenTap", "a{sv}", "1", "queues", "u", "4",
                                            user=MEMBER))
    assert name == "tap0" and len(fds) == 4
    wait_for(lambda: tap_names(lab) == set(), what="tap gone with busctl's fds")


def test_non_member_is_refused_and_nothing_changes(lab: Lab, bus: PrivateBus, daemon: Daemon):
    out = bus.client(OTHER, "open", "{}")
    assert out["error"] == "org.bridged.Bridged1.Error.AccessDenied"
    assert "usermod -aG bridged bt-other" in out["message"]
    result = bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true", user=OTHER)
    assert result.returncode != 0 and "may not create taps" in result.stderr
    assert tap_names(lab) == set()
    # Reading is open to everyone.
    assert bus.busctl("get-property", "org.bridged.Bridged1", ROOT, MANAGER, "Version",
                      user=OTHER).returncode == 0


def test_create_tap_linger_by_busctl_as_unprivileged_user(lab: Lab, bus: PrivateBus,
                                                           daemon: Daemon):
    path, name = call_json(bus.manager("CreateTap", "a{sv}", "2", "linger", "b", "true",
                                       "label", "s", "web", user=MEMBER))
    assert name == "tap0"
    link = lab.host.link("tap0")
    assert link["master"] == "br0"
    assert link["linkinfo"]["info_data"]["user"] == MEMBER  # TUNSETOWNER
    assert link["linkinfo"]["info_data"]["pi"] is False
    assert bus.get_property(path, "org.bridged.Bridged1.Tap", "ClientPID") == 0
    # Another user may not release it; the owner may.
    refused = bus.manager("ReleaseTap", "s", "tap0", user=OTHER)
    assert refused.returncode != 0 and "belongs to uid" in refused.stderr
    assert "tap0" in lab.host.links()
    call_json(bus.busctl("--json=short", "call", "org.bridged.Bridged1", path,
                         "org.bridged.Bridged1.Tap", "Release", user=MEMBER))
    wait_for(lambda: "tap0" not in lab.host.links(), what="tap0 released")


def test_create_tap_lives_as_long_as_the_process_even_after_exec(lab: Lab, bus: PrivateBus,
                                                                 daemon: Daemon):
    proc = bus.client(MEMBER, "create-exec", "{}", "--", "sleep", "30", background=True)
    out = json.loads(proc.stdout.readline())
    assert out["ifname"] == "tap0"
    time.sleep(0.3)
    assert "tap0" in lab.host.links(), "the exec'd program still holds the tap"
    kill_client(proc)
    wait_for(lambda: "tap0" not in lab.host.links(), what="tap freed when the process exited")
    wait_for(lambda: "client process" in daemon.log(), what="the reason logged")


def test_busctl_create_without_linger_is_freed_when_busctl_exits(lab: Lab, bus: PrivateBus,
                                                                  daemon: Daemon):
    call_json(bus.manager("CreateTap", "a{sv}", "0", user=MEMBER))
    wait_for(lambda: tap_names(lab) == set(), what="tap freed with busctl's exit")


def test_quotas(lab: Lab, bus: PrivateBus, daemon: Daemon):
    for _ in range(4):
        call_json(bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true", user=MEMBER))
    over = bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true", user=MEMBER)
    assert over.returncode != 0 and "max_per_user = 4" in over.stderr
    for _ in range(2):
        call_json(bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true"))
    full = bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true")
    assert full.returncode != 0 and "max_total = 6" in full.stderr
    assert len(tap_names(lab)) == 6
    # The count follows frees: one of the member's released, one more may be made.
    mine = sorted(name for name in tap_names(lab)
                  if lab.host.link(name)["ifalias"].startswith(f"bridged:uid={uid(MEMBER)}:"))
    call_json(bus.manager("ReleaseTap", "s", mine[0], user=MEMBER))
    wait_for(lambda: len(tap_names(lab)) == 5, what="the released tap gone")
    call_json(bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true", user=MEMBER))
    # ... and counts it again: with room under max_total, the member is at 4 once more.
    theirs = sorted(set(tap_names(lab)) - set(mine))
    root_tap = next(name for name in theirs if lab.host.link(name)["ifalias"].startswith(
        "bridged:uid=0:"))
    call_json(bus.manager("ReleaseTap", "s", root_tap))
    wait_for(lambda: len(tap_names(lab)) == 5, what="root's released tap gone")
    over = bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true", user=MEMBER)
    assert over.returncode != 0 and "max_per_user = 4" in over.stderr


@pytest.mark.parametrize(("args", "error"), [
    (("name", "s", "eth0"), "must start with 'tap'"),
    (("name", "s", "br0"), "must start with 'tap'"),
    (("name", "s", "lo"), "must start with 'tap'"),
    (("name", "s", "tap-this-is-far-too-long"), "not a valid tap name"),
    (("name", "s", "tap/../x"), "not a valid tap name"),
    (("name", "s", "tap 1"), "not a valid tap name"),
    (("name", "s", "tapé"), "not a valid tap name"),
    (("bogus", "s", "x"), "unknown option 'bogus'"),
    (("queues", "s", "2"), "must have type 'u'"),
    (("queues", "u", "99"), "queues must be between"),
    (("mtu", "u", "10"), "mtu must be between"),
    (("vlan", "q", "10"), "needs VLAN filtering"),
    (("pid", "u", "1"), "does not exist or is not yours"),
])
def test_bad_requests_are_refused_with_nothing_changed(lab: Lab, bus: PrivateBus,
                                                       daemon: Daemon, args, error):
    before = set(lab.host.links())
    result = bus.manager("CreateTap", "a{sv}", "1", *args, user=MEMBER)
    assert result.returncode != 0
    assert error in result.stderr, result.stderr
    assert set(lab.host.links()) == before


def test_existing_tap_name_is_name_in_use(lab: Lab, bus: PrivateBus, daemon: Daemon):
    lab.host.ip("tuntap", "add", "dev", "tap7", "mode", "tap")
    result = bus.manager("CreateTap", "a{sv}", "2", "name", "s", "tap7", "linger", "b", "true",
                         user=MEMBER)
    assert result.returncode != 0 and "tap7 already exists" in result.stderr
    # A foreign tap is never released by bridged.
    result = bus.manager("ReleaseTap", "s", "tap7")
    assert "no tap 'tap7' is managed by bridged" in result.stderr
    assert "tap7" in lab.host.links()


def test_restart_after_sigkill_adopts_live_taps_and_frees_dead_ones(
        lab: Lab, bus: PrivateBus, daemon: Daemon, daemon_factory: Callable[..., Daemon]):
    call_json(bus.manager("CreateTap", "a{sv}", "2", "linger", "b", "true", "label", "s",
                          "keep", user=MEMBER))
    bound = bus.client(MEMBER, "create-exec", "{}", "--", "sleep", "60", background=True)
    assert json.loads(bound.stdout.readline())["ifname"] == "tap1"
    dies = bus.client(MEMBER, "create-exec", "{}", "--", "sleep", "60", background=True)
    assert json.loads(dies.stdout.readline())["ifname"] == "tap2"
    holder = bus.client(MEMBER, "open", "{}", "--hold", "60", background=True)
    assert json.loads(holder.stdout.readline())["ifname"] == "tap3"
    try:
        os.kill(daemon.pid, signal.SIGKILL)
        assert daemon.proc is not None
        daemon.proc.wait(10)
        kill_client(dies)
        time.sleep(0.2)
        assert {"tap0", "tap1", "tap2", "tap3"} <= tap_names(lab), "nothing freed while down"
        second = daemon_factory(SEED, extra_args=("--bus-address", bus.address)).start()
        # The dead client's tap is freed on the reaper lane, not before READY.
        wait_for(lambda: tap_names(lab) == {"tap0", "tap1", "tap3"}, what="tap2 freed")
        wait_for(lambda: "tap tap2 removed: client process" in second.log(),
                 what="the dead client's tap freed and logged")
        assert second.log().count("tap-adopted") == 3, second.log()
        assert sorted(call_json(bus.manager("ListTaps"))[0]) == [
            f"{ROOT}/tap/tap0", f"{ROOT}/tap/tap1", f"{ROOT}/tap/tap3"]
        assert bus.get_property(f"{ROOT}/tap/tap0", "org.bridged.Bridged1.Tap",
                                "Label") == "keep"
        # Adopted taps keep their lifetimes: tap1 goes with its process, tap3 with its fd.
        kill_client(bound)
        kill_client(holder)
        wait_for(lambda: tap_names(lab) == {"tap0"}, what="adopted taps freed on exit")
    finally:
        for proc in (bound, dies, holder):
            kill_client(proc)


def test_signals_on_the_bus(lab: Lab, bus: PrivateBus, daemon: Daemon):
    import subprocess
    monitor = subprocess.Popen(
        ["busctl", f"--address={bus.address}", "--json=short", "monitor",
         "org.bridged.Bridged1"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        call_json(bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true"))
        call_json(bus.manager("ReleaseTap", "s", "tap0"))
        lab.unplug_uplink()
        lab.plug_uplink()
        wait_for(lambda: lab.host.link("eth0").get("master") == "br0", what="re-enslaved")
        time.sleep(0.5)
    finally:
        monitor.terminate()
    members = [json.loads(line).get("member") for line in monitor.stdout if line.strip()]
    assert "TapAdded" in members and "TapRemoved" in members
    assert "UplinkChanged" in members and "PropertiesChanged" in members
    assert "InterfacesAdded" in members and "InterfacesRemoved" in members


def test_only_root_may_own_the_name(bus: PrivateBus, daemon: Daemon):
    result = bus.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                        "org.freedesktop.DBus", "RequestName", "su", "org.bridged.Bridged1",
                        "0", user=MEMBER)
    assert result.returncode != 0 and "Access denied" in result.stderr


def normalized_interfaces(xml: str) -> dict[str, str]:
    root = ET.fromstring(xml)
    out = {}
    for iface in root.findall("interface"):
        if iface.get("name", "").startswith("org.bridged."):
            for element in iface.iter():
                element.tail = element.text = None
            out[iface.get("name", "")] = ET.tostring(iface, encoding="unicode")
    return out


def test_introspection_matches_dbus_xml(bus: PrivateBus, daemon: Daemon):
    """The API surface: what the daemon serves equals the XML we publish in dbus/."""
    served: dict[str, str] = {}
    for path in (ROOT, f"{ROOT}/bridge/br0"):
        xml = bus.busctl("introspect", "--xml-interface", "org.bridged.Bridged1", path,
                         check=True).stdout
        served.update(normalized_interfaces(xml))
    call_json(bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true"))
    served.update(normalized_interfaces(bus.busctl(
        "introspect", "--xml-interface", "org.bridged.Bridged1", f"{ROOT}/tap/tap0",
        check=True).stdout))
    published = normalized_interfaces((REPO / "dbus" / "org.bridged.Bridged1.xml").read_text())
    assert served == published
    assert set(published) == {"org.bridged.Bridged1.Manager", "org.bridged.Bridged1.Bridge",
                              "org.bridged.Bridged1.Tap"}
    assert re.search(r'<method name="OpenTap">', published["org.bridged.Bridged1.Manager"])


def test_deleting_taps_does_not_stall_other_clients(lab: Lab, bus: PrivateBus,
                                                    daemon: Daemon):
    for _ in range(5):
        call_json(bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true"))
    started = time.monotonic()
    for i in range(5):
        call_json(bus.manager("ReleaseTap", "s", f"tap{i}"))
    assert tap_names(lab) == set()
    assert time.monotonic() - started < 10
    assert lab.host.ping(LAN_V4) and HOST_V4


def test_losing_the_bus_exits_nonzero_and_keeps_taps(lab: Lab, bus: PrivateBus, daemon: Daemon):
    call_json(bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true", user=MEMBER))
    bus.proc.kill()  # dbus-daemon dies (or restarts) under us
    assert daemon.proc is not None
    assert daemon.proc.wait(10) == 69, daemon.log()
    assert "lost the connection to the system bus" in daemon.log()
    # The tap outlives the daemon: a restarted daemon adopts it.
    assert "tap0" in lab.host.links()


def test_bridge_addresses_are_the_kernels_whoever_set_them(lab: Lab, bus: PrivateBus,
                                                           daemon: Daemon):
    bridge = f"{ROOT}/bridge/br0"

    def addresses() -> list[str]:
        return bus.get_property(bridge, "org.bridged.Bridged1.Bridge", "Addresses")  # type: ignore[return-value]

    assert addresses() == sorted([f"{HOST_V4}/24", "2001:db8::2/64"])
    lab.host.ip("addr", "add", "198.51.100.77/24", "dev", "br0")  # another tool's address
    wait_for(lambda: "198.51.100.77/24" in addresses(), what="observed address")
    lab.host.ip("addr", "del", "198.51.100.77/24", "dev", "br0")
    wait_for(lambda: "198.51.100.77/24" not in addresses(), what="address gone")


def test_a_tap_put_back_on_the_bridge_keeps_its_isolation(
        lab: Lab, bus: PrivateBus, daemon: Daemon, daemon_factory: Callable[..., Daemon],
        tmp_path: Path):
    """Taken off the bridge by someone (or off and at once on again, before the daemon
    looks), or on a bridge made again: the tap is on it again, isolated. A port that
    leaves the bridge loses its settings, and joining again does not bring them back.
    (Its VLAN is set again the same way; this kernel has no VLAN filtering to show it.)"""
    _path, name = call_json(bus.manager("CreateTap", "a{sv}", "2", "linger", "b", "true",
                                        "isolated", "b", "true", user=MEMBER))
    _path, still = call_json(bus.manager("CreateTap", "a{sv}", "2", "linger", "b", "true",
                                         "isolated", "b", "true", user=MEMBER))

    def isolated(tap: str = name) -> bool:
        port = lab.host.link(tap)
        return port.get("master") == "br0" and \
            port["linkinfo"]["info_slave_data"]["isolated"] is True

    def said_back(tap: str) -> int:
        return sum(d.log().count(f"tap {tap} is on br0 again") for d in (daemon, *restarted))

    restarted: list[Daemon] = []

    assert isolated()
    lab.host.ip("link", "set", name, "nomaster")
    wait_for(isolated, what="back on br0, isolated")
    lab.host.ip("link", "set", name, "nomaster")
    lab.host.ip("link", "set", name, "master", "br0")  # not isolated now
    wait_for(isolated, what="isolated again")
    lab.host.ip("link", "del", "br0")
    wait_for(isolated, what="on the bridge made again, isolated")
    # Off and on again among events lost to an overrun: the resync sees it on br0. (The
    # one that never moved has its settings set again quietly: no "on br0 again".)
    before = said_back(still)
    lost_in_an_overrun(lab, daemon, tmp_path, ("link", "set", name, "nomaster"),
                       ("link", "set", name, "master", "br0"))
    wait_for(isolated, what="isolated again after the overrun")
    # Off and on again while no daemon ran: the next one adopts it, isolated.
    os.kill(daemon.pid, signal.SIGKILL)
    assert daemon.proc is not None
    daemon.proc.wait(10)
    lab.host.ip("link", "set", name, "nomaster")
    lab.host.ip("link", "set", name, "master", "br0")
    assert not isolated()
    restarted.append(daemon_factory(SEED, extra_args=("--bus-address", bus.address)).start())
    wait_for(isolated, what="isolated again after a restart")
    assert isolated(still) and said_back(still) == before
