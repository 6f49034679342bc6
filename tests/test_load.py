"""Many client processes at once: the daemon never leaves the bus, loses no signal and
leaks no tap.

64 clients for a few seconds in CI; more and longer with
``BRIDGED_LOAD_CLIENTS=128 BRIDGED_LOAD_SECONDS=60``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import pytest

from tests.buslab import MEMBER, OTHER, PrivateBus
from tests.lab import Daemon, Lab
from tests.test_bridge import SEED
from tests.test_hostile import (
    assert_serving,
    dbus_fast_version,
    fd_count,
    ok,
    resting_fd_count,
    settle,
    start_daemon,
    tap_names,
    warm_up,
)

pytestmark = pytest.mark.root

CLIENTS = int(os.environ.get("BRIDGED_LOAD_CLIENTS", "64"))
SECONDS = float(os.environ.get("BRIDGED_LOAD_SECONDS", "20"))
# Each client holds at most a tap or two at a time; the quotas are not what is tested.
CONFIG = SEED + "\n[taps]\nmax_per_user = 1000\nmax_total = 1000\n"
# Errors a client may see under load without anything being wrong: none so far.
EXPECTED_ERRORS: set[str] = set()


def test_many_clients_at_once(lab: Lab, bus: PrivateBus,
                              daemon_factory: Callable[..., Daemon],
                              figures: Callable[[str], None]):
    daemon = start_daemon(lab, bus, daemon_factory, CONFIG)
    pid = daemon.pid
    warm_up(bus)
    fds_before = resting_fd_count(pid)
    script = os.path.join(bus.clients, "loadclient.py")
    monitor = subprocess.Popen(bus.user_command(OTHER, sys.executable, script, bus.address,
                                                "monitor"),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert monitor.stdout is not None and monitor.stdin is not None
        assert monitor.stdout.readline().strip() == "ready"
        run = subprocess.run(
            bus.user_command(MEMBER, sys.executable, script, bus.address, "workers",
                             "--clients", str(CLIENTS), "--seconds", str(SECONDS),
                             "--seed", "1"),
            capture_output=True, text=True, timeout=SECONDS + 180)
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout)

        # The same daemon, still serving, with nothing left behind.
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
        assert settle(lambda: tap_names(lab), set()) == set(), "taps left in the kernel"
        assert settle(lambda: ok(bus.manager("ListTaps")), [[]]) == [[]]
        assert_serving(bus, daemon, pid)
        assert settle(lambda: fd_count(pid), fds_before) == fds_before
        monitor.stdin.write("stop\n")
        monitor.stdin.flush()
        seen: dict[str, str] = json.loads(monitor.stdout.readline())
    finally:
        monitor.kill()
        monitor.wait()

    assert out["ready"] == CLIENTS and out["failed"] == 0, run.stderr
    assert out["leftover"] == []
    unexpected = {name: n for name, n in out["errors"].items() if name not in EXPECTED_ERRORS}
    assert not unexpected, unexpected
    # No signal lost: each name's TapAdded/TapRemoved alternate, one of each for every
    # create and every free the clients saw succeed.
    assert {name: seq for name, seq in seen.items() if not re.fullmatch("(AR)+", seq)} == {}
    assert Counter({name: seq.count("A") for name, seq in seen.items()}) == \
        Counter(out["added"])
    assert Counter({name: seq.count("R") for name, seq in seen.items()}) == \
        Counter(out["removed"])
    creates = sum(out["added"].values())
    assert creates > CLIENTS, "the clients hardly got a tap"
    errors = ", ".join(f"{k} {v}" for k, v in out["errors"].items()) or "none"
    by_method = ", ".join(f"{member} {v['p50_ms']}/{v['p99_ms']}"
                          for member, v in out["latency_by_method"].items())
    figures(f"load (dbus-fast {dbus_fast_version()}): {CLIENTS} clients, {out['seconds']} s "
            f"(connected in {out['connect_s']} s): {out['calls']} calls "
            f"({out['calls'] / out['seconds']:.0f}/s: {dict(out['by_method'])}), "
            f"{creates} taps made and freed, signals {sum(len(s) for s in seen.values())} "
            f"all seen in order; errors: {errors}; latency p50 {out['p50_ms']} ms, "
            f"p99 {out['p99_ms']} ms, max {out['max_ms']} ms (p50/p99 by method: {by_method}); "
            f"the same daemon still serving, "
            f"no tap left, daemon fds {fds_before} before and after")
