"""bridged-helper: qemu's bridge-helper protocol, served from bridged over D-Bus.

qemu runs ``HELPER --use-vnet --fd=N --br=BRIDGE`` for ``-netdev bridge,helper=HELPER``,
with N one end of a unix socketpair, reads one tap fd back with SCM_RIGHTS and then
requires exit status 0. qemu-bridge-helper does that as setuid root with an ACL file;
this helper needs no privilege: it asks bridged for the tap (OpenTap), so the daemon's
policy decides, and the tap vanishes when qemu closes the fd.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import socket
import sys
from collections.abc import Sequence

from bridged import __version__, qemu
from bridged.client import BRIDGE, Client, ClientError, unwrap


def parent_guest_name() -> str | None:
    """The ``-name`` of the qemu that ran us, for the tap's label."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    return qemu.guest_name(argv)


def send_fd(channel: int, fd: int) -> None:
    with socket.socket(fileno=os.dup(channel)) as sock:
        # qemu reads exactly one byte of payload alongside the descriptor.
        sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


async def open_tap(args: argparse.Namespace) -> int:
    client = await Client.connect(args.bus_address)
    try:
        manager = await client.manager_properties()
        reply = await client.call(manager["Bridge"], "org.freedesktop.DBus.Properties",
                                  "Get", "ss", [BRIDGE, "Name"])
        bridge = unwrap(reply.body[0])
        if args.br is not None and args.br != bridge:
            raise ClientError("InvalidArgument",
                              f"bridged manages bridge {bridge}, not {args.br}; "
                              f"use -netdev bridge,br={bridge}")
        options: dict[str, object] = {"vnet_hdr": args.use_vnet}
        label = parent_guest_name()
        if label:
            options["label"] = label
        tap = await client.open_tap(options)
        return tap.fds[0]
    finally:
        client.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridged-helper",
        description="qemu bridge helper that gets its tap from bridged: use it as "
                    "-netdev bridge,id=n0,br=br0,helper=/usr/libexec/bridged-helper. "
                    "No setuid bit and no /etc/qemu/bridge.conf: the daemon decides who "
                    "may have a tap (group bridged by default).")
    parser.add_argument("--use-vnet", action="store_true", help="ask for IFF_VNET_HDR")
    parser.add_argument("--br", metavar="BRIDGE",
                        help="bridge qemu asked for (must be the one bridged manages)")
    parser.add_argument("--fd", type=int, metavar="N", required=True,
                        help="unix socket to send the tap fd over (given by qemu)")
    parser.add_argument("--bus-address", metavar="ADDRESS",
                        help="D-Bus address (default: $DBUS_SYSTEM_BUS_ADDRESS or system bus)")
    parser.add_argument("--version", action="version", version=f"bridged-helper {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fd = asyncio.run(open_tap(args))
        send_fd(args.fd, fd)
    except ClientError as exc:
        # qemu prints our stderr, then "bridge helper failed".
        print(f"bridged-helper: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"bridged-helper: cannot hand the tap to qemu: {exc}", file=sys.stderr)
        return 1
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
