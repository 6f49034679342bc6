"""After an IP move: does the host still reach its gateway through the bridge?

A neighbour probe (ARP for IPv4, neighbour solicitation for IPv6) on the bridge, made
by the kernel at our request: it proves the bridge, the uplink and the LAN carry
traffic both ways, and sends nothing beyond the LAN. Nobody needs to be there to
confirm anything (as NetworkManager checkpoints and `netplan try` need).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

from bridged.kernel import neigh
from bridged.kernel.netlink import Netlink

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# How often to ask again while no answer came: the kernel itself sends a few requests
# a second apart for each ask, then gives up (NUD_FAILED).
RESOLICIT_S = 1.0


async def reachable(netlink: Netlink, index: int, gateway: Address, timeout: float) -> bool:
    """True as soon as ``gateway`` answers on link ``index``; False after ``timeout``."""
    answered = asyncio.Event()
    failed = asyncio.Event()

    def changed(ifindex: int, address: Address, nud: int) -> None:
        if ifindex != index or address != gateway:
            return
        if nud & neigh.ANSWERED:
            answered.set()
        elif nud & neigh.NUD_FAILED:
            failed.set()

    # Listen first, then ask: no answer can fall between the two.
    watch = neigh.NeighbourWatch(changed)
    deadline = time.monotonic() + timeout
    try:
        while not answered.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            failed.clear()
            await netlink.run(neigh.solicit, index, gateway)
            if await netlink.run(neigh.state, index, gateway) & neigh.ANSWERED:
                return True
            waits = [asyncio.ensure_future(answered.wait()), asyncio.ensure_future(failed.wait())]
            await asyncio.wait(waits, timeout=min(left, RESOLICIT_S),
                               return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
        return True
    finally:
        watch.close()
