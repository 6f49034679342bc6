"""The guards' per-port work as raw nf_tables netlink (bridged/kernel/nftnl.py), checked
against the real kernel and against libnftables' own view of the same table.

Each test runs in a network namespace of its own (nf_tables is per namespace), entered
by this process; nft's JSON output and libnftables are the oracle.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator

import pytest

from bridged.kernel import nft, nftnl
from tests.lab import NetNS

pytestmark = [pytest.mark.root]
LOG_GROUP = 0x6267
MAC = "52:54:00:12:34:56"


@pytest.fixture
def ns() -> Iterator[NetNS]:
    space = NetNS("bridged-nftnl")
    try:
        with space.entered():
            yield space
    finally:
        space.close()


def listed(space: NetNS) -> dict[str, list[object]]:
    """set name -> its elements, as nft itself lists them."""
    out = json.loads(space.exec("nft", "-j", "list", "table", "bridge", "bridged").stdout)
    sets: dict[str, list[object]] = {}
    for item in out["nftables"]:
        body = item.get("set") or item.get("map")
        if body is not None:
            sets[body["name"]] = body.get("elem", [])
    return sets


def test_guard_port_writes_what_libnftables_writes(ns: NetNS) -> None:
    ctx = nft.Nft()
    nft.replace_table(ctx, LOG_GROUP, [nft.Port("tap1", MAC)])  # libnftables' text
    nft.guard_port(ctx, LOG_GROUP, "tap2", MAC)  # raw netlink
    nft.guard_port(ctx, LOG_GROUP, "tap3", None)
    current = nft.read_table(ctx)
    assert current is not None
    ports = current[1]
    assert set(ports) == {"tap1", "tap2", "tap3"}
    assert ports["tap2"].mac == ports["tap1"].mac == MAC
    assert ports["tap3"].mac is None
    # The same elements, byte for byte as nft shows them, for the port written each way.
    sets = listed(ns)
    text = json.dumps(sets)
    assert text.count('"tap2"') == text.count('"tap1"')
    # No counter until a port drops something: the kernel makes it then.
    assert sets["dropped"] == []
    assert ports["tap2"].dropped == ports["tap1"].dropped == {}


def test_guard_port_puts_a_flushed_table_back(ns: NetNS) -> None:
    ctx = nft.Nft()
    nft.guard_port(ctx, LOG_GROUP, "tap1", MAC)  # no table yet: made, then the port
    current = nft.read_table(ctx)
    assert current is not None and set(current[1]) == {"tap1"}


def test_counters_and_learned_mac_read_raw_match_libnftables(ns: NetNS) -> None:
    ctx = nft.Nft()
    ports = [nft.Port("tap1", MAC, {1: (5, 300), 4: (2, 180)}), nft.Port("tap2", None)]
    nft.replace_table(ctx, LOG_GROUP, ports)
    assert nft.read_dropped(ctx, "tap1") == {1: (5, 300), 4: (2, 180)}
    assert nft.learned_mac(ctx, "tap1") == MAC
    assert nft.learned_mac(ctx, "tap2") is None
    assert nft.read_dropped(ctx, "nosuchtap") == {}
    # libnftables' own answer for the same element
    out = ctx.run("get element bridge bridged dropped { \"tap1\" . 1 }")
    assert "counter packets 5 bytes 300" in out


def test_unguard_ports_removes_each_port_and_reports_its_counters(ns: NetNS) -> None:
    ctx = nft.Nft()
    nft.replace_table(ctx, LOG_GROUP, [nft.Port("tap1", MAC, {3: (7, 420)}),
                                       nft.Port("tap2", None), nft.Port("tap3", None)])
    result = nft.unguard_ports(ctx, [("tap1", MAC), ("tap2", None)])
    assert result == {"tap1": {3: (7, 420)}, "tap2": {}}
    current = nft.read_table(ctx)
    assert current is not None and set(current[1]) == {"tap3"}
    assert "tap1" not in json.dumps(listed(ns))


def test_counters_the_kernel_made_go_with_their_port(ns: NetNS) -> None:
    """The kernel makes a (port, reason) counter at the first drop (``update
    @dropped``); a release deletes those there are, and only those, in one transaction,
    and a rename moves them."""
    ctx = nft.Nft()
    nft.replace_table(ctx, LOG_GROUP, [nft.Port("tap1", MAC), nft.Port("tap2", None)])
    # What the rules' update statement does at a drop, done by hand.
    ctx.run('add element bridge bridged dropped { "tap1" . 5 counter packets 2 bytes 684 }')
    ctx.run('add element bridge bridged dropped { "tap2" . 1 counter packets 0 bytes 0 }')
    nft.rename_port(ctx, "tap1", "vm1", MAC)
    assert nft.read_dropped(ctx, "vm1") == {5: (2, 684)}
    assert nft.read_dropped(ctx, "tap1") == {}
    result = nft.unguard_ports(ctx, [("vm1", MAC), ("tap2", None)])
    assert result == {"vm1": {5: (2, 684)}, "tap2": {1: (0, 0)}}
    assert listed(ns)["dropped"] == [] and listed(ns)["guarded"] == []


def test_unguard_ports_asks_the_kernel_for_a_mac_it_learned(ns: NetNS) -> None:
    """A port whose first frame's sample was not read yet: its learned MAC is in the
    table all the same, and must go with it."""
    ctx = nft.Nft()
    nft.replace_table(ctx, LOG_GROUP, [nft.Port("tap1", MAC)])
    assert nft.unguard_ports(ctx, [("tap1", None)])["tap1"] == {}
    sets = listed(ns)
    assert not sets["learned"] and not sets["macs"] and not sets["guarded"]


def test_a_port_the_table_lacks_fails_alone(ns: NetNS) -> None:
    ctx = nft.Nft()
    nft.replace_table(ctx, LOG_GROUP, [nft.Port("tap1", MAC)])
    result = nft.unguard_ports(ctx, [("tap1", MAC), ("tap9", None)])
    assert result["tap1"] == {}
    error = result["tap9"]
    assert isinstance(error, nft.NftError) and error.missing
    with pytest.raises(nft.NftError) as failed:
        nft.unguard_port(ctx, "tap1", MAC)
    assert failed.value.missing


def test_one_transaction_is_all_or_nothing(ns: NetNS) -> None:
    ctx = nft.Nft()
    nft.replace_table(ctx, LOG_GROUP, [])
    sock = nftnl.NftSocket()
    good = nftnl.Element("guarded", nftnl.ifname_key("tap1"))
    bad = nftnl.Element("nosuchset", nftnl.ifname_key("tap1"))
    with pytest.raises(OSError):
        sock.add(nft.TABLE, [good, bad])
    assert not listed(ns)["guarded"]
    sock.close()


def test_forget_mac(ns: NetNS) -> None:
    ctx = nft.Nft()
    nft.replace_table(ctx, LOG_GROUP, [nft.Port("tap1", MAC)])
    ctx.run('add element bridge bridged macs { "tap1" . 52:54:00:66:66:66 }')
    nft.forget_mac(ctx, "tap1", "52:54:00:66:66:66")
    nft.forget_mac(ctx, "tap1", "52:54:00:77:77:77")  # absent: nothing to do
    current = nft.read_table(ctx)
    assert current is not None and current[1]["tap1"].extra_macs == []


def test_reading_counters_does_not_grow_with_the_table(ns: NetNS) -> None:
    """The release path's regression: libnftables read every set to answer for one
    port (~52 ms at 1000 guarded ports). The kernel finds the elements by key."""
    ctx = nft.Nft()
    nft.replace_table(ctx, LOG_GROUP, [
        nft.Port(f"tap{i}", f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}", {1: (1, 60)})
        for i in range(1000)])

    def timed(name: str) -> float:
        start = time.perf_counter()
        nft.read_dropped(ctx, name)
        nft.learned_mac(ctx, name)
        return (time.perf_counter() - start) * 1000

    raw = statistics.median(timed(f"tap{i}") for i in range(0, 1000, 50))
    start = time.perf_counter()
    ctx.run('get element bridge bridged dropped { "tap500" . 1 }')  # what it replaced
    libnftables = (time.perf_counter() - start) * 1000
    assert raw < 5, f"raw counters read took {raw:.2f} ms at 1000 ports"
    assert raw * 5 < libnftables, (raw, libnftables)


def test_many_ports_released_at_once_fit_a_default_receive_buffer(ns: NetNS) -> None:
    """Releasing many guarded taps at once looks up six counters each: each lookup brings
    an ack, more than a socket holds with Debian's default net.core.rmem_max (208 KiB,
    doubled) unless they go in parts."""
    import socket

    ctx = nft.Nft()
    ports = [nft.Port(f"tap{n}", None) for n in range(500)]
    nft.replace_table(ctx, LOG_GROUP, ports)
    ctx.raw._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 212992)
    result = nft.unguard_ports(ctx, [(port.name, None) for port in ports])
    assert result == {port.name: {} for port in ports}
    assert "tap499" not in json.dumps(listed(ns))
