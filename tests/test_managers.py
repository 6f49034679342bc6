"""bridged.managers without root or a bus: the drop-ins it writes, and how it reads the
other managers' config (a root directory laid out per test). The claims against the
real NetworkManager and systemd-networkd are in tests/test_coexist.py."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from bridged.config import parse
from bridged.managers import (
    NETWORKD_HARMLESS,
    NM_HARMLESS,
    ClaimedNames,
    ClaimPaths,
    ManagerClaims,
    ifupdown_conflicts,
    ifupdown_stanzas,
    networkd_conflicts,
    networkd_name_matches,
    nm_conf_conflicts,
    nm_conf_files,
    nm_unmanaged_specs,
    render_networkd,
    render_networkmanager,
)
from tests.lab import REPO

CONFIG = parse({"bridge": {"name": "br0", "uplinks": ["eth0", "en*", "mac:52:54:00:12:34:56"]},
                "taps": {"prefix": "vm"}})


def names(links: tuple[str, ...] = (), claim_bridge: bool = True) -> ClaimedNames:
    return ClaimedNames.from_config(CONFIG, links, claim_bridge)


def write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def test_dropins_name_bridge_uplinks_and_taps():
    # wan9 matched the MAC uplink: present, it is named; eth0 and the taps are covered.
    claimed = names(("eth0", "wan9", "vm0", "vm1"))
    nm = render_networkmanager(claimed)
    assert nm.splitlines()[1:] == [
        "[keyfile]",
        "unmanaged-devices+=interface-name:br0;interface-name:eth0;interface-name:en*;"
        "mac:52:54:00:12:34:56;interface-name:vm*;interface-name:wan9"]
    networkd = render_networkd(claimed)
    assert networkd.splitlines()[1:] == ["[Match]", "Name=vm* br0 eth0 en* wan9", "",
                                         "[Link]", "Unmanaged=yes"]
    # ip.mode "dhcp": the bridge is left to the manager that runs its DHCP client.
    assert "br0" not in render_networkd(names(claim_bridge=False))
    assert "interface-name:br0" not in render_networkmanager(names(claim_bridge=False))


def test_tmpfiles_write_the_harmless_content():
    """The package's tmpfiles lines create what withdraw() writes back."""
    text = (REPO / "systemd" / "bridged.tmpfiles").read_text()

    def argument(path: str) -> str:
        line = next(line for line in text.splitlines() if line.startswith(f"f {path} "))
        return line.split(" - ", 1)[1].encode().decode("unicode_escape") + "\n"

    assert argument("/run/bridged/networkmanager.conf") == NM_HARMLESS
    assert argument("/run/bridged/networkd.network") == NETWORKD_HARMLESS
    for link, target in (("/run/NetworkManager/conf.d/90-bridged.conf",
                          "/run/bridged/networkmanager.conf"),
                         ("/run/systemd/network/00-bridged.network",
                          "/run/bridged/networkd.network")):
        assert re.search(rf"^L\+ {re.escape(link)} - - - - {re.escape(target)}$", text, re.M)
    service = (REPO / "systemd" / "bridged.service").read_text()
    assert "--networkmanager-conf=/run/bridged/networkmanager.conf" in service
    assert "--networkd-network=/run/bridged/networkd.network" in service


def test_harmless_network_file_matches_no_usual_link(tmp_path: Path):
    path = write(tmp_path, "h.network", NETWORKD_HARMLESS)
    for ifname in ("eth0", "br0", "enp1s0", "tap0", "lo"):
        assert networkd_name_matches(str(path), ifname) is False


def test_claim_without_bus_writes_files_and_withdraw_puts_back_harmless(tmp_path: Path):
    paths = ClaimPaths(str(tmp_path / "nm.conf"), str(tmp_path / "networkd.network"),
                       root=str(tmp_path))
    claims = ManagerClaims(None, paths)
    asyncio.run(claims.claim(names(("eth0",))))
    assert (tmp_path / "nm.conf").read_text() == render_networkmanager(names(("eth0",)))
    assert (tmp_path / "networkd.network").read_text() == render_networkd(names(("eth0",)))
    # Readable by the managers whatever the daemon's umask (0077 in the unit).
    assert os.stat(tmp_path / "networkd.network").st_mode & 0o777 == 0o644
    asyncio.run(claims.withdraw())
    assert (tmp_path / "nm.conf").read_text() == NM_HARMLESS
    assert (tmp_path / "networkd.network").read_text() == NETWORKD_HARMLESS
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bridged-")]


# --- systemd-networkd ------------------------------------------------------------------


@pytest.mark.parametrize(("match", "ifname", "expected"), [
    ("Name=*", "eth0", True),
    ("Name=en* eth*", "eth0", True),
    ("Name=en*", "eth0", False),
    ("Name=!eth0 br0", "eth0", False),
    ("Name=!eth0 br0", "wlan0", True),
    ("Name=*\nName=!br0", "br0", False),
    ("Name=*\nName=!br0", "eth0", True),
    ("Name=eth0\nName=", "eth0", None),  # reset: no Name= left... the key was seen
    ("Type=ether", "eth0", None),
])
def test_networkd_name_matching(tmp_path: Path, match: str, ifname: str, expected: bool | None):
    path = write(tmp_path, "x.network", f"[Match]\n{match}\n\n[Network]\nDHCP=yes\n")
    result = networkd_name_matches(str(path), ifname)
    if match.endswith("Name="):
        assert result is True  # an empty list after the reset matches every name
    else:
        assert result is expected


def test_networkd_conflicts_first_file_wins_ours_excluded(tmp_path: Path):
    ours = write(tmp_path, "/run/bridged/networkd.network", render_networkd(names()))
    link = tmp_path / "run/systemd/network/00-bridged.network"
    link.parent.mkdir(parents=True)
    link.symlink_to(ours)
    write(tmp_path, "/etc/systemd/network/80-dhcp.network",
          "[Match]\nName=*\n[Network]\nDHCP=yes\n")
    write(tmp_path, "/usr/lib/systemd/network/10-eth.network", "[Match]\nName=eth0\n")
    # Masked by the same name in /etc: networkd never reads the /usr/lib one.
    write(tmp_path, "/usr/lib/systemd/network/05-br.network", "[Match]\nName=br0\n")
    write(tmp_path, "/etc/systemd/network/05-br.network", "")
    paths = ClaimPaths(None, str(ours), root=str(tmp_path))
    found = networkd_conflicts(paths, "br0", list(CONFIG.bridge.uplinks), [])
    assert [(c.tool, c.what.split(" matches ")[0]) for c in found] == [
        ("systemd-networkd", str(tmp_path / "usr/lib/systemd/network/10-eth.network")),
        ("systemd-networkd", str(tmp_path / "etc/systemd/network/80-dhcp.network"))]
    assert "matches eth0;" in found[0].what and "keeps systemd-networkd off" in found[0].what
    assert "matches br0;" in found[1].what
    assert "Name=!br0" in found[1].fix
    # A file sorting before ours takes the link from bridged while it runs.
    write(tmp_path, "/etc/systemd/network/0-first.network", "[Match]\nName=br*\n")
    first = networkd_conflicts(paths, "br0", [], [])[0]
    assert "sorts before bridged's 00-bridged.network" in first.what


# --- NetworkManager's configuration ------------------------------------------------------


def test_nm_conf_order_and_merge(tmp_path: Path):
    write(tmp_path, "/usr/lib/NetworkManager/conf.d/10-lib.conf",
          "[keyfile]\nunmanaged-devices=interface-name:lib0\n")
    write(tmp_path, "/usr/lib/NetworkManager/conf.d/20-shadowed.conf",
          "[keyfile]\nunmanaged-devices=interface-name:never\n")
    write(tmp_path, "/etc/NetworkManager/conf.d/20-shadowed.conf", "")
    ours = write(tmp_path, "/run/bridged/nm.conf", render_networkmanager(names()))
    link = tmp_path / "run/NetworkManager/conf.d/90-bridged.conf"
    link.parent.mkdir(parents=True)
    link.symlink_to(ours)
    write(tmp_path, "/etc/NetworkManager/NetworkManager.conf", "[main]\nplugins=ifupdown,keyfile\n")
    paths = ClaimPaths(str(ours), None, root=str(tmp_path))
    assert [os.path.relpath(f, tmp_path) for f in nm_conf_files(paths)] == [
        "usr/lib/NetworkManager/conf.d/10-lib.conf",
        "run/NetworkManager/conf.d/90-bridged.conf",
        "etc/NetworkManager/NetworkManager.conf",
        "etc/NetworkManager/conf.d/20-shadowed.conf"]
    specs, _ = nm_unmanaged_specs(nm_conf_files(paths))
    # "+=" keeps the package's own list.
    assert specs[0] == "interface-name:lib0" and "interface-name:br0" in specs
    assert nm_conf_conflicts(paths, names()) == []
    # An admin's plain unmanaged-devices= in /etc replaces ours, whatever its name.
    write(tmp_path, "/etc/NetworkManager/conf.d/00-admin.conf",
          "[keyfile]\nunmanaged-devices=interface-name:wlan0\n")
    [conflict] = nm_conf_conflicts(paths, names())
    assert "00-admin.conf replaces bridged's list" in conflict.what
    assert "br0" in conflict.what and "vm*" in conflict.what
    assert "unmanaged-devices+=" in conflict.fix


# --- ifupdown ----------------------------------------------------------------------------

SEED = """# The loopback network interface
auto lo
iface lo inet loopback

source interfaces.d/*
source-directory /etc/network/more.d

auto br0
iface br0 inet static
    address 192.168.1.10
    netmask 255.255.255.0
    bridge_ports eth0 \\
        tap0
    bridge_stp off
"""


def test_ifupdown_scan_follows_source_and_finds_conflicts(tmp_path: Path):
    main = write(tmp_path, "/etc/network/interfaces", SEED)
    write(tmp_path, "/etc/network/interfaces.d/uplink",
          "allow-hotplug eth0\niface eth0 inet dhcp\n")
    write(tmp_path, "/etc/network/more.d/enp", "iface enp1s0 inet manual\n")
    write(tmp_path, "/etc/network/more.d/skip.bak", "iface eth9 inet dhcp\n")  # not run-parts
    write(tmp_path, "/etc/network/more.d/other",
          "iface br9 inet manual\n  bridge-ports wlan0 all\n")
    stanzas = ifupdown_stanzas(str(main), str(tmp_path))
    assert [(s.name, s.method, s.auto) for s in stanzas] == [
        ("lo", "loopback", True), ("eth0", "dhcp", True), ("enp1s0", "manual", False),
        ("br9", "manual", False), ("br0", "static", True)]
    assert stanzas[-1].options["bridge-ports"] == "eth0 tap0"
    found = ifupdown_conflicts(str(main), "br0", list(CONFIG.bridge.uplinks), [], str(tmp_path))
    whats = [c.what for c in found]
    assert len(found) == 4, whats
    assert "'iface eth0 inet dhcp'" in whats[0] and "runs a DHCP client" in whats[0]
    assert "'iface enp1s0 inet manual'" in whats[1]
    assert "makes bridge br9 with ports all" in whats[2]
    assert "configures bridged's bridge br0 with ports eth0 tap0" in whats[3]
    assert "interfaces:9" in whats[3]
    assert "'auto br0' or 'allow-hotplug br0'" in found[3].fix
