"""Config parsing: pure logic, no root."""

from __future__ import annotations

import concurrent.futures
import fnmatch
import ipaddress
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from bridged import config as config_module
from bridged.config import (
    MAX_FILE_SIZE,
    Config,
    UplinkPattern,
    VxlanConfig,
    _glob_example,
    check_reload,
    load,
    parse,
)
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

# Every key the file knows, the new ones included.
FULL = """
[bridge]
name = "br0"
uplinks = ["eth0"]
mac = "uplink"
mtu = 1450
adopt = true

[ip]
mode = "static"
addresses = ["198.51.100.2/24", "2001:db8::2/64"]
gateway = ["198.51.100.1", "fe80::1"]
dns = ["198.51.100.1"]
probe_timeout = 2.5

[taps]
prefix = "tap"
guard = false

[vxlan]
vni = 4242
local = "192.0.2.10"
peers = ["192.0.2.11", "192.0.2.12"]
port = 4790
"""


def write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "bridged.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def refused(tmp_path: Path, text: str | bytes) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "\n" not in str(info.value)
    return info.value


def load_in_thread(path: str, seconds: float = 10) -> BaseException | Config:
    """load() as the daemon runs it (in a worker thread), failing the test if it does
    not come back within ``seconds``."""
    result: list[BaseException | Config] = []

    def run() -> None:
        try:
            result.append(load(path))
        except BaseException as e:  # handed to the test to judge
            result.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        # Unblock an open() waiting for a writer, so the thread can end.
        with open(path, "wb"):
            pass
        pytest.fail(f"load({path!r}) did not return within {seconds} s")
    return result[0]


# --- the good files -------------------------------------------------------------------


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
    assert config.bridge.adopt is False
    assert config.ip.probe_timeout == 10.0
    assert config.taps.guard is True
    assert config.vxlan is None


def test_new_keys_parse(tmp_path: Path):
    config = load(write(tmp_path, FULL))
    assert config.bridge.adopt is True
    assert config.ip.probe_timeout == 2.5
    assert config.taps.guard is False
    assert config.vxlan == VxlanConfig(
        vni=4242, local=ipaddress.ip_address("192.0.2.10"),
        peers=(ipaddress.ip_address("192.0.2.11"), ipaddress.ip_address("192.0.2.12")),
        control=None, port=4790)
    assert config.vxlan.device_name == "vx4242"
    assert config.vxlan.overhead == 50
    assert not config.vxlan.evpn
    with pytest.raises(AttributeError):
        config.vxlan.vni = 1  # type: ignore[misc]


def test_vxlan_defaults_and_evpn(tmp_path: Path):
    config = load(write(tmp_path, '[vxlan]\nvni = 16777215\nlocal = "2001:db8::10"\n'
                                  'control = "evpn"\n'))
    assert config.vxlan is not None
    assert config.vxlan.port == 4789
    assert config.vxlan.peers == ()
    assert config.vxlan.evpn
    assert config.vxlan.overhead == 70
    assert config.vxlan.device_name == "vx16777215"


@pytest.mark.parametrize("text", [
    '[ip]\nmode = "dhcp"\n',
    '[ip]\nmode = "dhcp"\nprobe_timeout = 0\n',
    '[ip]\nmode = "migrate"\nprobe_timeout = 300\n[bridge]\nuplinks = ["eth0"]\n',
    '[ip]\nmode = "static"\naddresses = ["198.51.100.0/31"]\n',
    '[ip]\nmode = "static"\naddresses = ["198.51.100.255/32"]\n',
    '[ip]\nmode = "static"\naddresses = ["198.51.100.2/24", "203.0.113.2/24"]\n',
    '[ip]\nmode = "static"\naddresses = ["198.51.100.2/24", "2001:db8::2/64"]\n'
    'gateway = "fe80::1"\n',
    '[bridge]\nmtu = 1200\n[ip]\nmode = "static"\naddresses = ["198.51.100.2/24"]\n',
    '[bridge]\nmtu = 1280\n[ip]\nmode = "static"\naddresses = ["2001:db8::2/64"]\n',
    # Globs that cannot produce a tap name (taps are "tap" + [A-Za-z0-9_.-]).
    '[bridge]\nuplinks = ["en*", "eth[0-9]", "wlan?", "t", "ta", "ta[!p]*", "e*0"]\n',
    '[bridge]\nuplinks = ["eth0"]\n[taps]\nprefix = "vm"\n',
    '[bridge]\nuplinks = ["mac:02:00:00:00:00:01"]\n',
    '[taps]\nmax_total = 1023\n',
    '[taps]\nmax_total = 1022\n[bridge]\nuplinks = ["eth0"]\n',
    '[bridge]\nmtu = 65465\n[vxlan]\nvni = 7\nlocal = "2001:db8::1"\n',
    '[bridge]\nmtu = 65485\n[vxlan]\nvni = 7\nlocal = "192.0.2.1"\n',
    '[vxlan]\nvni = 7\nlocal = "192.0.2.1"\n[taps]\nprefix = "tap"\n[bridge]\nname = "vx8"\n',
    # Dots in strings and comments are not keys.
    "# " + "." * 500 + "\n[ip]\nmode = \"static\"\naddresses = [\"198.51.100.2/24\"]\n"
    "dns = [" + ", ".join(f'"198.51.100.{i}"' for i in range(10, 60)) + "]\n",
])
def test_good_files(tmp_path: Path, text: str):
    load(write(tmp_path, text))


def test_byte_order_mark_is_accepted(tmp_path: Path):
    config = load(write(tmp_path, b'\xef\xbb\xbf[bridge]\nname = "br1"\n'))
    assert config.bridge.name == "br1"


def test_symlink_to_a_file_is_followed(tmp_path: Path):
    target = tmp_path / "real.toml"
    target.write_text('[bridge]\nname = "br7"\n')
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    assert load(str(link)).bridge.name == "br7"


def test_file_at_the_size_limit_loads(tmp_path: Path):
    text = '[bridge]\nname = "br1"\n'
    text += "#" * (MAX_FILE_SIZE - len(text) - 1) + "\n"
    assert len(text.encode()) == MAX_FILE_SIZE
    assert load(write(tmp_path, text)).bridge.name == "br1"


def test_uplink_patterns_match():
    assert UplinkPattern("en*").matches("enp1s0", None)
    assert not UplinkPattern("en*").matches("eth0", None)
    assert UplinkPattern("mac:aa:bb:cc:dd:ee:01").matches("x", "aa:bb:cc:dd:ee:01")
    assert UplinkPattern("mac:aa:bb:cc:dd:ee:01").matches("x", "02:00:00:00:00:01",
                                                          "aa:bb:cc:dd:ee:01")


def test_parse_accepts_gateway_list():
    config = parse({"ip": {"mode": "static", "addresses": ["10.0.0.2/8", "2001:db8::2/64"],
                           "gateway": ["10.0.0.1", "fe80::1"]}})
    assert len(config.ip.gateways) == 2


# --- one line naming the key for every bad value ----------------------------------------

V4 = '[ip]\nmode = "static"\naddresses = ["198.51.100.2/24"]\n'
V6 = '[ip]\nmode = "static"\naddresses = ["2001:db8::2/64"]\n'
VX = '[vxlan]\nvni = 42\nlocal = "192.0.2.10"\n'


@pytest.mark.parametrize(("text", "key", "why"), [
    ("[bridge\n", "", "not valid TOML"),
    ("[bridge]\nbogus = 1\n", "bridge.bogus", "unknown key"),
    ("[nope]\n", "nope", "unknown section"),
    ("bridge = 1\n", "bridge", "expected a table"),
    ("[[bridge]]\n", "bridge", "expected a table"),
    ('[bridge]\nstp = "yes"\n', "bridge.stp", "expected true or false"),
    ('[bridge]\nforward_delay = 99\n', "bridge.forward_delay", "out of range"),
    ('[bridge]\nname = "this-name-is-too-long"\n', "bridge.name", "not a valid interface name"),
    ('[bridge]\nname = "br/0"\n', "bridge.name", "not a valid interface name"),
    ('[bridge]\nname = "all"\n', "bridge.name", "reserved by the kernel"),
    ('[bridge]\nname = "default"\n', "bridge.name", "reserved by the kernel"),
    ('[bridge]\nname = "lo"\n', "bridge.name", "loopback"),
    ('[bridge]\nadopt = "yes"\n', "bridge.adopt", "expected true or false"),
    ('[bridge]\nuplinks = "eth0"\n', "bridge.uplinks", "expected a list"),
    ('[bridge]\nuplinks = ["br0"]\n', "bridge.uplinks", "matches the bridge"),
    ('[bridge]\nuplinks = ["*"]\n', "bridge.uplinks", "matches the bridge"),
    ('[bridge]\nuplinks = ["t*"]\n', "bridge.uplinks", "bridged's own taps"),
    ('[bridge]\nuplinks = ["mac:zz"]\n', "bridge.uplinks", "not a MAC address"),
    ('[bridge]\nuplinks = ["mac:00:00:00:00:00:00"]\n', "bridge.uplinks", "all-zeros"),
    ('[bridge]\nuplinks = ["eth0", "eth1", "eth0"]\n', "bridge.uplinks", "'eth0' is listed twice"),
    ('[bridge]\nuplinks = ["mac:02:00:00:00:00:01", "mac:02:00:00:00:00:01"]\n',
     "bridge.uplinks", "listed twice"),
    ('[bridge]\nuplinks = ["lo"]\n', "bridge.uplinks", "'lo' is the loopback device"),
    ('[bridge]\nuplinks = ["l?"]\n', "bridge.uplinks", "matches the loopback device"),
    ('[bridge]\nuplinks = ["all"]\n', "bridge.uplinks", "reserved by the kernel"),
    # Uplinks that could take a tap: today's "tap1" and friends, computed properly.
    ('[bridge]\nuplinks = ["tap1"]\n', "bridge.uplinks", "(e.g. 'tap1'"),
    ('[bridge]\nuplinks = ["tap"]\n', "bridge.uplinks", "(e.g. 'tap'"),
    ('[bridge]\nuplinks = ["ta*"]\n', "bridge.uplinks", "(e.g. 'tap'"),
    ('[bridge]\nuplinks = ["tap-vm?"]\n', "bridge.uplinks", "(e.g. 'tap-vm0'"),
    ('[bridge]\nuplinks = ["[st]ap[!0-9]"]\n', "bridge.uplinks", "(e.g. 'tapa'"),
    ('[bridge]\nuplinks = ["*x"]\n', "bridge.uplinks", "(e.g. 'tapx'"),
    ('[bridge]\nuplinks = ["t*p*9"]\n', "bridge.uplinks", "(e.g. 'tap9'"),
    ('[bridge]\nuplinks = ["tap????????????"]\n', "bridge.uplinks", "(e.g. 'tap000000000000'"),
    ('[bridge]\nuplinks = ["eth0"]\n[taps]\nprefix = "eth"\n', "bridge.uplinks",
     "(e.g. 'eth0'"),
    ('[bridge]\nuplinks = ["vm[0-9]*"]\n[taps]\nprefix = "vm"\n', "bridge.uplinks",
     "(e.g. 'vm0'"),
    ('[bridge]\nmac = "01:00:5e:00:00:01"\n', "bridge.mac", "multicast"),
    ('[bridge]\nmac = "00:00:00:00:00:00"\n', "bridge.mac", "all-zeros"),
    ('[bridge]\nstp = true\n', "bridge.forward_delay", "2 to 30 seconds"),
    ('[bridge]\nmtu = 67\n', "bridge.mtu", "out of range"),
    ('[bridge]\nmtu = 65536\n', "bridge.mtu", "out of range"),
    ('[bridge]\nmtu = 68\n' + V6, "bridge.mtu", "IPv6 minimum MTU"),
    ('[bridge]\nmtu = 1279\n' + V6, "bridge.mtu", "at least 1280"),
    ('[ip]\nmode = "bootp"\n', "ip.mode", "not one of: static, migrate, dhcp, none"),
    ('[ip]\nmode = "static"\n', "ip.addresses", "at least one address"),
    ('[ip]\nmode = "static"\naddresses = ["10.0.0.300/8"]\n', "ip.addresses",
     "not an IP address"),
    ('[ip]\nmode = "static"\naddresses = ["10.0.0.2"]\n', "ip.addresses",
     "needs a prefix length"),
    ('[ip]\nmode = "static"\naddresses = ["fe80::2%eth0/64"]\n', "ip.addresses",
     "has a zone"),
    ('[ip]\nmode = "static"\naddresses = ["10.0.0.2/8"]\ngateway = "192.0.2.1"\n',
     "ip.gateway", "not inside any of ip.addresses"),
    ('[ip]\nmode = "migrate"\naddresses = ["10.0.0.2/8"]\n', "ip.addresses",
     'only used with mode = "static"'),
    ('[ip]\nmode = "none"\ndns = ["198.51.100.1"]\n', "ip.dns",
     'only used with mode = "static"'),
    ('[ip]\nmode = "migrate"\n', "ip.mode", "bridge.uplinks is empty"),
    ('[ip]\nmode = "dhcp"\naddresses = ["198.51.100.2/24"]\n', "ip.addresses",
     'mode = "dhcp" takes the address'),
    ('[ip]\nmode = "dhcp"\ngateway = "198.51.100.1"\n', "ip.gateway",
     "from the LAN's DHCP server"),
    ('[ip]\nmode = "dhcp"\ndns = ["198.51.100.1"]\n', "ip.dns", 'or use mode = "static"'),
    ('[ip]\nprobe_timeout = 301\n', "ip.probe_timeout", "between 0 and 300"),
    ('[ip]\nprobe_timeout = -1\n', "ip.probe_timeout", "between 0 and 300"),
    ('[ip]\nprobe_timeout = nan\n', "ip.probe_timeout", "out of range"),
    ('[ip]\nprobe_timeout = inf\n', "ip.probe_timeout", "out of range"),
    ('[ip]\nprobe_timeout = "10"\n', "ip.probe_timeout", "expected a number of seconds"),
    ('[ip]\nprobe_timeout = true\n', "ip.probe_timeout", "expected a number of seconds"),
    # Addresses.
    ('[ip]\nmode = "static"\naddresses = ["198.51.100.2/24", "198.51.100.2/25"]\n',
     "ip.addresses", "198.51.100.2 is listed twice"),
    ('[ip]\nmode = "static"\naddresses = ["198.51.100.2/24", "198.51.100.130/25"]\n',
     "ip.addresses", "overlapping subnets (198.51.100.0/24 and 198.51.100.128/25)"),
    ('[ip]\nmode = "static"\naddresses = ["2001:db8::2/64", "2001:db8:0:0:1::2/48"]\n',
     "ip.addresses", "overlapping subnets (2001:db8::/64 and 2001:db8::/48)"),
    ('[ip]\nmode = "static"\naddresses = ["198.51.100.0/24"]\n', "ip.addresses",
     "is the network address of 198.51.100.0/24"),
    ('[ip]\nmode = "static"\naddresses = ["198.51.100.255/24"]\n', "ip.addresses",
     "is the broadcast address of 198.51.100.0/24"),
    ('[ip]\nmode = "static"\naddresses = ["224.0.0.5/24"]\n', "ip.addresses", "multicast"),
    ('[ip]\nmode = "static"\naddresses = ["127.0.0.2/8"]\n', "ip.addresses", "loopback"),
    ('[ip]\nmode = "static"\naddresses = ["::1/128"]\n', "ip.addresses", "loopback"),
    ('[ip]\nmode = "static"\naddresses = ["0.0.0.0/0"]\n', "ip.addresses", "unspecified"),
    ('[ip]\nmode = "static"\naddresses = ["ff02::1/64"]\n', "ip.addresses", "multicast"),
    ('[ip]\nmode = "static"\naddresses = ["255.255.255.255/32"]\n', "ip.addresses",
     "limited broadcast"),
    # Gateways.
    (V4 + 'gateway = "fe80::1"\n', "ip.gateway",
     "fe80::1 is an IPv6 gateway but ip.addresses has no IPv6 address"),
    (V6 + 'gateway = "198.51.100.1"\n', "ip.gateway", "has no IPv4 address"),
    (V4 + 'gateway = "198.51.100.2"\n', "ip.gateway", "one of the host's own ip.addresses"),
    (V4 + 'gateway = "198.51.100.0"\n', "ip.gateway", "network address of 198.51.100.0/24"),
    (V4 + 'gateway = "198.51.100.255"\n', "ip.gateway",
     "broadcast address of 198.51.100.0/24"),
    (V4 + 'gateway = "224.0.0.1"\n', "ip.gateway", "multicast"),
    (V4 + 'gateway = "127.0.0.1"\n', "ip.gateway", "loopback"),
    (V4 + 'gateway = "0.0.0.0"\n', "ip.gateway", "unspecified"),
    (V6 + 'gateway = "::"\n', "ip.gateway", "unspecified"),
    (V6 + 'gateway = "fe80::1%eth0"\n', "ip.gateway", "has a zone"),
    (V4 + 'gateway = "169.254.0.1"\n', "ip.gateway", "not inside any of ip.addresses"),
    (V4 + 'gateway = ["198.51.100.1", "198.51.100.3"]\n', "ip.gateway",
     "at most one gateway per address family"),
    (V4 + 'dns = ["0.0.0.0"]\n', "ip.dns", "unspecified address"),
    (V4 + 'dns = ["ff02::fb"]\n', "ip.dns", "multicast address"),
    # Taps.
    ('[taps]\nprefix = "0tap"\n', "taps.prefix", "not a usable tap prefix"),
    ('[taps]\nprefix = "br"\n', "taps.prefix", "collide with the bridge 'br0'"),
    ('[taps]\nmax_total = 5000\n', "taps.max_total", "out of range"),
    ('[taps]\nmax_per_user = 20\nmax_total = 10\n', "taps.max_per_user", "more than"),
    ('[taps]\nmax_total = true\n', "taps.max_total", "expected an integer"),
    ('[taps]\nmax_total = 1023\n[bridge]\nuplinks = ["eth0"]\n', "taps.max_total",
     "lower it to 1022"),
    ('[taps]\nmax_total = 1022\n[bridge]\nuplinks = ["eth0"]\n' + VX, "taps.max_total",
     "1 uplink(s) and the VXLAN port exceed the 1023 ports"),
    ('[taps]\nguard = 1\n', "taps.guard", "expected true or false"),
    ('[auth]\npolkit = 1\n', "auth.polkit", "expected true or false"),
    # VXLAN.
    ("[vxlan]\n", "vxlan.vni", "required in [vxlan]"),
    ('[vxlan]\nvni = 42\n', "vxlan.local", "required in [vxlan]"),
    ('[vxlan]\nvni = 0\nlocal = "192.0.2.10"\n', "vxlan.vni", "between 1 and 16777215"),
    ('[vxlan]\nvni = 16777216\nlocal = "192.0.2.10"\n', "vxlan.vni", "between 1 and 16777215"),
    ('[vxlan]\nvni = "42"\nlocal = "192.0.2.10"\n', "vxlan.vni", "expected an integer"),
    ('[vxlan]\nvni = 42\nlocal = "192.0.2.10/24"\n', "vxlan.local", "not an IP address"),
    ('[vxlan]\nvni = 42\nlocal = "239.1.1.1"\n', "vxlan.local", "multicast"),
    ('[vxlan]\nvni = 42\nlocal = "127.0.0.1"\n', "vxlan.local", "loopback"),
    ('[vxlan]\nvni = 42\nlocal = "0.0.0.0"\n', "vxlan.local", "unspecified"),
    ('[vxlan]\nvni = 42\nlocal = "fe80::1"\n', "vxlan.local", "IPv6 link-local"),
    (VX + 'peers = ["2001:db8::11"]\n', "vxlan.peers",
     "2001:db8::11 is IPv6 but vxlan.local (192.0.2.10) is IPv4"),
    (VX + 'peers = ["192.0.2.11", "192.0.2.10"]\n', "vxlan.peers",
     "192.0.2.10 is vxlan.local, this host"),
    (VX + 'peers = ["192.0.2.11", "192.0.2.11"]\n', "vxlan.peers", "listed twice"),
    (VX + 'peers = ["192.0.2.11", "224.0.0.1"]\n', "vxlan.peers", "item 2: 224.0.0.1 is a "
     "multicast address"),
    (VX + 'peers = "192.0.2.11"\n', "vxlan.peers", "expected a list"),
    (VX + 'control = "bgp"\n', "vxlan.control", "not one of: evpn"),
    (VX + 'control = "evpn"\npeers = ["192.0.2.11"]\n', "vxlan.peers",
     'with control = "evpn"'),
    (VX + "port = 0\n", "vxlan.port", "between 1 and 65535"),
    (VX + "port = 65536\n", "vxlan.port", "between 1 and 65535"),
    (VX + "bogus = 1\n", "vxlan.bogus", "unknown key"),
    (VX + '[bridge]\nname = "vx42"\n', "bridge.name", "VXLAN port for vni 42"),
    (VX + '[bridge]\nuplinks = ["vx*"]\n', "bridge.uplinks", "matches 'vx42', the VXLAN port"),
    (VX + '[bridge]\nuplinks = ["v?42"]\n', "bridge.uplinks", "matches 'vx42'"),
    (VX + '[taps]\nprefix = "vx"\n', "taps.prefix", "would match 'vx42', the VXLAN port"),
    (VX + '[taps]\nprefix = "v"\n', "taps.prefix", "would match 'vx42'"),
    (VX + "[bridge]\nmtu = 65486\n", "bridge.mtu", "at most 65485"),
    ('[vxlan]\nvni = 42\nlocal = "2001:db8::10"\n[bridge]\nmtu = 65466\n', "bridge.mtu",
     "70 bytes of VXLAN over IPv6"),
])
def test_bad_files_name_the_key(tmp_path: Path, text: str, key: str, why: str):
    error = refused(tmp_path, text)
    assert error.key == key
    assert why in error.why
    assert str(error).startswith(error.path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file"):
        load(str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="embedded null byte"):
        load(str(tmp_path / "a\0b"))
    with pytest.raises(ConfigError, match="not a directory"):
        load(write(tmp_path, "") + "/x")


def test_glob_example_agrees_with_fnmatch():
    # With the whole name as prefix and no room to grow, _glob_example answers exactly
    # "does fnmatch match this name": the glob tokenizer must read patterns as fnmatch.
    rng = random.Random(11)
    atoms = ["a", "b", "0", "-", ".", "*", "?", "[ab]", "[!a]", "[a-c]", "[", "]", "!",
             "[]a]", "[!]]", "[-a]", "[0-]", "[!"]
    for _ in range(4000):
        pattern = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 5)))
        name = "".join(rng.choice("ab0-.c") for _ in range(rng.randint(1, 6)))
        expected = name if fnmatch.fnmatchcase(name, pattern) else None
        assert _glob_example(pattern, name, len(name)) == expected, (pattern, name)


def test_glob_example_is_sound_and_complete():
    # A prefix of 13 leaves two characters: few enough to try every name by brute force.
    rng = random.Random(12)
    alphabet = config_module._NAME_CHARS
    prefix = "abcdefghijklm"
    atoms = ["a", "m", "z", "0", "*", "?", "[a-m]", "[!a-l]", "[0-9]", "[.]", "-", "[xz]"]
    for _ in range(150):
        pattern = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 4)))
        pattern = rng.choice(["", "*", "a*", "abcdefghijklm", "?bc*"]) + pattern
        found = _glob_example(pattern, prefix)
        names = [prefix] + [prefix + a for a in alphabet]
        names += [prefix + a + b for a in alphabet for b in alphabet]
        matching = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if found is None:
            assert matching == [], (pattern, matching[:3])
        else:
            assert found in matching, (pattern, found)
            assert len(found) == min(len(n) for n in matching)


# --- the file itself: only a regular file, bounded, never another exception -------------


def test_fifo_is_refused_promptly(tmp_path: Path):
    path = tmp_path / "fifo.toml"
    os.mkfifo(path)
    result = load_in_thread(str(path))
    assert isinstance(result, ConfigError), result
    assert result.why == "is a FIFO (named pipe), not a regular file"


def test_fifo_that_slips_past_the_first_check_is_refused_after_open(tmp_path: Path,
                                                                    monkeypatch):
    # As if the path became a FIFO between the stat and the open: the open must not wait
    # for a writer and fstat must refuse it.
    monkeypatch.setattr(config_module, "_refuse_special", lambda path: None)
    path = tmp_path / "fifo.toml"
    os.mkfifo(path)
    result = load_in_thread(str(path))
    assert isinstance(result, ConfigError), result
    assert "FIFO" in result.why


def test_dev_zero_is_refused(monkeypatch):
    with pytest.raises(ConfigError, match="is a character device, not a regular file"):
        load("/dev/zero")
    monkeypatch.setattr(config_module, "_refuse_special", lambda path: None)
    with pytest.raises(ConfigError, match="character device"):
        load("/dev/zero")


def test_symlink_to_dev_zero_is_refused(tmp_path: Path):
    link = tmp_path / "bridged.toml"
    link.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="character device"):
        load(str(link))


def test_directory_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path))
    assert info.value.why == "is a directory, not a regular file"


def test_socket_is_refused(tmp_path: Path):
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        with pytest.raises(ConfigError, match="is a socket, not a regular file"):
            load(str(path))


def test_oversized_file_is_refused(tmp_path: Path):
    error = refused(tmp_path, "#" * (MAX_FILE_SIZE + 1))
    assert error.why == (f"file is {MAX_FILE_SIZE + 1} bytes; the limit is {MAX_FILE_SIZE} "
                         "bytes (1 MiB)")


def test_a_file_growing_past_the_limit_is_read_no_further(tmp_path: Path, monkeypatch):
    # fstat said 0 bytes; the file has 3 MiB by the time it is read.
    path = write(tmp_path, "#" * (3 * MAX_FILE_SIZE))
    read = []

    def fstat(fd: int) -> os.stat_result:
        st = os.fstat(fd)
        return os.stat_result((st.st_mode, *[0] * 9))

    def counting_read(fd: int, n: int) -> bytes:
        data = os.read(fd, n)
        read.append(len(data))
        return data

    fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os)
                                       if not k.startswith("__")})
    fake_os.fstat, fake_os.read = fstat, counting_read
    monkeypatch.setattr(config_module, "os", fake_os)
    with pytest.raises(ConfigError, match="file grew while being read; the limit is"):
        load(path)
    assert sum(read) == MAX_FILE_SIZE + 1


@pytest.mark.parametrize("text", [
    "x = " + "{a = " * 50_000 + "1" + "}" * 50_000 + "\n",
    "x = " + "[" * 50_000 + "]" * 50_000 + "\n",
    "[bridge]\nuplinks = " + "[" * 50_000 + "]" * 50_000 + "\n",
], ids=["tables", "arrays", "uplinks"])
def test_deep_nesting_is_a_config_error(tmp_path: Path, text: str):
    error = refused(tmp_path, text)
    assert "nested too deeply" in error.why


def test_deep_nesting_in_a_worker_thread(tmp_path: Path):
    # The daemon reads the file in an executor: same answer there.
    path = write(tmp_path, "x = " + "{a = " * 50_000 + "1" + "}" * 50_000 + "\n")
    with (concurrent.futures.ThreadPoolExecutor(1) as pool,
          pytest.raises(ConfigError, match="nested too deeply")):
        pool.submit(load, path).result(timeout=30)


@pytest.mark.parametrize("text", [
    "[" + ".".join(["a"] * 50_000) + "]\n",
    "[bridge]\n" + ".".join(["a"] * (MAX_FILE_SIZE // 2 - 10)) + " = 1\n",
    'x = {"a"' + '."a"' * 100 + " = 1}\n",
], ids=["header", "key", "inline"])
def test_keys_of_many_parts_are_refused_at_once(tmp_path: Path, text: str):
    # tomllib is quadratic in the parts of a key (177 s for a 1 MiB header).
    started = time.monotonic()
    error = refused(tmp_path, text)
    assert time.monotonic() - started < 2
    assert "more than 64 dots outside strings and comments" in error.why


def test_worst_case_parse_time_is_bounded(tmp_path: Path):
    # The slowest shape found that passes the dot rule: 1 MiB of 63-part keys.
    lines = "".join(".".join(["a"] * 63) + f".k{i} = 1\n" for i in range(7000))
    assert len(lines) < MAX_FILE_SIZE
    started = time.monotonic()
    error = refused(tmp_path, lines)
    assert error.key == "a"
    assert time.monotonic() - started < 5


def test_huge_integer_is_a_config_error(tmp_path: Path):
    # tomllib lets int()'s ValueError through for more than 4300 digits.
    error = refused(tmp_path, "[bridge]\nmtu = " + "9" * 5000 + "\n")
    assert error.key == ""
    assert "not valid TOML" in error.why


def test_non_utf8_is_refused(tmp_path: Path):
    error = refused(tmp_path, b'[bridge]\nname = "br\xff0"\n')
    assert error.why == "not valid UTF-8 (line 2, byte 0xff)"


def test_odd_key_names_stay_on_one_line(tmp_path: Path):
    error = refused(tmp_path, '[bridge]\n"a\\nb" = 1\n')
    assert error.key == "bridge.'a\\nb'"
    error = refused(tmp_path, '["x\\u2028y"]\n')
    assert error.key == "'x\\u2028y'"


def test_long_values_are_cut_short_in_messages(tmp_path: Path):
    error = refused(tmp_path, '[bridge]\nstp = "' + "y" * 100_000 + '"\n')
    assert len(str(error)) < 300
    error = refused(tmp_path, "[bridge]\nstp = " + "[" * 100 + "]" * 100 + "\n")
    assert len(str(error)) < 300


def test_garbage_gives_only_config_errors(tmp_path: Path):
    # Mutations of real files: each loads or is one ConfigError line, nothing else.
    rng = random.Random(13)
    seeds = [GOOD, FULL]
    pieces = ["[", "]", "{", "}", '"', "'", "=", ".", ",", "\n", "#", "\\", "x", "0",
              "1e9", "nan", "true", "[vxlan]", "\xff", "\x00", "::", "/"]
    path = tmp_path / "bridged.toml"
    for _ in range(1500):
        text = rng.choice(seeds)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text))
            cut = rng.randint(0, 3)
            text = text[:at] + rng.choice(pieces) * rng.randint(1, 3) + text[at + cut:]
        path.write_text(text, errors="surrogateescape")
        try:
            load(str(path))
        except ConfigError as e:
            assert "\n" not in str(e), text


# --- reload -----------------------------------------------------------------------------


def test_reload_refuses_a_bridge_rename():
    old = parse({"bridge": {"name": "br0"}})
    new = parse({"bridge": {"name": "br1"}})
    with pytest.raises(ConfigError) as info:
        check_reload(old, new)
    assert info.value.key == "bridge.name"
    assert "'br0' to 'br1'" in info.value.why
    assert "needs a restart" in info.value.why


def test_reload_refuses_a_new_vni():
    vx = {"vni": 1, "local": "192.0.2.10"}
    old = parse({"vxlan": vx})
    new = parse({"vxlan": {**vx, "vni": 2}})
    with pytest.raises(ConfigError) as info:
        check_reload(old, new)
    assert info.value.key == "vxlan.vni"
    assert "from 1 to 2" in info.value.why


@pytest.mark.parametrize("new", [
    {"bridge": {"uplinks": ["eth1"], "mtu": 9000, "stp": True, "forward_delay": 4}},
    {"ip": {"mode": "static", "addresses": ["198.51.100.2/24"]}},
    {"taps": {"prefix": "vm", "guard": False}},
    {"vxlan": {"vni": 1, "local": "192.0.2.10", "peers": ["192.0.2.12"]}},
    {},
])
def test_reload_accepts_what_can_change_live(new: dict[str, object]):
    old = parse({"bridge": {"uplinks": ["eth0"]}, "vxlan": {"vni": 1, "local": "192.0.2.10",
                                                            "peers": ["192.0.2.11"]}})
    check_reload(old, parse(new))
    check_reload(parse(new), old)


# --- the command line -------------------------------------------------------------------


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
    result = run_bridged("--check-config", "--config", write(tmp_path, FULL))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ('[bridge]\nmac = "00:00:00:00:00:00"\n', "bridge.mac: '00:00:00:00:00:00' is the all-zeros"),
    ('[bridge]\nmtu = 68\n' + V6, "bridge.mtu: 68 is below 1280"),
    ('[bridge]\nuplinks = ["lo"]\n', "bridge.uplinks: 'lo' is the loopback device"),
    ('[bridge]\nuplinks = ["tap1"]\n', "bridge.uplinks: 'tap1' would match bridged's own taps"),
    (V4 + 'gateway = "fe80::1"\n', "ip.gateway: fe80::1 is an IPv6 gateway"),
    ("x = " + "[" * 50_000 + "]" * 50_000 + "\n", ": not usable TOML: nested too deeply"),
    ("#" * (MAX_FILE_SIZE + 1), ": file is 1048577 bytes"),
    (b"\xfe\xff", ": not valid UTF-8"),
], ids=["zero-mac", "mtu-ipv6", "lo", "tap1", "gateway-family", "nested", "size", "utf8"])
def test_cli_check_config_refuses_in_one_line(tmp_path: Path, text: str | bytes,
                                              expected: str):
    path = write(tmp_path, text)
    result = run_bridged("--check-config", "--config", path)
    assert result.returncode == 78
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"bridged: {path}")
    assert expected in result.stderr


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "dir"])
def test_cli_check_config_refuses_special_files(tmp_path: Path, special: str):
    if special == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    elif special == "dir":
        path = str(tmp_path)
    else:
        path = special
    result = run_bridged("--check-config", "--config", path)
    assert result.returncode == 78
    assert "not a regular file" in result.stderr
    assert result.stderr.count("\n") == 1


def test_cli_help_and_version():
    assert "--config" in run_bridged("--help").stdout
    assert run_bridged("--version").stdout.startswith("bridged ")


def test_documented_examples_load(tmp_path: Path):
    man = (REPO / "man" / "bridged.toml.5").read_text()
    example = man.split(".SH EXAMPLE\n.nf\n", 1)[1].split("\n.fi", 1)[0]
    assert "[vxlan]" in example
    config = load(write(tmp_path, example))
    assert config.vxlan is not None
    # etc/bridged.toml: its commented-out sections and keys, uncommented.
    shipped = (REPO / "etc" / "bridged.toml").read_text().splitlines()
    lines = [line[2:] for line in shipped if re.match(r"^# (\[|[a-z_]+ = )", line)]
    assert "[vxlan]" in lines
    config = load(write(tmp_path, "\n".join(lines)))
    assert config.ip.mode == "migrate"
    assert config.taps.guard is True
    assert config.vxlan is not None


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
