"""bridgectl: inspect bridged and get taps from it, in the manner of networkctl."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import shutil
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from bridged import __version__, qemu
from bridged.client import BRIDGE, MANAGER, TAP, Client, ClientError, unwrap

if TYPE_CHECKING:
    from bridged.ifupdown import Conversion

# Exit statuses, after systemctl's: 4 for "not allowed"; 69 (EX_UNAVAILABLE) when the
# daemon or the bus cannot be reached.
EXIT_FAILED = 1
EXIT_NOPERMISSION = 4
EXIT_UNAVAILABLE = 69
_EXIT_FOR_ERROR = {"AccessDenied": EXIT_NOPERMISSION, "NotOwner": EXIT_NOPERMISSION,
                   "org.freedesktop.DBus.Error.AccessDenied": EXIT_NOPERMISSION,
                   "NoBus": EXIT_UNAVAILABLE,
                   "org.freedesktop.DBus.Error.ServiceUnknown": EXIT_UNAVAILABLE,
                   "org.freedesktop.DBus.Error.NameHasNoOwner": EXIT_UNAVAILABLE}


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def age(created_at_us: int, now: float | None = None) -> str:
    seconds = max(0, int((now if now is not None else time.time()) - created_at_us / 1e6))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def tap_record(path: str, props: dict[str, Any]) -> dict[str, Any]:
    return {"name": props["Name"], "path": path, "index": props["Index"],
            "owner_uid": props["OwnerUID"], "owner": user_name(props["OwnerUID"]),
            "label": props["Label"], "client_pid": props["ClientPID"],
            "persistent": props["Persistent"], "queues": props["Queues"],
            "vnet_hdr": props["VnetHdr"], "mtu": props["MTU"], "vlan": props["VLAN"],
            "isolated": props["Isolated"], "created_at_us": props["CreatedAt"],
            # Older daemons have no guards: absent means unguarded, MAC unknown.
            "guarded": props.get("Guarded", False), "mac": props.get("MAC", "")}


async def gather_status(client: Client) -> dict[str, Any]:
    manager = await client.manager_properties()
    objects = await client.objects()
    bridge = objects.get(manager["Bridge"], {}).get(BRIDGE, {})
    taps = sorted((tap_record(path, ifaces[TAP]) for path, ifaces in objects.items()
                   if TAP in ifaces), key=lambda t: (len(t["name"]), t["name"]))
    tap_names = {t["name"] for t in taps}
    foreign = bridge.get("ForeignPorts", [])
    overlay = overlay_record(bridge)
    vxlan = {overlay["device"]} if overlay is not None else set()
    return {
        "version": manager["Version"], "state": manager["State"],
        "status": manager.get("StatusText", ""),
        "bridge": {"name": bridge.get("Name"), "index": bridge.get("Index"),
                   "mac": bridge.get("MACAddress"), "mtu": bridge.get("MTU"),
                   "stp": bridge.get("STP"), "forward_delay": bridge.get("ForwardDelay"),
                   "operstate": bridge.get("OperState"), "addresses": bridge.get("Addresses", []),
                   "leases": bridge.get("Leases", {})},
        "uplinks": {"configured": bridge.get("Uplinks", []),
                    "enslaved": [p for p in bridge.get("Ports", [])
                                 if p not in tap_names and p not in foreign and p not in vxlan]},
        "foreign_ports": foreign,
        "overlay": overlay,
        "taps": taps,
    }


def with_lease(address: str, leases: dict[str, int]) -> str:
    left = leases.get(address)
    return address if left is None else f"{address} (lease, {left} s left)"


def overlay_record(bridge: dict[str, Any]) -> dict[str, Any] | None:
    """The overlay as the Bridge object shows it; None without [vxlan] (or from a daemon
    older than the overlay)."""
    if not bridge.get("VNI"):
        return None
    remotes = [{"address": address, "configured": configured, "flood": flood,
                "fdb_entries": entries, "remote_macs": macs}
               for address, configured, flood, entries, macs in bridge.get("VxlanRemotes", [])]
    return {"device": bridge.get("VxlanDevice", ""), "vni": bridge["VNI"],
            "local": bridge.get("VxlanLocal", ""), "control": bridge.get("VxlanControl", ""),
            "underlay": bridge.get("VxlanUnderlay", ""),
            "problem": bridge.get("VxlanProblem", ""),
            "peers_configured": bridge.get("VxlanPeers", []),
            "peers_learned": bridge.get("VxlanLearnedPeers", []),
            "remotes": remotes}


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def render_overlay(overlay: dict[str, Any]) -> list[str]:
    control = "BGP EVPN (FRR)" if overlay["control"] == "evpn" else "static peers"
    underlay = f" via {overlay['underlay']}" if overlay["underlay"] else ""
    lines = [f"      Overlay: {overlay['device']}, VNI {overlay['vni']}, local "
             f"{overlay['local']}{underlay}, {control}"]
    if overlay["problem"]:
        lines.append(f"      Problem: {overlay['problem']}")
    peers = []
    for r in overlay["remotes"]:
        origin = "configured" if r["configured"] else "learned" if r["flood"] else "FDB only"
        details = [origin, _count(r["fdb_entries"], "FDB entry", "FDB entries")]
        if r["remote_macs"]:
            details.append(_count(r["remote_macs"], "remote MAC", "remote MACs"))
        if r["configured"] and not r["flood"]:
            details.append("no flood entry yet")
        peers.append(f"{r['address']} ({', '.join(details)})")
    lines.append(f"        Peers: {peers[0] if peers else '-'}")
    lines += [f"               {peer}" for peer in peers[1:]]
    return lines


def render_status(status: dict[str, Any]) -> str:
    b, up = status["bridge"], status["uplinks"]
    enslaved = ", ".join(f"{u} (enslaved)" for u in up["enslaved"]) or "none present"
    lines = [
        f"● {b['name']}  bridged {status['version']}, {status['state']}",
        f"       Status: {status['status']}",
        f"        State: {b['operstate']}",
        f"          MAC: {b['mac']}",
        f"          MTU: {b['mtu']}",
        f"          STP: {'on' if b['stp'] else 'off'} (forward delay {b['forward_delay']} s)",
        f"    Addresses: {', '.join(with_lease(a, b['leases']) for a in b['addresses']) or '-'}",
        f"      Uplinks: {enslaved}; configured: {', '.join(up['configured']) or 'none'}",
        *([f"Foreign ports: {', '.join(status['foreign_ports'])} (not bridged's: another "
           "tool put them on the bridge)"] if status["foreign_ports"] else []),
        *(render_overlay(status["overlay"]) if status.get("overlay") else []),
        f"         Taps: {len(status['taps'])}",
    ]
    if status["taps"]:
        lines += ["", render_taps(status["taps"])]
    return "\n".join(lines)


def render_taps(taps: list[dict[str, Any]]) -> str:
    now = time.time()
    rows = [(t["name"], t["owner"], t["label"] or "-", t["queues"], t["vlan"] or "-",
             "linger" if not t["client_pid"] and t["persistent"] else t["client_pid"] or "fd",
             "on" if t["guarded"] else "off", t["mac"] or ("learning" if t["guarded"] else "-"),
             age(t["created_at_us"], now)) for t in taps]
    return table(("TAP", "OWNER", "LABEL", "QUEUES", "VLAN", "HELD BY", "GUARD", "MAC", "AGE"),
                 rows)


def tap_request(args: argparse.Namespace) -> dict[str, Any]:
    return {"name": getattr(args, "name", None), "label": args.label,
            "queues": args.queues, "vlan": args.vlan, "mtu": args.mtu,
            "isolated": True if args.isolated else None,
            "vnet_hdr": False if getattr(args, "no_vnet_hdr", False) else None}


async def cmd_status(client: Client, args: argparse.Namespace) -> int:
    status = await gather_status(client)
    print(json.dumps(status) if args.json else render_status(status))
    return 0


async def cmd_list(client: Client, args: argparse.Namespace) -> int:
    taps = (await gather_status(client))["taps"]
    if args.json:
        print(json.dumps(taps))
    elif taps:
        print(render_taps(taps))
        print(f"\n{len(taps)} taps listed.")
    else:
        print("No taps.")
    return 0


def bindable_parent() -> int:
    parent = os.getppid()
    try:
        mine = os.stat(f"/proc/{parent}").st_uid == os.getuid()
    except OSError:
        mine = False
    if not mine:
        raise ClientError("InvalidArgument",
                          f"the tap would be bound to bridgectl's parent (pid {parent}), "
                          "which is not your process; use --linger, or --pid PID of the "
                          "process that should own the tap")
    return parent


async def cmd_create(client: Client, args: argparse.Namespace) -> int:
    options = tap_request(args)
    if args.linger:
        options["linger"] = True
    else:
        # Bound to the process that ran us (the shell or wrapper script), so that
        # `tap=$(bridgectl create) && exec qemu ... ifname=$tap` keeps it for qemu's life.
        options["pid"] = args.pid if args.pid is not None else bindable_parent()
    path, ifname = await client.create_tap(options)
    print(json.dumps({"name": ifname, "path": path}) if args.json else ifname)
    return 0


async def cmd_release(client: Client, args: argparse.Namespace) -> int:
    for name in args.names:
        await client.release_tap(name)
    return 0


async def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    await client.retry()
    status = await client.manager_properties()
    print(status["StatusText"] if not args.json else json.dumps(
        {"state": status["State"], "status": status["StatusText"]}))
    return 0 if status["State"] != "rolled-back" else EXIT_FAILED


def describe_event(member: str, body: list[Any], path: str) -> dict[str, Any]:
    if member in ("TapAdded", "TapRemoved"):
        return {"event": member, "tap": body[1], "path": body[0]}
    if member == "UplinkChanged":
        return {"event": member, "uplink": body[0], "state": body[1]}
    interface, changed = body[0], unwrap(body[1])
    return {"event": "PropertiesChanged", "path": path, "interface": interface,
            "changed": changed, "invalidated": list(body[2]) if len(body) > 2 else []}


def render_event(event: dict[str, Any]) -> str:
    kind = event["event"]
    if kind == "TapAdded":
        return f"tap {event['tap']}: added"
    if kind == "TapRemoved":
        return f"tap {event['tap']}: removed"
    if kind == "UplinkChanged":
        return f"uplink {event['uplink']}: {event['state']}"
    if kind == "DaemonGone":
        return "bridged: stopped (left the bus)"
    if kind == "DaemonStarted":
        return "bridged: started"
    changed = [f"{k}={v}" for k, v in sorted(event["changed"].items())]
    changed += [f"{k} changed" for k in event.get("invalidated", [])]
    return f"{event['path'].rsplit('/', 1)[-1]}: {', '.join(changed)}"


async def cmd_monitor(client: Client, args: argparse.Namespace) -> int:
    from dbus_fast import Message, MessageType

    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    owner: dict[str, str] = {}

    def emit(event: dict[str, Any]) -> None:
        print(json.dumps(event) if args.json else render_event(event), flush=True)

    def on_message(message: Message) -> None:
        if message.message_type.name != "SIGNAL":
            return
        if message.member == "NameOwnerChanged" and message.body[0] == "org.bridged.Bridged1":
            emit({"event": "DaemonStarted" if message.body[2] else "DaemonGone"})
            owner["name"] = message.body[2]
            return
        if message.sender != owner.get("name"):
            return
        if message.member == "PropertiesChanged":
            if message.body[0] not in (MANAGER, BRIDGE, TAP):
                return
        elif message.member not in ("TapAdded", "TapRemoved", "UplinkChanged"):
            return  # ObjectManager's InterfacesAdded/Removed say the same as TapAdded/Removed
        emit(describe_event(message.member or "", unwrap(message.body), message.path or ""))

    reply = await client.bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="GetNameOwner", signature="s",
        body=["org.bridged.Bridged1"]))
    if reply is not None and reply.message_type == MessageType.METHOD_RETURN:
        owner["name"] = reply.body[0]
    else:
        print("bridgectl: bridged is not running; waiting for it", file=sys.stderr, flush=True)
    for rule in ("type='signal',sender='org.bridged.Bridged1'",
                 "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
                 "arg0='org.bridged.Bridged1'"):
        await client.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))
    client.bus.add_message_handler(on_message)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if not done.done():
            done.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    # On stderr even with --json: scripts read stdout, and this says we are subscribed.
    print("Monitoring bridged; press Ctrl-C to stop.", file=sys.stderr, flush=True)
    await done
    return 0


async def cmd_run(client: Client, args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ClientError("InvalidArgument", "run needs a qemu command after --")
    if shutil.which(command[0]) is None:
        raise ClientError("InvalidArgument", f"{command[0]}: command not found")
    label = args.label or qemu.guest_name(command)
    mac = args.mac or qemu.guest_mac(os.getuid(), label or " ".join(command))
    options = tap_request(args)
    options["label"] = label
    # The guards let the tap send from this MAC only, from its first frame on.
    options["mac"] = mac
    tap = await client.open_tap(options)
    client.close()
    # qemu inherits the queue fds; the tap lives exactly as long as they stay open.
    for fd in tap.fds:
        os.set_inheritable(fd, True)
    argv = [*command, *qemu.netdev_args(tap.fds, mac, args.netdev_id, args.model)]
    if not args.quiet:
        print(f"bridgectl: {tap.ifname} on the bridge for {label or command[0]}, "
              f"guest MAC {mac}", file=sys.stderr, flush=True)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:  # the tap goes with our fds as we exit
        raise ClientError("Failed", f"cannot run {argv[0]}: {e.strerror}") from None
    return EXIT_FAILED  # not reached


def render_import(conversion: Conversion, wrote: str | None) -> str:
    """The import's report for people. Without -o it follows the TOML as comments, so
    that stdout redirected to a file is still a valid bridged.toml."""
    comment = wrote is None and conversion.config is not None
    out: list[str] = []
    if conversion.refused:
        out += ["", "Refused: not in bridged.toml; handle by hand:" if conversion.config
                else "Nothing converted:"]
        out += [f"  {f}" for f in conversion.refused]
    if conversion.removals:
        width = max(len(r.lines()) for r in conversion.removals)
        out += ["", "Then remove from ifupdown's files, after bridged.toml is in place and "
                    "before bridged starts", "(README: Coming from /etc/network/interfaces):"]
        out += [f"  {r.lines():<{width}}  {r.describe()}: {r.text}" for r in conversion.removals]
    if conversion.commands:
        out += ["", "Taps, once bridged runs (an old tap of that name must go first, with its "
                    "VM off: ip link del TAP):"]
        out += [f"  {line}" for line in conversion.setup]
        out += [f"  {c.shell}  # {c.where}" for c in conversion.commands]
    if conversion.notes:
        out += ["", "Notes:"] + [f"  {n}" for n in conversion.notes]
    if comment:
        return "\n".join([conversion.config or "", "# --- import-ifupdown's report ---",
                          *(f"# {line}".rstrip() for line in out)])
    head = [f"Wrote {wrote}."] if wrote and conversion.config is not None else []
    return "\n".join(head + out).strip("\n")


def write_new_file(path: str, text: str, force: bool) -> None:
    """Write ``path`` whole or not at all; an existing file only with ``force``."""
    if os.path.lexists(path) and not force:
        raise FileExistsError(f"{path} exists; --force overwrites it")
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(temp, "w", encoding="utf-8") as f:
        f.write(text)
        os.fchmod(f.fileno(), 0o644)
    os.replace(temp, path)


def cmd_import_ifupdown(args: argparse.Namespace) -> int:
    """No bus here: it reads files and prints text, before bridged runs at all."""
    from bridged import ifupdown  # imported here: the other commands need not pay for it

    where: tuple[str, int | None]
    try:
        conversion = ifupdown.import_file(args.file or ifupdown.DEFAULT_PATH)
    except ifupdown.InputError as e:
        message, status, where = f"cannot read {e}", ifupdown.EX_NOINPUT, (e.path, None)
    except ifupdown.ParseError as e:
        message, status, where = str(e), ifupdown.EX_DATAERR, (e.where.file, e.where.line)
    else:
        if args.output and conversion.config is not None:
            try:
                write_new_file(args.output, conversion.config, args.force)
            except OSError as e:
                print(f"bridgectl: {e}", file=sys.stderr)
                return ifupdown.EX_CANTCREAT
        if args.json:
            print(json.dumps(conversion.as_dict(), ensure_ascii=False))
        else:
            print(render_import(conversion, args.output))
        return conversion.status
    if args.json:
        print(json.dumps({"status": status, "error": message, "file": where[0],
                          "line": where[1]}, ensure_ascii=False))
    print(f"bridgectl: {message}", file=sys.stderr)
    return status


def add_tap_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", help="a name for the VM, shown in status and logs")
    parser.add_argument("--queues", type=int, help="number of queues (multi-queue virtio-net)")
    parser.add_argument("--vlan", type=int, help="untagged VLAN (PVID) on a VLAN-filtering bridge")
    parser.add_argument("--mtu", type=int,
                        help="MTU of the tap (default: bridge.mtu from the config, else 1500)")
    parser.add_argument("--isolated", action="store_true",
                        help="isolate the port: it reaches the uplink, not other isolated taps")


def build_parser() -> argparse.ArgumentParser:
    # Accepted before or after the command; SUPPRESS keeps a subcommand's unset default
    # from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bus-address", metavar="ADDRESS", default=argparse.SUPPRESS,
                        help="D-Bus address of the system bus "
                             "(default: $DBUS_SYSTEM_BUS_ADDRESS or the system bus)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON for scripts")

    parser = argparse.ArgumentParser(
        prog="bridgectl", parents=[common],
        description="Inspect bridged and get taps on its bridge for virtual machines.",
        epilog="Examples:\n"
               "  bridgectl status\n"
               "  bridgectl run -- qemu-system-x86_64 -m 1024 -hda vm.img\n"
               "  tap=$(bridgectl create --label vm1) && exec qemu-system-x86_64 ... "
               "-netdev tap,id=n0,ifname=$tap,script=no,downscript=no\n"
               "  bridgectl import-ifupdown    # /etc/network/interfaces -> bridged.toml\n"
               "See bridgectl(1).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bridgectl {__version__}")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    sub.add_parser("status", parents=[common], help="show the bridge, its uplinks and taps",
                   description="Show the bridge (MAC, addresses, STP, state), its uplinks "
                               "and every tap with owner, label, queues, VLAN and age.")
    sub.add_parser("list", parents=[common], help="list taps",
                   description="List the taps bridged manages.")

    create = sub.add_parser(
        "create", parents=[common], help="create a persistent tap for -netdev tap,ifname=",
        description="Create a persistent tap owned by you, attached to the bridge and up, "
                    "and print its name. It is freed when the process that ran bridgectl "
                    "exits (your shell or wrapper script, which may exec qemu), unless "
                    "--linger or --pid says otherwise.")
    create.add_argument("--name", help="tap name (must start with the configured prefix)")
    add_tap_options(create)
    create.add_argument("--no-vnet-hdr", action="store_true",
                        help="create the tap without IFF_VNET_HDR")
    bind = create.add_mutually_exclusive_group()
    bind.add_argument("--linger", action="store_true", help="keep the tap until released")
    bind.add_argument("--pid", type=int,
                      help="free the tap when this process (one of yours) exits "
                           "(default: bridgectl's parent)")

    release = sub.add_parser("release", parents=[common], help="free taps",
                             description="Free taps you own (root may free any).")
    release.add_argument("names", nargs="+", metavar="NAME")

    sub.add_parser("monitor", parents=[common], help="print tap and uplink events as they happen",
                   description="Print tap and uplink events and state changes as they "
                               "happen, until interrupted (Ctrl-C).")

    sub.add_parser(
        "retry", parents=[common], help="try the IP move again after a rollback (root)",
        description="After bridged rolled an IP move back (the gateway did not answer "
                    "through the bridge within ip.probe_timeout), enslave the uplinks "
                    "and move the host's addresses again with the config file as it is "
                    "now, and verify again. Prints the outcome; exit status 1 if it was "
                    "rolled back again. Root only.")

    run = sub.add_parser(
        "run", parents=[common], help="run qemu with a NIC on the bridge",
        description="Ask bridged for a tap, then exec the qemu command with a "
                    "virtio-net NIC on it (-netdev tap,fd=N). The tap lives exactly as long "
                    "as qemu; nothing to clean up.",
        epilog="Example: bridgectl run --label vm1 -- qemu-system-x86_64 -m 1024 -hda vm.img")
    add_tap_options(run)
    run.add_argument("--mac", help="guest MAC (default: stable per user, host and VM label)")
    run.add_argument("--model", default="virtio-net-pci", help="qemu NIC device model")
    run.add_argument("--netdev-id", default="bridged0", help="qemu netdev id")
    run.add_argument("-q", "--quiet", action="store_true", help="print nothing before qemu starts")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- QEMU-COMMAND...")

    json_only = argparse.ArgumentParser(add_help=False)
    json_only.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                           help="print one JSON object: status, config (the TOML text), "
                                "remove, setup, commands, notes, refused")
    imp = sub.add_parser(
        "import-ifupdown", parents=[json_only],
        help="turn /etc/network/interfaces into bridged.toml (reads files only)",
        description=(
            "Read Debian ifupdown's interfaces file (and what it sources) and print the\n"
            "bridged.toml that brings up the same bridge: its ports as uplinks, STP and\n"
            "forward delay, MAC, MTU, the address, gateway and name servers. Without a\n"
            "bridge in the file, the interface that carries the host's address (the Debian\n"
            "installer's eth0) becomes the uplink of a new br0.\n\n"
            "Then it lists the stanzas and names to remove from ifupdown's files (file:line),\n"
            "a 'bridgectl create --linger --name TAP' line for each tap ifupdown created\n"
            "(ip tuntap add ... user U, tunctl -u U), run as its owner, and every line it\n"
            "cannot express, with the reason. Without -o the report follows the TOML as\n"
            "comments, so the output is a valid file.\n\n"
            "It only reads files: no root, no bus, no running bridged needed."),
        epilog=(
            "exit status:\n"
            "  0   converted fully\n"
            "  1   converted, with refused lines (printed: handle them by hand)\n"
            "  2   nothing converted (no bridge and no interface with an address)\n"
            "  65  a file cannot be parsed (file:line)\n"
            "  66  FILE cannot be read\n"
            "  73  -o would overwrite a file (use --force)\n\n"
            "example:\n"
            "  bridgectl import-ifupdown -o /root/bridged.toml\n"
            "  bridged --check-config --config /root/bridged.toml\n"
            "then follow \"Coming from /etc/network/interfaces\" in bridged's README: its\n"
            "order keeps an SSH session up."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("file", nargs="?", metavar="FILE",
                     help="the interfaces file (default: /etc/network/interfaces)")
    imp.add_argument("-o", "--output", metavar="PATH",
                     help="write the TOML to PATH (the report still goes to stdout)")
    imp.add_argument("--force", action="store_true", help="let -o overwrite PATH")
    return parser


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "status": cmd_status, "list": cmd_list, "create": cmd_create, "release": cmd_release,
    "monitor": cmd_monitor, "run": cmd_run, "retry": cmd_retry,
}
# Commands that never talk to bridged: they run before it is installed or configured.
LOCAL_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "import-ifupdown": cmd_import_ifupdown,
}


async def run_command(args: argparse.Namespace) -> int:
    client = await Client.connect(args.bus_address)
    try:
        return await COMMANDS[args.command_name](client, args)
    finally:
        if client.bus.connected:
            client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for option in ("bus_address", "json"):  # SUPPRESSed when not given at all
        setattr(args, option, getattr(args, option, None))
    try:
        if args.command_name in LOCAL_COMMANDS:
            return LOCAL_COMMANDS[args.command_name](args)
        return asyncio.run(run_command(args))
    except ClientError as exc:
        print(f"bridgectl: {exc.message}", file=sys.stderr)
        return _EXIT_FOR_ERROR.get(exc.name, EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
