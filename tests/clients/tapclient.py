"""A VM launcher stand-in, run as an unprivileged user: it asks bridged for a tap over
D-Bus and uses the fd it gets, as qemu would.

usage: tapclient.py ADDRESS open OPTIONS_JSON [--arp MY_IP PEER_IP] [--hold SECONDS | --stdin]
       tapclient.py ADDRESS create-exec OPTIONS_JSON -- PROGRAM ARGS...
Prints one JSON line with what happened. With --stdin it then writes the frames it reads
from stdin into the tap (one hex string a line; "ok" after each) until end of file, as
a guest would send them.
"""

import asyncio
import json
import os
import select
import socket
import sys
import time

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

SIGS = {"name": "s", "label": "s", "queues": "u", "vnet_hdr": "b", "mtu": "u",
        "vlan": "q", "isolated": "b", "linger": "b", "pid": "u", "bogus": "s",
        "mac": "s", "trusted": "b"}


def variants(options):
    return {k: Variant(SIGS.get(k, "s"), v) for k, v in options.items()}


async def call(address, member, options):
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM,
                           negotiate_unix_fd=True).connect()
    reply = await bus.call(Message(
        destination="org.bridged.Bridged1", path="/org/bridged/Bridged1",
        interface="org.bridged.Bridged1.Manager", member=member, signature="a{sv}",
        body=[variants(options)]))
    bus.disconnect()
    return reply


def arp_exchange(fd, my_ip, peer_ip):
    """Send an ARP who-has for peer_ip out of the tap; wait for the peer's reply."""
    mac = bytes([0x02, 0x00, 0x5E, 0x10, 0x00, 0x01])
    frame = (b"\xff" * 6 + mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac
             + socket.inet_aton(my_ip) + b"\x00" * 6 + socket.inet_aton(peer_ip))
    os.write(fd, frame)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        data = os.read(fd, 2048)
        if data[12:14] == b"\x08\x06" and data[20:22] == b"\x00\x02" and \
                data[28:32] == socket.inet_aton(peer_ip) and data[0:6] == mac:
            return True
    return False


async def main():
    address, command, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    rest = sys.argv[4:]
    if command == "open":
        reply = await call(address, "OpenTap", options)
        if reply.message_type == MessageType.ERROR:
            print(json.dumps({"error": reply.error_name, "message": reply.body[0]}))
            return
        path, ifname, fd_indexes = reply.body
        fds = [reply.unix_fds[i] for i in fd_indexes]
        result = {"path": path, "ifname": ifname, "fds": len(fds)}
        if "--arp" in rest:
            i = rest.index("--arp")
            result["arp_reply"] = arp_exchange(fds[0], rest[i + 1], rest[i + 2])
        print(json.dumps(result), flush=True)
        if "--hold" in rest:
            time.sleep(float(rest[rest.index("--hold") + 1]))
        if "--stdin" in rest:
            for line in sys.stdin:
                if line.strip():
                    os.write(fds[0], bytes.fromhex(line.strip()))
                    print("ok", flush=True)
        for fd in fds:
            os.close(fd)
    elif command == "create-exec":
        reply = await call(address, "CreateTap", options)
        if reply.message_type == MessageType.ERROR:
            print(json.dumps({"error": reply.error_name, "message": reply.body[0]}))
            return
        print(json.dumps({"path": reply.body[0], "ifname": reply.body[1]}), flush=True)
        program = rest[rest.index("--") + 1:]
        os.execvp(program[0], program)


asyncio.run(main())
