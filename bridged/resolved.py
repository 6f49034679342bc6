"""Hand the bridge's DNS servers to systemd-resolved (org.freedesktop.resolve1)."""

from __future__ import annotations

import ipaddress
import logging
import socket

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

log = logging.getLogger(__name__)

RESOLVED = "org.freedesktop.resolve1"


async def set_link_dns(
    bus: MessageBus | None,
    ifname: str,
    ifindex: int,
    servers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...],
) -> bool:
    """SetLinkDNS on resolved; logs and returns False when resolved is not there."""
    if not servers:
        return True
    listed = " ".join(str(s) for s in servers)
    if bus is None:
        log.warning("DNS servers %s for %s not applied: no system bus; configure them "
                    "in /etc/resolv.conf", listed, ifname,
                    extra={"INTERFACE": ifname, "BRIDGED_EVENT": "dns-skipped"})
        return False
    body = [ifindex, [[socket.AF_INET if s.version == 4 else socket.AF_INET6, s.packed]
                      for s in servers]]
    reply = await bus.call(Message(
        destination=RESOLVED, path="/org/freedesktop/resolve1",
        interface="org.freedesktop.resolve1.Manager", member="SetLinkDNS",
        signature="ia(iay)", body=body,
    ))
    if reply is None or reply.message_type == MessageType.ERROR:
        why = reply.body[0] if reply is not None and reply.body else "no reply"
        log.warning("DNS servers %s for %s not applied: systemd-resolved said: %s; configure "
                    "them in /etc/resolv.conf", listed, ifname, why,
                    extra={"INTERFACE": ifname, "BRIDGED_EVENT": "dns-skipped"})
        return False
    log.info("DNS servers %s set on %s through systemd-resolved", listed, ifname,
             extra={"INTERFACE": ifname, "BRIDGED_EVENT": "dns-set"})
    return True
