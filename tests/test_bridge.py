"""The daemon against the real kernel: bridge, uplink, IP move, hotplug, reload."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab import HOST_V4, HOST_V6, LAN_V4, LAN_V6, Daemon, Lab, wait_for

pytestmark = pytest.mark.root

SEED = f"""
[bridge]
name = "br0"
uplinks = ["eth0"]
stp = false
forward_delay = 0
mac = "uplink"

[ip]
mode = "static"
addresses = ["{HOST_V4}/24", "{HOST_V6}/64"]
gateway = "{LAN_V4}"
"""

DaemonFactory = Callable[..., Daemon]


def enslaved(lab: Lab, name: str = "eth0", bridge: str = "br0") -> bool:
    link = lab.host.link(name)
    return bool(link and link.get("master") == bridge and "UP" in link["flags"])


def test_seed_scenario_static_ip_moves_from_eth0_to_br0(lab: Lab, daemon_factory: DaemonFactory):
    lab.classic_host_config()
    eth0_mac = lab.host.link("eth0")["address"]
    daemon = daemon_factory(SEED).start()

    br0 = lab.host.link("br0")
    assert br0["linkinfo"]["info_kind"] == "bridge"
    assert br0["address"] == eth0_mac, "br0 must carry eth0's MAC so ARP caches survive"
    assert br0["linkinfo"]["info_data"]["stp_state"] == 0
    assert br0["linkinfo"]["info_data"]["forward_delay"] == 0
    assert enslaved(lab)
    assert lab.host.addresses("br0") == {f"{HOST_V4}/24", f"{HOST_V6}/64"}
    assert lab.host.addresses("eth0") == set(), "an enslaved port keeps no address"
    default = [r for r in lab.host.routes() if r["dst"] == "default"]
    assert [(r["gateway"], r["dev"]) for r in default] == [(LAN_V4, "br0")]
    # The LAN reaches the host through the bridge, and the host reaches its gateway.
    assert lab.lan.ping(HOST_V4)
    assert lab.lan.ping(HOST_V6)
    assert lab.host.ping(LAN_V4)
    assert lab.host.ping(LAN_V6)
    assert "STATUS=br0 up, uplink eth0" in daemon.notify.wait("READY=1")


def test_migrate_moves_addresses_and_routes(lab: Lab, daemon_factory: DaemonFactory):
    lab.classic_host_config()
    lab.host.ip("route", "add", "2001:db8:1::/64", "via", LAN_V6, "dev", "eth0")
    config = """
[bridge]
name = "br0"
uplinks = ["eth0"]
[ip]
mode = "migrate"
"""
    daemon_factory(config).start()
    assert enslaved(lab)
    assert lab.host.addresses("br0") == {f"{HOST_V4}/24", f"{HOST_V6}/64"}
    assert lab.host.addresses("eth0") == set()
    v4 = {r["dst"]: r for r in lab.host.routes()}
    assert v4["default"]["dev"] == "br0" and v4["default"]["gateway"] == LAN_V4
    v6 = {r["dst"]: r for r in lab.host.routes("-6")}
    assert v6["2001:db8:1::/64"]["dev"] == "br0"
    assert lab.lan.ping(HOST_V4) and lab.host.ping(LAN_V4) and lab.lan.ping(HOST_V6)


def test_migrate_of_a_lease_without_a_dhcp_client_leaves_the_uplink_alone(
        lab: Lab, daemon_factory: DaemonFactory):
    # A leased address moved and frozen would run out; with no DHCP client for the
    # bridge (no bus here, so no networkd), the uplink keeps it and its own client.
    lab.host.ip("addr", "add", f"{HOST_V4}/24", "dev", "eth0", "valid_lft", "300",
                "preferred_lft", "200")
    daemon = daemon_factory('[bridge]\nuplinks = ["eth0"]\n[ip]\nmode = "migrate"\n').start()
    assert lab.host.link("eth0").get("master") is None
    assert f"{HOST_V4}/24" in lab.host.addresses("eth0")
    assert "no DHCP client for br0's lease" in daemon.log()


def test_mode_none_leaves_ip_alone(lab: Lab, daemon_factory: DaemonFactory):
    lab.classic_host_config()
    daemon_factory('[bridge]\nuplinks = ["eth0"]\n[ip]\nmode = "none"\n').start()
    assert enslaved(lab)
    assert lab.host.addresses("br0") == set()
    assert f"{HOST_V4}/24" in lab.host.addresses("eth0")


def test_hotplug_uplink_is_reenslaved_every_time(lab: Lab, daemon_factory: DaemonFactory):
    daemon = daemon_factory(SEED, extra_args=("--log-level", "debug")).start()
    for i in range(15):
        mark = daemon.notify.mark()
        lab.unplug_uplink()
        daemon.notify.wait("no uplink present", since=mark)
        lab.plug_uplink()
        wait_for(lambda: enslaved(lab), what=f"eth0 re-enslaved (round {i})")
    assert lab.host.ping(LAN_V4)
    wait_for(lambda: daemon.log().count("uplink eth0 enslaved") == 16, what="16 enslave logs")
    wait_for(lambda: daemon.notify.lines()[-1].startswith("STATUS=br0 up, uplink eth0"),
             what="status back to ready")


def test_hotplugged_uplink_gives_bridge_its_mac(lab: Lab, daemon_factory: DaemonFactory):
    daemon_factory(SEED).start()
    lab.unplug_uplink()
    lab.plug_uplink()
    wait_for(lambda: enslaved(lab), what="eth0 re-enslaved")
    wait_for(lambda: lab.host.link("br0")["address"] == lab.host.link("eth0")["address"],
             what="br0 takes the new eth0's MAC")


def test_uplink_renamed_into_a_match_is_enslaved(lab: Lab, daemon_factory: DaemonFactory):
    config = SEED.replace('uplinks = ["eth0"]', 'uplinks = ["eth0", "en*"]')
    daemon_factory(config).start()
    lab.host.ip("link", "add", "tmp0", "type", "veth", "peer", "name", "lanx",
                "netns", lab.lan.name)
    lab.lan.ip("link", "set", "lanx", "master", "lanbr", "up")
    assert lab.host.link("tmp0").get("master") is None
    lab.host.ip("link", "set", "tmp0", "name", "enp1s0")
    lab.host.ip("link", "set", "enp1s0", "up")
    wait_for(lambda: enslaved(lab, "enp1s0"), what="renamed link enslaved")


def test_uplink_by_mac(lab: Lab, daemon_factory: DaemonFactory):
    mac = lab.host.link("eth0")["address"]
    config = SEED.replace('uplinks = ["eth0"]', f'uplinks = ["mac:{mac}"]')
    daemon_factory(config).start()
    assert enslaved(lab)


def test_uplink_removed_from_bridge_by_someone_else(lab: Lab, daemon_factory: DaemonFactory):
    daemon = daemon_factory(SEED).start()
    lab.host.ip("link", "set", "eth0", "nomaster")
    wait_for(lambda: enslaved(lab), what="eth0 re-enslaved after nomaster")
    lab.host.ip("link", "set", "eth0", "down")
    wait_for(lambda: enslaved(lab), what="eth0 set up again")
    wait_for(lambda: daemon.log().count("uplink eth0 enslaved") == 3, what="three enslave logs")


def test_bridge_deleted_under_the_daemon_is_recreated(lab: Lab, daemon_factory: DaemonFactory):
    daemon = daemon_factory(SEED).start()
    lab.host.ip("link", "del", "br0")
    wait_for(lambda: enslaved(lab), what="br0 recreated and eth0 enslaved")
    wait_for(lambda: lab.host.addresses("br0") == {f"{HOST_V4}/24", f"{HOST_V6}/64"},
             what="addresses back on br0")
    wait_for(lambda: any(r["dst"] == "default" and r["dev"] == "br0"
                         for r in lab.host.routes()), what="default route back")
    assert lab.host.ping(LAN_V4)
    assert "bridge br0 was deleted" in daemon.log()


def test_bridge_set_down_and_up_while_the_daemon_is_busy_gets_its_ip_back(
        lab: Lab, daemon_factory: DaemonFactory):
    """Both events wait in the daemon's socket (it is stopped): setting br0 down flushed
    its routes and IPv6 address, so the down must be news even though the up follows
    (found in review: events passed over when a newer one of the link followed)."""
    daemon = daemon_factory(SEED).start()
    assert enslaved(lab)
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        lab.host.ip("link", "set", "br0", "down")
        lab.host.ip("link", "set", "br0", "up")
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    wait_for(lambda: f"{HOST_V6}/64" in lab.host.addresses("br0"), what="IPv6 address back")
    wait_for(lambda: [(r["gateway"], r["dev"]) for r in lab.host.routes()
                      if r["dst"] == "default"] == [(LAN_V4, "br0")],
             what="default route back")
    assert lab.host.ping(LAN_V4)


def lost_in_an_overrun(lab: Lab, daemon: Daemon, tmp_path: Path,
                       *commands: tuple[str, ...]) -> None:
    """Run ``ip`` ``commands`` while the daemon is stopped and its event socket overruns
    (12,000 events of another bridge, ~1.5 KB each, more than its 16 MB queue): what they
    changed reaches the daemon only through the resync that follows."""
    lab.host.ip("link", "add", "flood0", "type", "bridge")
    flood = tmp_path / "flood.batch"
    flood.write_text("".join(f"link set flood0 {'up' if i % 2 == 0 else 'down'}\n"
                             for i in range(12000)))
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        lab.host.ip("-batch", str(flood))
        for command in commands:
            lab.host.ip(*command)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    wait_for(lambda: "netlink event queue overran" in daemon.log(), what="the overrun")


def test_bridge_set_down_and_up_in_events_lost_to_an_overrun_gets_its_ip_back(
        lab: Lab, daemon_factory: DaemonFactory, tmp_path: Path):
    """The same flip, lost with thousands of other events (the daemon's event socket
    overran while it was stopped): the resync's dump shows br0 up, as before, and the
    daemon puts its configuration back all the same."""
    daemon = daemon_factory(SEED).start()
    assert enslaved(lab)
    lost_in_an_overrun(lab, daemon, tmp_path, ("link", "set", "br0", "down"),
                       ("link", "set", "br0", "up"))
    wait_for(lambda: f"{HOST_V6}/64" in lab.host.addresses("br0"), what="IPv6 address back")
    wait_for(lambda: [(r["gateway"], r["dev"]) for r in lab.host.routes()
                      if r["dst"] == "default"] == [(LAN_V4, "br0")],
             what="default route back")
    assert lab.host.ping(LAN_V4)


def test_bridge_port_notifications_are_not_new_links(lab: Lab, daemon_factory: DaemonFactory):
    daemon = daemon_factory(SEED).start()
    # Port state changes make the bridge send AF_BRIDGE RTM_NEWLINKs for eth0.
    for _ in range(5):
        lab.host.ip("link", "set", "br0", "type", "bridge", "forward_delay", "0")
        lab.lan.ip("link", "set", "lan1", "down")
        lab.lan.ip("link", "set", "lan1", "up")
    assert lab.host.ping(LAN_V4)
    assert daemon.log().count("uplink eth0 enslaved") == 1
    assert "appeared" not in daemon.log()


def test_a_bridge_another_tool_made_is_refused(lab: Lab, daemon_factory: DaemonFactory):
    lab.classic_host_config()
    lab.host.ip("link", "add", "br0", "type", "bridge", "stp_state", "1")
    daemon = daemon_factory(SEED).start(wait_ready=False)
    assert daemon.proc is not None and daemon.proc.wait(15) == 69
    assert "bridge br0 exists and bridged did not make it" in daemon.log()
    assert "bridge.adopt = true" in daemon.log()
    # Nothing touched: the other tool's bridge as it was, eth0 with its address.
    assert lab.host.link("br0")["linkinfo"]["info_data"]["stp_state"] == 1
    assert lab.host.link("eth0").get("master") is None
    assert f"{HOST_V4}/24" in lab.host.addresses("eth0")


def test_existing_bridge_is_adopted_when_asked(lab: Lab, daemon_factory: DaemonFactory):
    lab.host.ip("link", "add", "br0", "type", "bridge", "stp_state", "1")
    index = lab.host.link("br0")["ifindex"]
    daemon = daemon_factory(SEED.replace('mac = "uplink"', 'mac = "uplink"\nadopt = true'))
    daemon.start()
    br0 = lab.host.link("br0")
    assert br0["ifindex"] == index
    assert br0["linkinfo"]["info_data"]["stp_state"] == 0
    assert "bridge br0 adopted (bridge.adopt = true)" in daemon.log()
    assert br0["ifalias"].startswith("bridged:bridge"), "marked as bridged's from now on"


def test_foreign_port_is_named_and_left_alone(lab: Lab, daemon_factory: DaemonFactory):
    daemon = daemon_factory(SEED).start()
    lab.host.ip("tuntap", "add", "dev", "tap0", "mode", "tap")  # root's own, not bridged's
    lab.host.ip("link", "set", "tap0", "master", "br0")
    wait_for(lambda: "tap0 joined br0 but is neither an uplink nor a bridged tap"
             in daemon.log(), what="foreign port logged")
    assert lab.host.link("tap0")["master"] == "br0"


def test_address_reappearing_on_the_enslaved_uplink_is_removed(lab: Lab,
                                                               daemon_factory: DaemonFactory):
    lab.classic_host_config()
    daemon = daemon_factory(SEED).start()
    # What NetworkManager's profile or a DHCP client on eth0 does after a flap.
    lab.host.ip("addr", "add", f"{HOST_V4}/24", "dev", "eth0")
    wait_for(lambda: lab.host.addresses("eth0") == set(), what="address removed again")
    assert "appeared on eth0, which is enslaved to br0; removing it" in daemon.log()
    assert lab.host.ping(LAN_V4) and lab.lan.ping(HOST_V4)


def test_bridge_name_taken_by_another_device(lab: Lab, daemon_factory: DaemonFactory):
    lab.host.ip("link", "add", "br0", "type", "veth", "peer", "name", "br0p")
    daemon = daemon_factory(SEED).start(wait_ready=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(15) == 69
    assert "br0 exists and is a veth device, not a bridge" in daemon.log()
    assert lab.host.link("eth0").get("master") is None


def test_stop_leaves_bridge_uplink_and_ip(lab: Lab, daemon_factory: DaemonFactory):
    daemon = daemon_factory(SEED).start()
    assert daemon.stop() == 0
    daemon.notify.wait("STOPPING=1")
    assert enslaved(lab)
    assert lab.host.addresses("br0") == {f"{HOST_V4}/24", f"{HOST_V6}/64"}
    assert lab.host.ping(LAN_V4)


def test_teardown_on_stop_gives_ip_back_to_uplink(lab: Lab, daemon_factory: DaemonFactory):
    lab.classic_host_config()
    daemon = daemon_factory(SEED.replace('mac = "uplink"',
                                         'mac = "uplink"\nteardown_on_stop = true')).start()
    assert daemon.stop() == 0
    assert lab.host.link("br0") is None
    assert lab.host.addresses("eth0") == {f"{HOST_V4}/24", f"{HOST_V6}/64"}
    assert any(r["dst"] == "default" and r["dev"] == "eth0" for r in lab.host.routes())
    assert lab.host.ping(LAN_V4)


def test_restart_after_stop_is_idempotent(lab: Lab, daemon_factory: DaemonFactory):
    lab.classic_host_config()
    daemon_factory(SEED).start().stop()
    daemon = daemon_factory(SEED).start()
    assert enslaved(lab)
    assert lab.host.addresses("br0") == {f"{HOST_V4}/24", f"{HOST_V6}/64"}
    assert "bridge br0 adopted" in daemon.log()
    assert lab.host.ping(LAN_V4)


def test_sighup_reloads_config(lab: Lab, daemon_factory: DaemonFactory):
    daemon = daemon_factory(SEED).start()
    daemon.write_config(SEED.replace(f'"{HOST_V6}/64"', '"2001:db8::3/64"')
                        .replace("stp = false", "stp = true").replace("forward_delay = 0",
                                                                      "forward_delay = 4"))
    mark = daemon.notify.mark()
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait("RELOADING=1", since=mark)
    wait_for(lambda: lab.host.addresses("br0") == {f"{HOST_V4}/24", "2001:db8::3/64"},
             what="new address set, old removed")
    info = wait_for(lambda: (lambda d: d if d["stp_state"] == 1 else None)(
        lab.host.link("br0")["linkinfo"]["info_data"]), what="stp on")
    assert info["forward_delay"] == 400
    wait_for(lambda: daemon.notify.lines().count("READY=1") == 2, what="READY=1 after reload")


def test_sighup_with_bad_file_keeps_running_config(lab: Lab, daemon_factory: DaemonFactory):
    daemon = daemon_factory(SEED).start()
    daemon.write_config(SEED + "\nbogus = 1\n")
    mark = daemon.notify.mark()
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait("RELOADING=1", since=mark)
    wait_for(lambda: "reload refused, keeping the running configuration" in daemon.log(),
             what="reload failure logged")
    assert "ip.bogus: unknown key" in daemon.log()
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert lab.host.addresses("br0") == {f"{HOST_V4}/24", f"{HOST_V6}/64"}


def test_sd_notify_ready_status_watchdog_stopping(lab: Lab, daemon_factory: DaemonFactory):
    daemon = daemon_factory(SEED, env={"WATCHDOG_USEC": "200000"}).start()
    daemon.notify.wait("WATCHDOG=1")
    lines = daemon.notify.lines()
    assert "READY=1" in lines
    assert any(line.startswith("STATUS=br0 up, uplink eth0") for line in lines)
    before = lines.count("WATCHDOG=1")
    wait_for(lambda: daemon.notify.lines().count("WATCHDOG=1") >= before + 3,
             what="watchdog pings keep coming", timeout=5)
    # Every message comes from the daemon itself, not a helper process.
    assert {pid for pid, _ in daemon.notify.messages} == {daemon.pid}
    daemon.stop()
    daemon.notify.wait("STOPPING=1")


def test_degraded_while_no_uplink(lab: Lab, daemon_factory: DaemonFactory):
    lab.unplug_uplink()
    daemon = daemon_factory(SEED).start()
    assert "STATUS=br0 up, no uplink present" in daemon.notify.wait("READY=1")
    assert "state degraded" in daemon.log()
    lab.plug_uplink()
    daemon.notify.wait("STATUS=br0 up, uplink eth0")
    assert "state ready" in daemon.log()


def test_bad_config_stops_before_touching_anything(lab: Lab, daemon_factory: DaemonFactory):
    lab.classic_host_config()
    daemon = daemon_factory(SEED.replace("stp = false", 'stp = "off"')).start(wait_ready=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(15) == 78
    assert "bridge.stp: expected true or false" in daemon.log()
    assert lab.host.link("br0") is None
    assert lab.host.addresses("eth0") == {f"{HOST_V4}/24", f"{HOST_V6}/64"}
