"""bridgectl against the real daemon on a private bus, as root and as real users."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import pytest

from tests.buslab import MEMBER, OTHER, PrivateBus, kill_client
from tests.lab import HOST_V4, Daemon, Lab, wait_for
from tests.test_bridge import SEED
from tests.test_dbus import uid

pytestmark = pytest.mark.root


@pytest.fixture
def daemon(lab: Lab, bus: PrivateBus, daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory(SEED + "\n[taps]\nmax_per_user = 4\n",
                          extra_args=("--bus-address", bus.address)).start()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def taps_on_host(lab: Lab) -> set[str]:
    return {name for name in lab.host.links() if name.startswith("tap")}


def test_status_shows_bridge_uplink_and_taps(lab: Lab, bus: PrivateBus, daemon: Daemon):
    ok(bus.bridgectl("create", "--linger", "--label", "web", user=MEMBER))
    status = json.loads(ok(bus.bridgectl("status", "--json", user=OTHER)))
    eth0_mac = lab.host.link("eth0")["address"]
    assert status["state"] == "ready"
    assert status["bridge"]["name"] == "br0" and status["bridge"]["mac"] == eth0_mac
    assert f"{HOST_V4}/24" in status["bridge"]["addresses"]
    assert status["uplinks"] == {"configured": ["eth0"], "enslaved": ["eth0"]}
    [tap] = status["taps"]
    assert tap["name"] == "tap0" and tap["owner"] == MEMBER and tap["label"] == "web"
    assert tap["persistent"] and tap["client_pid"] == 0 and tap["queues"] == 1
    assert tap["guarded"] is True and tap["mac"] == ""  # learned from its first frame
    # The same, for people: --json before the command works too.
    assert json.loads(ok(bus.bridgectl("--json", "status")))["taps"][0]["name"] == "tap0"
    text = ok(bus.bridgectl("status"))
    assert "● br0" in text and eth0_mac in text and f"{HOST_V4}/24" in text
    assert "Uplinks: eth0 (enslaved); configured: eth0" in text
    row = next(line for line in text.splitlines() if line.startswith("tap0"))
    assert row.split()[:3] == ["tap0", MEMBER, "web"] and "linger" in row
    assert row.split()[-3:-1] == ["on", "learning"], row


def test_create_list_release_as_member_and_refusals(lab: Lab, bus: PrivateBus, daemon: Daemon):
    assert ok(bus.bridgectl("create", "--linger", "--label", "db", user=MEMBER)).strip() == "tap0"
    created = json.loads(ok(bus.bridgectl("create", "--linger", "--json", user=MEMBER)))
    assert created == {"name": "tap1", "path": "/org/bridged/Bridged1/tap/tap1"}
    listed = json.loads(ok(bus.bridgectl("list", "--json")))
    assert [t["name"] for t in listed] == ["tap0", "tap1"]
    assert lab.host.link("tap0")["linkinfo"]["info_data"]["user"] == MEMBER

    # Someone else's tap: one clear line, exit 4, nothing changed.
    refused = bus.bridgectl("release", "tap0", user=OTHER)
    assert refused.returncode == 4
    assert refused.stderr.startswith("bridgectl: ") and len(refused.stderr.splitlines()) == 1
    assert "tap0" in taps_on_host(lab)

    # Not in group bridged: refused, told what to do, no tap.
    denied = bus.bridgectl("create", "--linger", user=OTHER)
    assert denied.returncode == 4 and "bridged" in denied.stderr
    assert "Traceback" not in denied.stderr
    assert taps_on_host(lab) == {"tap0", "tap1"}

    missing = bus.bridgectl("release", "tap9", user=MEMBER)
    assert missing.returncode == 1 and "tap9" in missing.stderr
    bad = bus.bridgectl("create", "--linger", "--name", "eth0", user=MEMBER)
    assert bad.returncode == 1 and "must start with 'tap'" in bad.stderr
    # Run straight from a root-owned parent (runuser), there is no process of ours to
    # bind the tap to: said so, nothing created.
    unbound = bus.bridgectl("create", user=MEMBER)
    assert unbound.returncode == 1 and "--linger" in unbound.stderr

    ok(bus.bridgectl("release", "tap0", "tap1", user=MEMBER))
    wait_for(lambda: taps_on_host(lab) == set(), what="taps released")
    assert ok(bus.bridgectl("list")).strip() == "No taps."


def test_create_is_bound_to_the_calling_shell(lab: Lab, bus: PrivateBus, daemon: Daemon):
    # The wrapper-script pattern: the shell that ran `bridgectl create` owns the tap.
    script = (f"tap=$({sys.executable} -m bridged.cli create --label wrapped) || exit 1; "
              "echo $tap; exec sleep 60")
    proc = subprocess.Popen(bus.user_command(MEMBER, "sh", "-c", script),
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        name = proc.stdout.readline().strip()
        assert name == "tap0" and "tap0" in taps_on_host(lab)
        [tap] = json.loads(ok(bus.bridgectl("list", "--json")))
        assert tap["client_pid"] != 0 and tap["label"] == "wrapped"
    finally:
        kill_client(proc)
    wait_for(lambda: taps_on_host(lab) == set(), what="tap freed with its shell")


def test_run_execs_the_command_with_tap_fds(lab: Lab, bus: PrivateBus, daemon: Daemon):
    probe = os.path.join(bus.clients, "fdprobe.py")
    out = json.loads(ok(bus.bridgectl("run", "--label", "vm7", "--", sys.executable, probe,
                                      "-name", "ignored", user=MEMBER)))
    [tap] = out["taps"]
    assert tap["ifname"] == "tap0" and tap["tap"] and tap["vnet_hdr"]
    assert out["netdev"] == f"tap,id=bridged0,fd={tap['fd']}"
    assert out["device"].startswith("virtio-net-pci,netdev=bridged0,mac=52:54:00:")
    # The guards know the guest's MAC from the start: bridgectl passed it.
    guest_mac = out["device"].split("mac=")[1].split(",")[0]
    assert f"tap tap0 created for uid {uid(MEMBER)} (vm7); guarded, guest MAC {guest_mac}" \
        in daemon.log()
    # The same VM gets the same MAC next time; another VM another one.
    again = json.loads(ok(bus.bridgectl("run", "--label", "vm7", "-q", "--", sys.executable,
                                        probe, user=MEMBER)))
    other = json.loads(ok(bus.bridgectl("run", "--label", "vm8", "-q", "--", sys.executable,
                                        probe, user=MEMBER)))
    assert again["device"] == out["device"] and other["device"] != out["device"]
    # Multi-queue: one fd per queue, every one a queue of the same tap (this also covers
    # Debian's dbus-fast, which alone would receive only the first fd).
    multi = json.loads(ok(bus.bridgectl("run", "--queues", "3", "-q", "--", sys.executable,
                                        probe, user=MEMBER)))
    assert len(multi["taps"]) == 3 and len({t["ifname"] for t in multi["taps"]}) == 1
    assert all(t["multi_queue"] for t in multi["taps"])
    assert "mq=on,vectors=8" in multi["device"]
    # The probe exited, so its fds closed and the taps are gone.
    wait_for(lambda: taps_on_host(lab) == set(), what="run taps gone")


def test_run_refuses_non_member_before_starting_anything(lab: Lab, bus: PrivateBus,
                                                         daemon: Daemon):
    result = bus.bridgectl("run", "--", "true", user=OTHER)
    assert result.returncode == 4 and result.stderr.startswith("bridgectl: ")
    missing = bus.bridgectl("run", "--", "no-such-qemu", user=MEMBER)
    assert missing.returncode == 1 and "no-such-qemu: command not found" in missing.stderr
    assert taps_on_host(lab) == set()


class LineReader:
    """Lines from a pipe with a timeout (select on the raw fd, our own buffer)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.fd = stream.fileno()
        self.buffer = b""

    def line(self, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], max(0, deadline - time.monotonic()))
            assert ready, f"no line within {timeout}s (have {self.buffer!r})"
            chunk = os.read(self.fd, 4096)
            assert chunk, f"end of stream (have {self.buffer!r})"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def test_monitor_prints_events_until_interrupted(lab: Lab, bus: PrivateBus, daemon: Daemon):
    proc = subprocess.Popen(
        bus.user_command(OTHER, sys.executable, "-m", "bridged.cli", "monitor", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        assert "Monitoring bridged" in err.line()  # subscribed from here on
        ok(bus.bridgectl("create", "--linger", user=MEMBER))
        ok(bus.bridgectl("release", "tap0"))
        events: list[dict[str, Any]] = []
        while not any(e["event"] == "TapRemoved" for e in events):
            events.append(json.loads(out.line()))
        tap_events = [e for e in events if e["event"] != "PropertiesChanged"]
        assert tap_events == [
            {"event": "TapAdded", "tap": "tap0", "path": "/org/bridged/Bridged1/tap/tap0"},
            {"event": "TapRemoved", "tap": "tap0", "path": "/org/bridged/Bridged1/tap/tap0"}]
        # Ports are announced by name only (EmitsChangedSignal=invalidates): a thousand
        # of them, rebuilt and sent for every tap, cost more than the tap.
        announced = [e for e in events if e["event"] == "PropertiesChanged"
                     and "Ports" in e["invalidated"]]
        assert announced and all("Ports" not in e["changed"] for e in announced)
        daemon.stop()  # the daemon leaving the bus is an event too
        while (event := json.loads(out.line()))["event"] == "PropertiesChanged":
            pass
        assert event == {"event": "DaemonGone"}
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        kill_client(proc)


def test_errors_when_daemon_is_absent(bus: PrivateBus):
    result = bus.bridgectl("status")
    assert result.returncode == 69
    assert result.stderr.strip() == "bridgectl: bridged is not running " \
                                    "(no owner of org.bridged.Bridged1 on the bus)"
    nobus = bus.bridgectl("--bus-address", "unix:path=/nonexistent", "list")
    assert nobus.returncode == 69 and "cannot connect" in nobus.stderr


@pytest.mark.parametrize("command", ["status", "list", "create", "release", "monitor", "run",
                                     "retry"])
def test_every_subcommand_has_help(bus: PrivateBus, command: str):
    result = bus.bridgectl(command, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"usage: bridgectl {command}")
