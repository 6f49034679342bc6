"""bridged tried as a hostile local user would: one regression test per finding of
issue 10, then a generated suite of over a thousand requests per caller.

Everything runs against the real daemon on a private bus with the shipped policy, called
by real users (bt-member in group bridged, bt-other outside it), with the suite's
interpreter: Debian 12's dbus-fast 1.84.2 in one CI pass, PyPI's latest in the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from bridged.bus import spec
from tests.buslab import MEMBER, OTHER, PrivateBus
from tests.lab import Daemon, Lab, NetNS, wait_for
from tests.test_bridge import SEED

pytestmark = pytest.mark.root

ROOT = "/org/bridged/Bridged1"
MANAGER = "org.bridged.Bridged1.Manager"
TAP = "org.bridged.Bridged1.Tap"
BUS_NAME = "org.bridged.Bridged1"
INVALID_ARGUMENT = "org.bridged.Bridged1.Error.InvalidArgument"
FOREIGN = "tapforeign"  # root's lingering tap: outside every unprivileged caller's reach
ALIEN = "tapalien"  # a tap some other tool made: bridged must never touch it
CONFIG = SEED + "\n[taps]\nmax_per_user = 64\nmax_total = 200\n"
SEED_ENV = "BRIDGED_HOSTILE_SEED"
COUNT_ENV = "BRIDGED_HOSTILE_COUNT"


def dbus_fast_version() -> str:
    import dbus_fast.__version__ as v
    return str(v.__version__)


def start_daemon(lab: Lab, bus: PrivateBus, daemon_factory: Callable[..., Daemon],
                 config: str = CONFIG) -> Daemon:
    # Console logging, explicitly: the log-forging test reads the daemon's stderr lines.
    return daemon_factory(config, extra_args=("--bus-address", bus.address,
                                              "--log-target", "console")).start()


@pytest.fixture
def daemon(lab: Lab, bus: PrivateBus, daemon_factory: Callable[..., Daemon]) -> Daemon:
    return start_daemon(lab, bus, daemon_factory)


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def tap_names(lab: Lab) -> set[str]:
    return {name for name in lab.host.links() if name.startswith("tap")}


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["data"] if result.stdout.strip() else []


def create(bus: PrivateBus, *options: str, user: str | None = MEMBER) -> str:
    """CreateTap (lingering) through busctl, an independent client; the new tap's name."""
    count = str(len(options) // 3 + 1)
    _path, name = ok(bus.manager("CreateTap", "a{sv}", count, "linger", "b", "true",
                                 *options, user=user))
    return str(name)


def label_of(bus: PrivateBus, name: str) -> str:
    return str(bus.get_property(f"{ROOT}/tap/{name}", TAP, "Label"))


def call(bus: PrivateBus, member: str, signature: str, body: list[Any],
         path: str = ROOT, interface: str = MANAGER) -> tuple[str | None, Any]:
    """One call as root from this process: (error name or None, body)."""
    async def run() -> tuple[str | None, Any]:
        conn = await MessageBus(bus_address=bus.address, bus_type=BusType.SYSTEM).connect()
        try:
            reply = await conn.call(Message(destination=BUS_NAME, path=path,
                                            interface=interface, member=member,
                                            signature=signature, body=body))
        finally:
            conn.disconnect()
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            return reply.error_name, reply.body
        return None, reply.body
    return asyncio.run(run())


def settle(read: Callable[[], Any], expected: Any, timeout: float = 10) -> Any:
    """``read()`` once it equals ``expected``, or its last value after ``timeout`` (for the
    assertion that follows to show the difference)."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def resting_fd_count(pid: int) -> int:
    """The daemon's fd count once it has not changed for half a second: a tap freed a
    moment ago (the warm-up's) may still be on its way out, paced across loop turns."""
    last, since = fd_count(pid), time.monotonic()
    deadline = since + 10
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = fd_count(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            break
    return last


def assert_serving(bus: PrivateBus, daemon: Daemon, pid: int) -> list[str]:
    """The same daemon process still runs and answers; the taps it lists."""
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
    assert daemon.pid == pid
    taps: list[str] = ok(bus.manager("ListTaps"))[0]
    assert "bus-lost" not in daemon.log() and "Traceback" not in daemon.log(), daemon.log()
    return taps


def link_snapshot(*namespaces: NetNS) -> dict[str, Any]:
    """Every link's name, master, MTU, flags, state, MAC, alias and addresses."""
    snapshot = {}
    for ns in namespaces:
        for link in json.loads(ns.ip("-j", "-d", "addr", "show").stdout):
            alias = link.get("ifalias")
            if link.get("linkinfo", {}).get("info_kind") == "bridge" and ns.name.startswith(
                    "bridged-host"):
                # bridged keeps its round-robin cursor in its own bridge's alias.
                alias = None
            snapshot[f"{ns.name.split('-')[1]}/{link['ifname']}"] = (
                link.get("master"), link["mtu"], sorted(link["flags"]), link["operstate"],
                link.get("address"), alias,
                sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])))
    return snapshot


def client_run(bus: PrivateBus, user: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """tests/clients/hostile.py as ``user``, with this interpreter; its JSON summary."""
    cmd = bus.user_command(user, sys.executable, os.path.join(bus.clients, "hostile.py"),
                           bus.address, "--role", "member" if user == MEMBER else "other",
                           "--foreign", FOREIGN, "--alien", ALIEN, *args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def neighbours(lab: Lab, bus: PrivateBus) -> None:
    """Root's lingering tap and a tap another tool made: others' links on the bridge host."""
    assert create(bus, "name", "s", FOREIGN, "label", "s", "root's vm é", user=None) == FOREIGN
    lab.host.ip("tuntap", "add", "dev", ALIEN, "mode", "tap")
    # A persistent tap loses its carrier when bridged closes its fd, which the kernel
    # reports up to a second later (linkwatch): let that settle before any snapshot.
    wait_for(lambda: "NO-CARRIER" in lab.host.link(FOREIGN)["flags"], what="carrier off")


def warm_up(bus: PrivateBus) -> None:
    """One create and release on each lane, so the fd count taken next is the resting one."""
    name = create(bus)
    ok(bus.manager("ReleaseTap", "s", name, user=MEMBER))
    ok(bus.manager("OpenTap", "a{sv}", "0", user=MEMBER))


# --- finding 1: non-ASCII text stops the daemon (dbus-fast 1.84 mis-sizes strings) --------


def test_finding1_non_ascii_properties_get_from_non_member(lab: Lab, bus: PrivateBus,
                                                           daemon: Daemon):
    pid = daemon.pid
    for interface in ("é", "org.bridged.Bridged1.Managér", "🦀", "虚拟机"):
        result = bus.busctl("call", BUS_NAME, ROOT, "org.freedesktop.DBus.Properties", "Get",
                            "ss", interface, "Version", user=OTHER)
        assert result.returncode != 0
        # The error dbus-fast used to build itself, now bridged's: the text intact.
        assert f"has no interface {interface}" in result.stderr, result.stderr
        for member, args in (("GetAll", ("s", interface)),
                             ("Set", ("ssv", interface, "Label", "s", "é"))):
            assert bus.busctl("call", BUS_NAME, ROOT, "org.freedesktop.DBus.Properties",
                              member, *args, user=OTHER).returncode != 0
    assert bus.busctl("call", BUS_NAME, ROOT, MANAGER, "ReleaseTap", "s", "tapé",
                      user=OTHER).returncode != 0
    assert assert_serving(bus, daemon, pid) == []
    assert bus.get_property(ROOT, MANAGER, "State") == "ready"


@pytest.mark.parametrize("label", ["é", "🦀 vm", "虚拟机", "Ünïcödé 🦀 虚拟机"])
def test_finding1_non_ascii_label_reads_back_exactly(lab: Lab, bus: PrivateBus, daemon: Daemon,
                                                     label: str):
    pid = daemon.pid
    name = create(bus, "label", "s", label)
    assert label_of(bus, name) == label
    objects = ok(bus.busctl("--json=short", "call", BUS_NAME, ROOT,
                            "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"))[0]
    assert objects[f"{ROOT}/tap/{name}"][TAP]["Label"]["data"] == label
    assert lab.host.link(name)["ifalias"].endswith(f":label={label}")
    # bridgectl, on this interpreter's dbus-fast, shows it as it is.
    listed = bus.bridgectl("list", "--json", user=OTHER)
    assert listed.returncode == 0, listed.stderr
    assert [t["label"] for t in json.loads(listed.stdout)] == [label]
    ok(bus.manager("ReleaseTap", "s", name, user=MEMBER))
    assert assert_serving(bus, daemon, pid) == []


def test_finding1_bridgectl_sends_and_shows_a_non_ascii_label(lab: Lab, bus: PrivateBus,
                                                              daemon: Daemon):
    """The client side: bridgectl on this interpreter's dbus-fast must send the label
    well-formed too (1.84 would mis-size it and the bus would drop bridgectl)."""
    label = "é 🦀 虚拟机"
    created = bus.bridgectl("create", "--linger", "--label", label, user=MEMBER)
    assert created.returncode == 0, created.stderr
    name = created.stdout.strip()
    assert label_of(bus, name) == label
    status = bus.bridgectl("status", user=OTHER)
    assert status.returncode == 0 and label in status.stdout, status.stdout + status.stderr
    released = bus.bridgectl("release", name, user=MEMBER)
    assert released.returncode == 0, released.stderr
    assert tap_names(lab) == set()


# --- finding 2: a stored label keeps a restarted daemon down ------------------------------


def test_finding2_stored_label_survives_sigkill_and_restart(
        lab: Lab, bus: PrivateBus, daemon: Daemon, daemon_factory: Callable[..., Daemon]):
    label = "é 🦀 虚拟机"
    name = create(bus, "label", "s", label)
    # And an alias some root tool garbled: bridged's mark, bytes that are not UTF-8.
    lab.host.ip("tuntap", "add", "dev", "tapodd", "mode", "tap")
    subprocess.run(["ip", "-n", lab.host.name, "link", "set", "dev", "tapodd", "alias",
                    b"bridged:uid=0:pid=0:start=0:p=1:q=1:vh=1:vlan=0:iso=0:t=0:label=\xff\x01"],
                   check=True)
    os.kill(daemon.pid, signal.SIGKILL)
    assert daemon.proc is not None
    daemon.proc.wait(10)
    second = start_daemon(lab, bus, daemon_factory)
    pid = second.pid
    time.sleep(1)  # a start that fails on the label would be gone by now
    assert second.proc is not None and second.proc.poll() is None, second.log()
    assert "tap-adopted" in second.log()
    assert f"{ROOT}/tap/{name}" in assert_serving(bus, second, pid)
    assert label_of(bus, name) == label
    assert label_of(bus, "tapodd") == ""  # not shown: not printable text
    assert len(second.notify.lines()) >= 1 and second.log().count("ready:") == 1


# --- finding 3: a tap's MTU lowers the bridge's and the host's ----------------------------


@pytest.mark.parametrize("mtu", [68, 576])
def test_finding3_small_tap_mtu_leaves_bridge_and_host_mtu(lab: Lab, bus: PrivateBus,
                                                           daemon: Daemon, mtu: int):
    assert "mtu" not in CONFIG
    before = {name: link["mtu"] for name, link in lab.host.links().items()}
    assert before["br0"] == 1500
    name = create(bus, "mtu", "u", str(mtu))
    assert lab.host.link(name)["mtu"] == mtu
    opened = ok(bus.manager("OpenTap", "a{sv}", "1", "mtu", "u", str(mtu), user=MEMBER))
    assert opened[1] != name
    after = {n: link["mtu"] for n, link in lab.host.links().items() if n != name}
    assert after == before, "a tap's mtu changed another link's"
    assert bus.get_property(f"{ROOT}/bridge/br0", "org.bridged.Bridged1.Bridge", "MTU") == 1500


# --- finding 4: fds attached to calls are never closed ------------------------------------


def test_finding4_unsolicited_fds_are_closed_and_refused(lab: Lab, bus: PrivateBus,
                                                         daemon: Daemon,
                                                         figures: Callable[[str], None]):
    neighbours(lab, bus)
    warm_up(bus)
    pid = daemon.pid
    before = resting_fd_count(pid)
    sent = 0
    templates = "list,get,get-all,set,open,create,release,tap-release,introspect," \
        "managed-objects,ping,machine-id,signal"
    for user in (MEMBER, OTHER):
        out = client_run(bus, user, "--count", "150", "--force-fault", "fds", "--fds", "3",
                         "--only", templates)
        assert out["alive"]
        assert out["with_fds"] == 150
        assert out["accepted_wrongly"] == [] and out["wrong_error"] == [], out
        assert out["taps_made"] == 0
        calls = 150 - out["covered"].get("org.bridged.Bridged1.Manager.TapAdded", 0) \
            - out["covered"].get("org.bridged.Bridged1.Manager.Hello", 0)
        assert out["errors"] == {"org.freedesktop.DBus.Error.InvalidArgs": calls}, out
        sent += 150
    assert assert_serving(bus, daemon, pid) == [f"{ROOT}/tap/{FOREIGN}"]
    assert settle(lambda: fd_count(pid), before) == before
    figures(f"unsolicited fds (dbus-fast {dbus_fast_version()}): {sent} calls x 3 fds, "
            f"all refused; daemon fds {before} before, {fd_count(pid)} after")


# --- finding 6: names, mtu, pid and labels that slipped through ---------------------------


@pytest.mark.parametrize(("key", "signature", "value"), [
    ("name", "s", "tap1\n"), ("name", "s", "tap\n"), ("mtu", "u", 65535), ("mtu", "u", 65522),
    ("pid", "u", 2**31), ("pid", "u", 2**32 - 1), ("label", "s", "vm\nBRIDGED_UID=0"),
])
def test_finding6_out_of_range_options_are_invalid_argument(lab: Lab, bus: PrivateBus,
                                                            daemon: Daemon, key: str,
                                                            signature: str, value: Any):
    before = set(lab.host.links())
    # As root: the checks must hold for the caller who skips quotas and groups too.
    error, body = call(bus, "CreateTap", "a{sv}", [{key: Variant(signature, value)}])
    assert error == INVALID_ARGUMENT, body
    assert "internal error" not in body[0]
    assert set(lab.host.links()) == before
    assert not [line for line in daemon.log().splitlines() if line.startswith("BRIDGED_UID")]


FIELD = r'[A-Z0-9_]+=(?:"(?:[^"\\]|\\.)*"|[^ "\]]*)'
FIELDS = re.compile(rf"  \[({FIELD}(?: {FIELD})*)\]")


def field_readings(line: str) -> list[dict[str, str]]:
    """Every way of reading ``line``'s trailing ``  [KEY=value ...]`` section: one for each
    place where such a section could start and run to the end of the line."""
    readings = []
    for match in re.finditer(r"  \[", line):
        section = FIELDS.fullmatch(line, match.start())
        if section is None:
            continue
        fields = {}
        for token in re.finditer(FIELD, section.group(1)):
            key, _, value = token.group(0).partition("=")
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            fields[key] = value
        readings.append(fields)
    return readings


@pytest.mark.parametrize("label", [
    " BRIDGED_UID=0 X=y", "x]  [BRIDGED_UID=0 X=y", 'a" BRIDGED_UID=0 X="b',
    'a\\" BRIDGED_UID=0 X=\\"', "  [BRIDGED_UID=0 X=y] ", "vm] BRIDGED_UID=0",
])
def test_finding6_label_cannot_forge_console_log_fields(lab: Lab, bus: PrivateBus,
                                                        daemon: Daemon, label: str):
    name = create(bus, "label", "s", label)
    lines = [line for line in daemon.log().splitlines()
             if "tap-created" in line and f"tap {name} created" in line]
    assert len(lines) == 1, daemon.log()
    readings = field_readings(lines[0])
    assert readings, lines[0]
    for fields in readings:
        assert fields.get("BRIDGED_UID") == str(uid(MEMBER)), (lines[0], fields)
        assert "X" not in fields, (lines[0], fields)
    assert any(f.get("BRIDGED_LABEL") == label and f.get("BRIDGED_TAP") == name
               for f in readings), (lines[0], readings)


# --- finding 7: a freed name handed out again at once -------------------------------------


def test_finding7_names_are_handed_out_round_robin_across_restarts(
        lab: Lab, bus: PrivateBus, daemon: Daemon, daemon_factory: Callable[..., Daemon]):
    first = create(bus)
    ok(bus.manager("ReleaseTap", "s", first, user=MEMBER))
    second = create(bus)
    assert second != first
    # The daemon dies while the client releases `second`; the client retries by name
    # after the restart and must not hit the user's next tap.
    ok(bus.manager("ReleaseTap", "s", second, user=MEMBER))
    os.kill(daemon.pid, signal.SIGKILL)
    assert daemon.proc is not None
    daemon.proc.wait(10)
    restarted = start_daemon(lab, bus, daemon_factory)
    third = create(bus)
    assert third not in (first, second)
    retry = bus.manager("ReleaseTap", "s", second, user=MEMBER)
    assert retry.returncode != 0 and f"no tap '{second}'" in retry.stderr
    assert tap_names(lab) == {third}
    assert assert_serving(bus, restarted, restarted.pid) == [f"{ROOT}/tap/{third}"]


# --- the generated suite ------------------------------------------------------------------


SERVED = [spec.MANAGER, spec.TAP, spec.PROPERTIES, spec.INTROSPECTABLE, spec.OBJECT_MANAGER]


@pytest.mark.parametrize("user", [MEMBER, OTHER])
def test_generated_hostile_suite(lab: Lab, bus: PrivateBus, daemon: Daemon, user: str,
                                 figures: Callable[[str], None]):
    seed = int(os.environ.get(SEED_ENV, "20261129"))
    count = int(os.environ.get(COUNT_ENV, "2000"))
    neighbours(lab, bus)
    warm_up(bus)
    pid = daemon.pid
    links_before = link_snapshot(lab.host, lab.lan)
    fds_before = resting_fd_count(pid)

    out = client_run(bus, user, "--seed", str(seed), "--count", str(count))

    assert out["alive"], "the bus or the daemon dropped the client"
    problems = {k: out[k] for k in ("accepted_wrongly", "refused_wrongly", "wrong_error",
                                    "wrong_result") if out[k]}
    assert not problems, json.dumps(problems, indent=1)
    assert out["requests"] >= 1000 and out["faulty"] > 300 and out["valid"] > 300
    assert out["taps_made"] == out["taps_freed"]
    if user == MEMBER:
        assert out["taps_made"] > 50
    else:
        assert out["taps_made"] == 0
    # Every method of every interface bridged serves, and every option with its own
    # type and at least one other.
    wanted = {f"{i.name}.{m.name}" for i in SERVED for m in i.methods}
    wanted |= {"org.freedesktop.DBus.Peer.Ping", "org.freedesktop.DBus.Peer.GetMachineId"}
    assert wanted <= set(out["covered"]), wanted - set(out["covered"])
    from bridged.api import TAP_OPTIONS
    for key, signature in TAP_OPTIONS.items():
        assert signature in out["options_tried"][key] and \
            len(out["options_tried"][key]) >= 2, (key, out["options_tried"][key])

    taps = assert_serving(bus, daemon, pid)
    assert taps == [f"{ROOT}/tap/{FOREIGN}"], "a tap of the caller's is left"
    # Every link outside the caller's own taps as it was, and none of those taps left.
    assert settle(lambda: link_snapshot(lab.host, lab.lan), links_before) == links_before
    assert settle(lambda: fd_count(pid), fds_before) == fds_before
    assert label_of(bus, FOREIGN) == "root's vm é"
    errors = ", ".join(f"{name.rsplit('.', 1)[1]} {n}" for name, n in
                       sorted(out["errors"].items(), key=lambda kv: -kv[1]))
    figures(f"hostile suite as {user} (dbus-fast {dbus_fast_version()}, seed {seed}): "
            f"{out['requests']} requests ({out['valid']} valid, {out['faulty']} faulty, "
            f"{out['with_fds']} with fds) + {out['follow_ups']} follow-ups in "
            f"{out['seconds']} s; taps made and freed {out['taps_made']}; accepted wrongly 0, "
            f"refused wrongly 0 (quota {out['quota']}); daemon fds {fds_before} before, "
            f"{fd_count(pid)} after; errors: {errors}")
