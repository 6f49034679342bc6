"""Runtime udev rules that tell other network managers which links are bridged's.

The bridge, uplink, tap and VXLAN port names live in bridged.toml, so a static rules file cannot
name them: bridged writes this one (to /run, gone at reboot) at start and on reload.
It sets ID_NET_MANAGED_BY (systemd-networkd >= 255 leaves such links alone) and
NM_UNMANAGED (NetworkManager does), so two managers never fight over a link. udev
applies it from the next event on each link; bridged creates the bridge and taps after
writing it, so those are covered from their first event.
"""

from __future__ import annotations

import logging
import os
import tempfile

from bridged.config import Config

log = logging.getLogger("bridged.udev")
MANAGER_ID = "org.bridged.Bridged1"


def render(config: Config) -> str:
    matches = [f'KERNEL=="{config.bridge.name}"']
    for pattern in config.bridge.uplinks:
        mac = pattern.mac
        matches.append(f'ATTR{{address}}=="{mac}"' if mac else f'KERNEL=="{pattern.text}"')
    if config.vxlan is not None:
        matches.append(f'KERNEL=="{config.vxlan.device_name}"')
    # Only tun/tap devices with our prefix: tun_flags exists for those alone.
    matches.append(f'KERNEL=="{config.taps.prefix}*", ATTR{{tun_flags}}=="?*"')
    lines = [f"# Written by bridged from {config.path}; do not edit (see bridged(8)).",
             'SUBSYSTEM!="net", GOTO="bridged_end"',
             'ACTION=="remove", GOTO="bridged_end"',
             *(f'{match}, GOTO="bridged_ours"' for match in matches),
             'GOTO="bridged_end"',
             'LABEL="bridged_ours"',
             f'ENV{{ID_NET_MANAGED_BY}}="{MANAGER_ID}", ENV{{NM_UNMANAGED}}="1"',
             'LABEL="bridged_end"']
    return "\n".join(lines) + "\n"


def write(path: str, config: Config) -> None:
    """Replace ``path`` atomically; a failure is logged, never fatal."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".bridged-")
        with os.fdopen(fd, "w") as f:
            f.write(render(config))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as e:
        log.warning("cannot write udev rules %s: %s", path, e,
                    extra={"BRIDGED_EVENT": "udev-rules-failed"})
