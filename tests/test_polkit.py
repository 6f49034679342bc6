"""auth.polkit = true: a real polkitd on the private bus decides for users outside
taps.allow_groups, through the action file we ship."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.buslab import MEMBER, OTHER, PrivateBus, ensure_users
from tests.lab import REPO, Daemon, Lab
from tests.test_bridge import SEED

POLKITD = "/usr/lib/polkit-1/polkitd"
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not os.path.exists(POLKITD), reason="polkitd not installed"),
]
# What Debian's polkitd package installs as its bus policy.
POLKIT_BUS_POLICY = """<busconfig>
  <policy user="polkitd"><allow own="org.freedesktop.PolicyKit1"/></policy>
  <policy context="default"><allow send_destination="org.freedesktop.PolicyKit1"/></policy>
</busconfig>
"""
# The site's rule: bt-other may use taps, through polkit only.
RULE = f"""polkit.addRule(function(action, subject) {{
    if (action.id == "org.bridged.Bridged1.use-tap" && subject.user == "{OTHER}") {{
        return polkit.Result.YES;
    }}
}});
"""
# Only polkit can let anyone but root in: no group is allowed.
CONFIG = SEED + "\n[taps]\nallow_groups = []\n[auth]\npolkit = true\n"


@pytest.fixture
def polkit_bus(tmp_path) -> Iterator[PrivateBus]:  # type: ignore[no-untyped-def]
    ensure_users()
    bus = PrivateBus({"org.freedesktop.PolicyKit1.conf": POLKIT_BUS_POLICY})
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "50-bridged-test.rules").write_text(RULE)
    # polkitd in a mount namespace of its own: our action file and rule, nothing else.
    script = (
        "set -e\n"
        'mount -t tmpfs -o mode=755 tmpfs /usr/share/polkit-1/actions\n'
        f'cp {REPO}/dbus/org.bridged.Bridged1.policy /usr/share/polkit-1/actions/\n'
        'mount -t tmpfs -o mode=700,uid=$(id -u polkitd) tmpfs /etc/polkit-1/rules.d\n'
        f'cp {tmp_path}/rules/*.rules /etc/polkit-1/rules.d/\n'
        'chown polkitd /etc/polkit-1/rules.d/*.rules\n'
        'mount -t tmpfs -o mode=700,uid=$(id -u polkitd) tmpfs /usr/share/polkit-1/rules.d\n'
        f'exec {POLKITD} --no-debug\n')
    polkitd = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while bus.busctl("status", "org.freedesktop.PolicyKit1").returncode != 0:
            assert polkitd.poll() is None and time.monotonic() < deadline, "polkitd did not start"
            time.sleep(0.05)
        yield bus
    finally:
        polkitd.terminate()
        polkitd.wait(10)
        bus.close()


def create(bus: PrivateBus, user: str) -> subprocess.CompletedProcess[str]:
    return bus.manager("CreateTap", "a{sv}", "1", "linger", "b", "true", user=user)


def test_polkit_decides_for_users_outside_the_groups(
        lab: Lab, polkit_bus: PrivateBus, daemon_factory: Callable[..., Daemon]):
    daemon_factory(CONFIG, extra_args=("--bus-address", polkit_bus.address)).start()
    allowed = create(polkit_bus, OTHER)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["data"][1] == "tap0"
    assert lab.host.link("tap0")["master"] == "br0"
    # bt-member is in group bridged, but no group is allowed and polkit says no.
    refused = create(polkit_bus, MEMBER)
    assert refused.returncode != 0 and "polkit did not authorize" in refused.stderr
    assert set(n for n in lab.host.links() if n.startswith("tap")) == {"tap0"}


def test_polkit_off_means_groups_only(lab: Lab, polkit_bus: PrivateBus,
                                      daemon_factory: Callable[..., Daemon]):
    config = CONFIG.replace("polkit = true", "polkit = false")
    daemon_factory(config, extra_args=("--bus-address", polkit_bus.address)).start()
    refused = create(polkit_bus, OTHER)
    assert refused.returncode != 0 and "may not create taps" in refused.stderr
    assert "polkit" not in refused.stderr  # not asked at all
    assert not any(n.startswith("tap") for n in lab.host.links())
