"""Stands in for qemu behind `bridgectl run`: checks that every fd named in the
-netdev argument is open and is a queue of a tap, and prints what it found as JSON."""

import fcntl
import json
import struct
import sys

TUNGETIFF = 0x800454D2
IFF_TAP, IFF_VNET_HDR, IFF_MULTI_QUEUE = 0x0002, 0x4000, 0x0100

argv = sys.argv[1:]
netdev = argv[argv.index("-netdev") + 1]
device = argv[argv.index("-device") + 1]
opts = dict(part.split("=", 1) for part in netdev.split(",")[1:])
fds = [int(fd) for fd in (opts.get("fd") or opts["fds"]).split(":")]
taps = []
for fd in fds:
    ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    name, flags = struct.unpack("16sH", ifr[:18])
    taps.append({"fd": fd, "ifname": name.rstrip(b"\0").decode(), "tap": bool(flags & IFF_TAP),
                 "vnet_hdr": bool(flags & IFF_VNET_HDR),
                 "multi_queue": bool(flags & IFF_MULTI_QUEUE)})
print(json.dumps({"netdev": netdev, "device": device, "taps": taps}), flush=True)
