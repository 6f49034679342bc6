"""What the kernel layer reports: links, addresses, routes, FDB entries. Plain values."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

RT_SCOPE_UNIVERSE = 0
RTPROT_BOOT = 3  # what `ip route add` uses
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTNH_F_ONLINK = 0x4
INFINITY_LIFE_TIME = 0xFFFFFFFF  # an address lifetime that never runs out ("forever")
# Neighbour (FDB) entry flags and states (linux/neighbour.h).
NTF_SELF, NTF_MASTER, NTF_EXT_LEARNED = 0x02, 0x04, 0x10
NUD_PERMANENT = 0x80
# The MAC of a VXLAN flood entry: broadcast, multicast and unknown unicast go to its dst.
ZERO_MAC = "00:00:00:00:00:00"
# RFC 8200: a link that carries IPv6 has an MTU of at least 1280; the kernel disables
# IPv6 on a device below that and refuses to add an IPv6 address to it.
IPV6_MIN_MTU = 1280

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    master: int | None
    up: bool
    operstate: str
    address: str | None
    perm_address: str | None
    alias: str | None
    mtu: int
    family: int = 0
    # IFLA_CARRIER; None when not reported. A tun/tap has carrier while a file
    # descriptor is attached to it.
    carrier: bool | None = None


@dataclass(frozen=True)
class Address:
    """An address as the kernel reported it.

    Equal addresses are the same address on the link (interface and scope): flags and
    lifetimes change while it lives (a DHCP renewal, the end of duplicate detection),
    so they are carried but not compared.
    """

    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    scope: int
    flags: int = field(default=0, compare=False)  # IFA_F_*: IFA_FLAGS, else ifa_flags
    # Seconds left, as the kernel counted when it answered (IFA_CACHEINFO).
    preferred_lft: int = field(default=INFINITY_LIFE_TIME, compare=False)
    valid_lft: int = field(default=INFINITY_LIFE_TIME, compare=False)
    broadcast: ipaddress.IPv4Address | None = field(default=None, compare=False)
    metric: int | None = field(default=None, compare=False)  # IFA_RT_PRIORITY

    @property
    def is_global(self) -> bool:
        return self.scope == RT_SCOPE_UNIVERSE

    @property
    def is_permanent(self) -> bool:
        """No lifetime: configured, not leased (DHCP) or autoconfigured (SLAAC)."""
        return self.valid_lft == INFINITY_LIFE_TIME


@dataclass(frozen=True)
class NextHop:
    """One hop of a multipath route (struct rtnexthop and its attributes)."""

    index: int  # the interface it leaves through
    gateway: IPAddress | None = None
    weight: int = 1  # rtnh_hops + 1, as `ip route` shows it
    flags: int = 0  # RTNH_F_*: onlink, and what the kernel sets (dead, linkdown)
    extra: bytes = b""  # the hop's other attributes (realms, encapsulation), raw

    @property
    def onlink(self) -> bool:
        return bool(self.flags & RTNH_F_ONLINK)


@dataclass(frozen=True)
class Route:
    """A route. The first five fields are what a configured route needs; the rest is
    what the kernel reported, kept so that the route can be re-created through another
    interface as it was (``via``).

    Equal routes agree on everything but ``expires``, which counts down.
    """

    destination: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: IPAddress | None  # an IPv6 gateway of an IPv4 route is RTA_VIA
    priority: int | None = None
    protocol: int = RTPROT_BOOT
    scope: int = RT_SCOPE_UNIVERSE
    oif: int | None = None  # RTA_OIF; None for a multipath route (see multipath)
    table: int = RT_TABLE_MAIN
    type: int = RTN_UNICAST
    tos: int = 0
    flags: int = 0  # rtm_flags: RTNH_F_ONLINK, and what the kernel sets
    prefsrc: IPAddress | None = None
    metrics: bytes = b""  # RTA_METRICS payload (RTAX_MTU, RTAX_ADVMSS...), raw
    multipath: tuple[NextHop, ...] = ()
    pref: int | None = None  # RTA_PREF, an IPv6 router's preference
    source: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # RTA_SRC
    expires: int | None = field(default=None, compare=False)  # seconds left (IPv6)

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0

    @property
    def onlink(self) -> bool:
        return bool(self.flags & RTNH_F_ONLINK)

    @property
    def interfaces(self) -> tuple[int, ...]:
        """Every interface the route leaves through."""
        hops = tuple(hop.index for hop in self.multipath)
        return hops if self.oif is None else (self.oif, *hops)

    def leaves_via(self, index: int) -> bool:
        return index in self.interfaces

    def via(self, new: int, old: int) -> Route:
        """This route through interface ``new`` wherever it went through ``old``."""
        hops = tuple(replace(hop, index=new) if hop.index == old else hop
                     for hop in self.multipath)
        return replace(self, oif=new if self.oif == old else self.oif, multipath=hops)


@dataclass(frozen=True)
class VxlanInfo:
    """A VXLAN device's own settings (IFLA_INFO_DATA), as the kernel reports them."""

    vni: int
    local: IPAddress | None  # None: no source address set
    port: int  # UDP destination port
    learning: bool  # learns remote MACs from the packets it receives


@dataclass(frozen=True)
class FdbEntry:
    """One forwarding database entry (an AF_BRIDGE neighbour).

    In a VXLAN device's own table (``NTF_SELF``) ``dst`` is the remote VTEP the MAC is
    behind; an all-zeros MAC is a flood entry (head-end replication to ``dst``). The
    entry is the pair (mac, dst): one MAC may name several VTEPs (flood entries do).
    """

    index: int  # the device (the bridge port, for the bridge's own entries)
    mac: str
    dst: IPAddress | None = None
    flags: int = 0  # NTF_*
    state: int = 0  # NUD_*
    vni: int | None = None  # NDA_VNI: only when it is not the device's own
    port: int | None = None  # NDA_PORT: only when it is not the device's own
    master: int | None = None  # NDA_MASTER: the bridge, for its entries

    @property
    def flood(self) -> bool:
        return self.mac == ZERO_MAC

    @property
    def own(self) -> bool:
        """In the device's own table (NTF_SELF), not the bridge's (NTF_MASTER)."""
        return bool(self.flags & NTF_SELF)

    @property
    def extern_learn(self) -> bool:
        """Installed by a control plane (FRR's zebra: a MAC BGP EVPN told of)."""
        return bool(self.flags & NTF_EXT_LEARNED)

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)
