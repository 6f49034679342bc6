"""Config parsing: pure logic, no root."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from bridged.config import Config, UplinkPattern, load, parse
from bridged.errors import ConfigError
from tests.lab import REPO

GOOD = """
[bridge]
name = "br0"
uplinks = ["eth0", "en*", "mac:AA:bb:cc:dd:ee:01"]
stp = false
forward_delay = 0
mac = "uplink"
mtu = 1500

[ip]
mode = "static"
addresses = ["10.0.0.2/8", "2001:db8::2/64"]
gateway = "10.0.0.1"
dns = ["10.0.0.1"]

[taps]
prefix = "tap"
allow_groups = ["bridged", "kvm"]
max_per_user = 16
max_total = 1000

[auth]
polkit = false
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bridged.toml"
    path.write_text(text)
    return str(path)


def test_full_example_parses(tmp_path: Path):
    config = load(write(tmp_path, GOOD))
    assert config.bridge.name == "br0"
    assert config.bridge.uplinks[2] == UplinkPattern("mac:aa:bb:cc:dd:ee:01")
    assert config.ip.addresses[1] == ipaddress.ip_interface("2001:db8::2/64")
    assert config.ip.gateways == (ipaddress.ip_address("10.0.0.1"),)
    assert config.taps.allow_groups == ("bridged", "kvm")
    with pytest.raises(AttributeError):
        config.bridge.name = "x"  # type: ignore[misc]


def test_empty_file_is_the_harmless_default(tmp_path: Path):
    config = load(write(tmp_path, ""))
    assert config.bridge.uplinks == ()
    assert config.ip.mode == "none"
    assert config.taps == Config().taps


def test_uplink_patterns_match():
    assert UplinkPattern("en*").matches("enp1s0", None)
    assert not UplinkPattern("en*").matches("eth0", None)
    assert UplinkPattern("mac:aa:bb:cc:dd:ee:01").matches("x", "aa:bb:cc:dd:ee:01")
    assert UplinkPattern("mac:aa:bb:cc:dd:ee:01").matches("x", "02:00:00:00:00:01",
                                                          "aa:bb:cc:dd:ee:01")


@pytest.mark.parametrize(("text", "key", "why"), [
    ("[bridge\n", "", "not valid TOML"),
    ("[bridge]\nbogus = 1\n", "bridge.bogus", "unknown key"),
    ("[nope]\n", "nope", "unknown section"),
    ("bridge = 1\n", "bridge", "expected a table"),
    ('[bridge]\nstp = "yes"\n', "bridge.stp", "expected true or false"),
    ('[bridge]\nforward_delay = 99\n', "bridge.forward_delay", "out of range"),
    ('[bridge]\nname = "this-name-is-too-long"\n', "bridge.name", "not a valid interface name"),
    ('[bridge]\nname = "br/0"\n', "bridge.name", "not a valid interface name"),
    ('[bridge]\nuplinks = "eth0"\n', "bridge.uplinks", "expected a list"),
    ('[bridge]\nuplinks = ["br0"]\n', "bridge.uplinks", "matches the bridge"),
    ('[bridge]\nuplinks = ["*"]\n', "bridge.uplinks", "matches the bridge"),
    ('[bridge]\nuplinks = ["t*"]\n', "bridge.uplinks", "bridged's own taps"),
    ('[bridge]\nuplinks = ["mac:zz"]\n', "bridge.uplinks", "not a MAC address"),
    ('[bridge]\nmac = "01:00:5e:00:00:01"\n', "bridge.mac", "multicast"),
    ('[bridge]\nstp = true\n', "bridge.forward_delay", "2 to 30 seconds"),
    ('[ip]\nmode = "dhcp"\n', "ip.mode", "not one of"),
    ('[ip]\nmode = "static"\n', "ip.addresses", "at least one address"),
    ('[ip]\nmode = "static"\naddresses = ["10.0.0.300/8"]\n', "ip.addresses",
     "not an IP address"),
    ('[ip]\nmode = "static"\naddresses = ["10.0.0.2"]\n', "ip.addresses",
     "needs a prefix length"),
    ('[ip]\nmode = "static"\naddresses = ["10.0.0.2/8"]\ngateway = "192.0.2.1"\n',
     "ip.gateway", "not inside any of ip.addresses"),
    ('[ip]\nmode = "migrate"\naddresses = ["10.0.0.2/8"]\n', "ip.addresses",
     'only used with mode = "static"'),
    ('[taps]\nprefix = "0tap"\n', "taps.prefix", "not a usable tap prefix"),
    ('[taps]\nmax_total = 5000\n', "taps.max_total", "out of range"),
    ('[taps]\nmax_per_user = 20\nmax_total = 10\n', "taps.max_per_user", "more than"),
    ('[taps]\nmax_total = true\n', "taps.max_total", "expected an integer"),
    ('[auth]\npolkit = 1\n', "auth.polkit", "expected true or false"),
])
def test_bad_files_name_the_key(tmp_path: Path, text: str, key: str, why: str):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == key
    assert why in info.value.why
    assert str(info.value).startswith(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file"):
        load(str(tmp_path / "absent.toml"))


def test_parse_accepts_gateway_list():
    config = parse({"ip": {"mode": "static", "addresses": ["10.0.0.2/8", "2001:db8::2/64"],
                           "gateway": ["10.0.0.1", "fe80::1"]}})
    assert len(config.ip.gateways) == 2


def run_bridged(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridged", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=30)


def test_cli_bad_config_exits_78_with_one_line(tmp_path: Path):
    result = run_bridged("--config", write(tmp_path, '[bridge]\nstp = "no"\n'))
    assert result.returncode == 78
    assert result.stderr.strip().count("\n") == 0
    assert "bridge.stp: expected true or false" in result.stderr


def test_cli_check_config(tmp_path: Path):
    result = run_bridged("--check-config", "--config", write(tmp_path, GOOD))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_cli_help_and_version():
    assert "--config" in run_bridged("--help").stdout
    assert run_bridged("--version").stdout.startswith("bridged ")


def test_udev_rules_name_bridge_uplinks_and_taps(tmp_path):
    from bridged import udev

    path = write(tmp_path, '[bridge]\nname = "vmbr"\nuplinks = ["en*", "mac:02:00:00:00:00:01"]\n'
                           '[taps]\nprefix = "vm"\n')
    rules = udev.render(load(path)).splitlines()
    assert 'KERNEL=="vmbr", GOTO="bridged_ours"' in rules
    assert 'KERNEL=="en*", GOTO="bridged_ours"' in rules
    assert 'ATTR{address}=="02:00:00:00:00:01", GOTO="bridged_ours"' in rules
    assert 'KERNEL=="vm*", ATTR{tun_flags}=="?*", GOTO="bridged_ours"' in rules
    assert 'ENV{ID_NET_MANAGED_BY}="org.bridged.Bridged1", ENV{NM_UNMANAGED}="1"' in rules
    target = tmp_path / "rules.d" / "90-bridged.rules"
    udev.write(str(target), load(path))
    assert target.read_text().splitlines() == rules
