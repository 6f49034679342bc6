"""Structured log fields reach a real journald and read back with journalctl."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab import REPO, Daemon, Lab, sh, wait_for
from tests.test_bridge import SEED

pytestmark = pytest.mark.root


def journal_entries(scratch: Path) -> list[dict[str, str]]:
    machine_dirs = list((scratch / "log" / "journal").glob("*"))
    if not machine_dirs:
        return []
    out = sh("journalctl", f"--directory={machine_dirs[0]}", "-o", "json", "--no-pager",
             "SYSLOG_IDENTIFIER=bridged", check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_structured_fields_in_journald(lab: Lab, daemon_factory: Callable[..., Daemon],
                                       tmp_path: Path):
    wrap = ("unshare", "--mount", "--propagation", "private",
            str(REPO / "tests" / "journald-wrap.sh"), str(tmp_path))
    daemon = daemon_factory(SEED, wrap=wrap, extra_args=("--log-target", "journal"))
    try:
        daemon.start()
        lab.unplug_uplink()
        lab.plug_uplink()

        def enslaved_twice() -> list[dict[str, str]]:
            found = [e for e in journal_entries(tmp_path)
                     if e.get("BRIDGED_EVENT") == "uplink-enslaved"]
            return found if len(found) == 2 else []

        entries = wait_for(enslaved_twice, what="two uplink-enslaved journal entries")
        entry = entries[-1]
        assert entry["INTERFACE"] == "eth0"
        assert entry["BRIDGED_BRIDGE"] == "br0"
        assert entry["MESSAGE"] == "uplink eth0 enslaved to br0"
        assert entry["PRIORITY"] == "6"
        assert entry["_PID"] == str(daemon.pid)
        assert entry["CODE_FUNC"] == "_adopt_uplink"
        events = {e.get("BRIDGED_EVENT") for e in journal_entries(tmp_path)}
        assert {"bridge-created", "uplink-removed", "uplink-appeared", "ready"} <= events
        removed = [e for e in journal_entries(tmp_path)
                   if e.get("BRIDGED_EVENT") == "uplink-removed"]
        assert removed[0]["PRIORITY"] == "4"
        assert daemon.log() == "", "with --log-target journal nothing goes to stderr"
    finally:
        daemon.stop()
        pid_file = tmp_path / "journald.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
