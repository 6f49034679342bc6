"""Races between the daemon and the kernel, made to happen every time: no root.

The real ``Daemon`` (its wiring, its start order, its BridgeManager, TapRegistry and
LinkTable) runs on an asyncio loop over an in-memory kernel (tests/fakenetlink.py);
only ``Netlink``, ``LinkMonitor`` and ``Notifier`` are swapped. Hooks change the kernel
at chosen requests, so "a tap's fd closes while the start-up dump is in flight" is a
line of the test, not a matter of luck. Several tests sweep a disturbance across every
request of a sequence.

A daemon killed with SIGKILL is a loop that ends (``asyncio.run`` returns): nothing of
it runs again, the kernel keeps what it had.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import ipaddress
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import bridged.daemon as daemon_module
import bridged.taps as taps_module
from bridged.auth import Caller
from bridged.config import Config, parse
from bridged.errors import Failed
from bridged.kernel.netlink import Link, Route, TapSpec
from bridged.notify import Notifier
from bridged.taps import Tap, TapRequest, process_start_time
from tests.fakenetlink import FakeKernel, FakeMonitor, FakeNetlink

HOST = "198.51.100.2/24"
GATEWAY = "198.51.100.1"
# No guards (nftables) and no probe of the gateway after the move (neighbour requests):
# both would go to the machine's own kernel, not the fake one.
CONFIG = {
    "bridge": {"name": "br0", "uplinks": ["eth0"]},
    "ip": {"mode": "static", "addresses": [HOST], "gateway": GATEWAY, "probe_timeout": 0},
    "taps": {"guard": False},
}
ROOT = Caller(uid=0, pid=os.getpid(), gids=frozenset())
LINGER = TapRequest(linger=True)


class ReadyNotifier(Notifier):
    """sd_notify as the tests see it: READY=1 sets an event."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.is_ready = asyncio.Event()

    def ready(self, status: str) -> None:
        super().ready(status)
        self.is_ready.set()


class Stack:
    """One life of the daemon over ``kernel``: ``start()`` returns at READY=1."""

    def __init__(self, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch,
                 config: dict[str, Any] | None = None, bus_address: str | None = None) -> None:
        self.kernel = kernel
        self.bus_address = bus_address
        monkeypatch.setattr(daemon_module, "Netlink", lambda name: FakeNetlink(kernel, name))
        monkeypatch.setattr(daemon_module, "LinkMonitor",
                            lambda *args, **kwargs: FakeMonitor(kernel, *args, **kwargs))
        monkeypatch.setattr(daemon_module, "Notifier", ReadyNotifier)
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        self.config: Config = parse(config or CONFIG, "/test/bridged.toml")
        self.added: list[str] = []  # what the bus would have announced
        self.removed: list[str] = []
        self.uplink_events: list[tuple[str, str]] = []
        self.unreadable: set[str] = set()  # taps with a mangled ifalias: left alone

    async def start(self) -> None:
        where = ["--bus-address", self.bus_address] if self.bus_address else ["--no-bus"]
        args = daemon_module.build_parser().parse_args(
            [*where, "--config", self.config.path])
        self.daemon = daemon_module.Daemon(self.config, args)
        self.daemon.taps.on_added.append(lambda tap: self.added.append(tap.name))
        self.daemon.taps.on_removed.append(lambda tap: self.removed.append(tap.name))
        self.daemon.bridge.on_uplink_changed.append(
            lambda name, state: self.uplink_events.append((name, state)))
        self.task = asyncio.get_running_loop().create_task(self.daemon.run())
        notifier = self.daemon.notifier
        assert isinstance(notifier, ReadyNotifier)
        ready = asyncio.get_running_loop().create_task(notifier.is_ready.wait())
        await asyncio.wait({self.task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            ready.cancel()
            raise AssertionError(f"the daemon exited with {self.task.result()} before READY")

    async def stop(self) -> int:
        self.daemon._stop.set()
        return await self.task

    @property
    def taps(self) -> set[str]:
        """ListTaps."""
        return set(self.daemon.taps.taps)

    @property
    def bridge_index(self) -> int:
        index = self.daemon.bridge.index
        assert index is not None
        return index

    async def open(self) -> Tap:
        tap, fds = await self.daemon.taps.open(ROOT, TapRequest())
        assert fds, "OpenTap gives fds"
        return tap

    async def create(self) -> Tap:
        return await self.daemon.taps.create(ROOT, LINGER)

    def assert_true_to_the_kernel(self) -> None:
        """The registry, the link table and what was announced all match the kernel."""
        kernel = self.kernel
        assert self.taps == kernel.bridged_taps() - self.unreadable, \
            "ListTaps differs from the kernel"
        table = {link.index: link for link in self.daemon.links}
        assert table == kernel.links, "the link table differs from the kernel"
        announced = set(self.added)
        for name in self.removed:  # what a bus client following the signals believes
            announced.discard(name)
        assert announced == self.taps, "the signals do not add up to ListTaps"
        for name in self.taps:
            link = kernel.by_name(name)
            assert link is not None
            assert link.master == self.bridge_index and link.up, f"{name} is off the bridge"


async def settle(kernel: FakeKernel) -> None:
    """Run the loop until the daemon stops making requests and no event waits."""
    quiet, seen = 0, -1
    for _ in range(20000):
        await asyncio.sleep(0)
        if kernel.auto_deliver and kernel.queue:
            kernel.deliver()
        if len(kernel.requests) == seen and not kernel.queue:
            quiet += 1
            if quiet >= 60:
                return
        else:
            quiet, seen = 0, len(kernel.requests)
    raise AssertionError("the daemon never settled")


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 10))


def plain_host() -> FakeKernel:
    """A host before bridged: eth0 up with the host's address and default route."""
    kernel = FakeKernel()
    kernel.add("lo", None, up=True)
    eth0 = kernel.add("eth0", "veth", up=True, address="52:54:00:12:34:56",
                      perm_address="52:54:00:12:34:56")
    kernel.add_address(eth0.index, ipaddress.ip_interface(HOST))
    kernel.routes[eth0.index].append(Route(ipaddress.ip_network("0.0.0.0/0"),
                                           ipaddress.ip_address(GATEWAY), oif=eth0.index))
    kernel.queue.clear()
    return kernel


def previous_life(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeKernel, dict[str, str]]:
    """A daemon that made two taps (one OpenTap, one lingering) and was killed.

    Returns the kernel it left and which tap is which kind.
    """
    kernel = plain_host()
    kinds: dict[str, str] = {}

    async def life() -> None:
        stack = Stack(kernel, monkeypatch)
        await stack.start()
        kinds[(await stack.open()).name] = "open"
        kinds[(await stack.create()).name] = "linger"
        await settle(kernel)
        stack.assert_true_to_the_kernel()

    run(life)  # SIGKILL: the loop ends, the kernel keeps the taps
    kernel.monitor = None
    kernel.queue.clear()
    kernel.requests.clear()
    return kernel, kinds


def alias_for(name: str, **fields: Any) -> str:
    return Tap(name=name, index=0, **fields).alias()


def requests_of_a_start(kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> int:
    probe = copy.deepcopy(kernel)

    async def main() -> None:
        await Stack(probe, monkeypatch).start()

    run(main)
    return len(probe.requests)


# --- the start-up dump and adoption ------------------------------------------------------


def test_a_tap_closed_while_the_start_up_dump_is_in_flight_leaves_no_ghost(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """Issue 11's ghost: the delete arrives after the dump's snapshot, before its end."""
    base, kinds = previous_life(monkeypatch)
    opened = next(name for name, kind in kinds.items() if kind == "open")
    kernel = copy.deepcopy(base)
    kernel.on("links", lambda _args: kernel.delete(kernel.index(opened)), when="after")

    async def main() -> None:
        stack = Stack(kernel, monkeypatch)
        await stack.start()
        await settle(kernel)
        assert opened not in stack.taps and opened not in stack.added
        stack.assert_true_to_the_kernel()

    caplog.set_level(logging.INFO, logger="bridged")
    run(main)
    assert f"tap {opened} adopted" not in caplog.text


def test_a_tap_closed_at_any_moment_of_a_restart_leaves_no_ghost(
        monkeypatch: pytest.MonkeyPatch):
    """The same, at every request the start makes, and just after READY."""
    base, kinds = previous_life(monkeypatch)
    count = requests_of_a_start(base, monkeypatch)
    assert count >= 8, "the start makes the requests the sweep is about"
    for nth in range(count + 2):
        for name in kinds:
            kernel = copy.deepcopy(base)
            kernel.at_request(nth, lambda _args, k=kernel, n=name: k.delete(k.index(n)))

            async def main(kernel: FakeKernel = kernel, name: str = name,
                           nth: int = nth) -> None:
                stack = Stack(kernel, monkeypatch)
                await stack.start()
                if nth >= count:  # after READY
                    kernel.delete(kernel.index(name))
                await settle(kernel)
                assert name not in stack.taps, f"{name} deleted at request {nth}: a ghost"
                stack.assert_true_to_the_kernel()

            run(main)


def test_adoption_registers_exactly_the_taps_in_the_table_and_frees_dead_clients(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    base, kinds = previous_life(monkeypatch)
    kernel = copy.deepcopy(base)
    bridge = kernel.index("br0")
    me, my_start = os.getpid(), process_start_time(os.getpid())
    assert my_start is not None
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)  # a client that exited: its pid names nobody now
    bound = dict(persistent=True, owner_uid=1000)
    kernel.add("tap10", master=bridge, up=True,
               alias=alias_for("tap10", client_pid=me, client_start=my_start, **bound))
    kernel.add("tap11", master=bridge, up=True,
               alias=alias_for("tap11", client_pid=child, client_start=12345, **bound))
    # PID reuse: a live process with the pid, but not the one that asked for the tap.
    kernel.add("tap12", master=bridge, up=True,
               alias=alias_for("tap12", client_pid=me, client_start=my_start + 1, **bound))
    kernel.add("tap13", up=False,  # off the bridge and down while we were away
               alias=alias_for("tap13", persistent=True, owner_uid=1000))
    kernel.add("tap14", master=bridge, up=True)  # not ours: no alias
    kernel.add("tap15", master=bridge, up=True, alias="bridged:uid=oops")  # unreadable
    kernel.queue.clear()

    async def main() -> None:
        stack = Stack(kernel, monkeypatch)
        stack.unreadable = {"tap15"}
        await stack.start()
        await settle(kernel)
        assert stack.taps == {*kinds, "tap10", "tap13"}
        assert kernel.by_name("tap11") is None and kernel.by_name("tap12") is None
        assert kernel.by_name("tap14") is not None and kernel.by_name("tap15") is not None
        tap13 = kernel.by_name("tap13")
        assert tap13 is not None and tap13.master == bridge and tap13.up
        assert stack.daemon.taps.taps["tap10"].client_pid == me
        assert sorted(stack.added) == sorted({*kinds, "tap10", "tap13"})
        stack.assert_true_to_the_kernel()
        assert await stack.stop() == 0

    caplog.set_level(logging.INFO, logger="bridged")
    run(main)
    log = caplog.text
    assert f"tap tap11 removed: client process {child} is gone" in log
    assert f"tap tap12 removed: client process {me} is gone" in log
    assert "tap15 has a bridged ifalias that cannot be read" in log
    assert "br0 has a bridged ifalias" not in log, "the bridge's own mark is not a tap's"
    assert "tap14" not in log
    assert sum(f"tap {n} adopted" in log for n in (*kinds, "tap10", "tap13")) == 4


# --- lost events -------------------------------------------------------------------------


async def running(kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> tuple[Stack, str, str]:
    stack = Stack(kernel, monkeypatch)
    await stack.start()
    opened, lingering = (await stack.open()).name, (await stack.create()).name
    await settle(kernel)
    return stack, opened, lingering


def test_an_overrun_that_lost_a_tap_removal_drops_the_tap_and_tells_the_bus(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    kernel = plain_host()

    async def main() -> None:
        stack, opened, lingering = await running(kernel, monkeypatch)
        kernel.delete(kernel.index(opened))  # its fd closed...
        kernel.lose_events()  # ...and the news of it was lost
        await settle(kernel)
        assert stack.taps == {lingering}
        assert stack.removed == [opened], "the bus hears of it exactly once"
        stack.assert_true_to_the_kernel()

    caplog.set_level(logging.INFO, logger="bridged")
    run(main)
    assert "link picture resynchronised after lost events" in caplog.text
    assert "its last file descriptor was closed" in caplog.text


def test_an_overrun_that_lost_a_detach_puts_the_tap_back(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    kernel = plain_host()

    async def main() -> None:
        stack, opened, lingering = await running(kernel, monkeypatch)
        kernel.change(kernel.index(lingering), master=None)  # networkd restarting, say
        kernel.change(kernel.index(opened), up=False)
        kernel.lose_events()
        await settle(kernel)
        for name in (opened, lingering):
            link = kernel.by_name(name)
            assert link is not None and link.master == stack.bridge_index and link.up
        assert stack.removed == [] and stack.taps == {opened, lingering}
        stack.assert_true_to_the_kernel()

    caplog.set_level(logging.INFO, logger="bridged")
    run(main)
    assert "was taken off br0 by another process; putting it back" in caplog.text
    assert caplog.text.count("is on br0 again") == 2


def test_a_tap_detached_by_another_tool_is_reattached_and_logged(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    kernel = plain_host()

    async def main() -> None:
        stack, opened, _lingering = await running(kernel, monkeypatch)
        for _ in range(3):  # `ip link set tapN nomaster`, again and again
            kernel.change(kernel.index(opened), master=None)
            kernel.deliver()
            await settle(kernel)
            link = kernel.by_name(opened)
            assert link is not None and link.master == stack.bridge_index
        stack.assert_true_to_the_kernel()

    caplog.set_level(logging.INFO, logger="bridged")
    run(main)
    assert caplog.text.count("was taken off br0 by another process; putting it back") == 3
    assert caplog.text.count("is on br0 again") == 3


def test_a_tap_going_down_on_its_way_out_is_given_time_to_go(
        monkeypatch: pytest.MonkeyPatch):
    """The kernel reports a tap whose last fd closed down, still on the bridge, without
    carrier, milliseconds before it reports it gone: not put back up at once (that
    request would only fail with ENODEV, in the way of creations), but looked at again
    after a grace, so that one whose carrier its own client turned off (TUNSETCARRIER
    needs no privilege) and that someone set down is put back up all the same. Taken
    off the bridge, it is put back at once, carrier or not. A lingering tap, which has no
    carrier while no VM holds it, set down by someone is put back up at once."""
    monkeypatch.setattr(taps_module, "DYING_GRACE_S", 0.05)
    kernel = plain_host()

    async def main() -> None:
        stack, opened, lingering = await running(kernel, monkeypatch)
        index = kernel.index(opened)
        before = len(kernel.requests)
        kernel.change(index, up=False, carrier=False)  # its last fd closed
        kernel.deliver()
        await settle(kernel)
        assert kernel.requests[before:] == []
        kernel.delete(index)  # ... and the kernel says it is gone
        kernel.deliver()
        await asyncio.sleep(0.1)
        await settle(kernel)
        assert kernel.requests[before:] == [] and opened not in stack.taps

        second = (await stack.open()).name
        await settle(kernel)
        kernel.change(kernel.index(second), up=False, carrier=False)  # not dying after all
        kernel.deliver()
        await settle(kernel)
        link = kernel.by_name(second)
        assert link is not None and not link.up
        await asyncio.sleep(0.1)
        await settle(kernel)
        link = kernel.by_name(second)
        assert link is not None and link.up and link.master == stack.bridge_index

        kernel.change(kernel.index(second), master=None, up=False, carrier=False)
        kernel.deliver()
        await settle(kernel)
        link = kernel.by_name(second)
        assert link is not None and link.master == stack.bridge_index

        kernel.change(kernel.index(lingering), up=False, carrier=False)
        kernel.deliver()
        await settle(kernel)
        link = kernel.by_name(lingering)
        assert link is not None and link.up and link.master == stack.bridge_index

    run(main)


def test_an_overrun_that_lost_an_uplink_replug_enslaves_the_new_one(
        monkeypatch: pytest.MonkeyPatch):
    kernel = plain_host()

    async def main() -> None:
        stack, _, _ = await running(kernel, monkeypatch)
        kernel.delete(kernel.index("eth0"))
        kernel.add("eth0", "veth", up=True)
        kernel.lose_events()
        await settle(kernel)
        eth0 = kernel.by_name("eth0")
        assert eth0 is not None and eth0.master == stack.bridge_index and eth0.up
        assert ("eth0", "enslaved") in stack.uplink_events
        stack.assert_true_to_the_kernel()

    run(main)


# --- an uplink that vanishes while being enslaved -----------------------------------------


def requests_to_reenslave(monkeypatch: pytest.MonkeyPatch) -> int:
    """How many requests putting eth0 back on br0 takes (taken off by someone)."""
    kernel = plain_host()
    steps: list[int] = []

    async def main() -> None:
        stack, _, _ = await running(kernel, monkeypatch)
        before = len(kernel.requests)
        kernel.change(kernel.index("eth0"), master=None)
        kernel.deliver()
        await settle(kernel)
        link = kernel.by_name("eth0")
        assert link is not None and link.master == stack.bridge_index
        steps.append(len(kernel.requests) - before)

    run(main)
    return steps[0]


def test_an_uplink_that_vanishes_as_it_is_enslaved_is_enslaved_when_it_returns(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """set_link(master) meets ENODEV: the link was moved to another namespace. It comes
    back with the same index (a netns move keeps it): it must not be "given up on"."""
    kernel = plain_host()
    saved: dict[str, Link] = {}

    def vanish(_args: tuple[Any, ...]) -> None:
        eth0 = kernel.by_name("eth0")
        assert eth0 is not None
        saved["eth0"] = eth0
        kernel.delete(eth0.index)

    async def main() -> None:
        stack, _, _ = await running(kernel, monkeypatch)
        eth0 = kernel.index("eth0")
        kernel.on("set_link", vanish,
                  match=lambda args: args[0] == eth0 and "master" in dict(args[1]))
        kernel.change(eth0, master=None)  # someone takes it off: we re-enslave it...
        kernel.deliver()
        await settle(kernel)
        assert kernel.by_name("eth0") is None, "...and it vanished as we did"
        back = saved["eth0"]
        kernel.add("eth0", "veth", up=False, index=back.index, address=back.address)
        kernel.deliver()
        await settle(kernel)
        link = kernel.by_name("eth0")
        assert link is not None and link.master == stack.bridge_index and link.up
        assert ("eth0", "failed") not in stack.uplink_events
        stack.assert_true_to_the_kernel()

    caplog.set_level(logging.INFO, logger="bridged")
    run(main)
    assert "cannot enslave" not in caplog.text


def test_an_uplink_unplugged_at_any_step_of_its_enslaving_is_enslaved_when_replugged(
        monkeypatch: pytest.MonkeyPatch):
    """Unplug eth0 at each request of its re-enslaving (addresses, MAC, master, routes,
    clearing the uplink), then plug it back (a new index): it ends enslaved, the daemon
    never gives up on it, and the bridge keeps the host's address."""
    steps = requests_to_reenslave(monkeypatch)
    assert steps >= 3
    for nth in range(steps):
        kernel = plain_host()

        async def main(kernel: FakeKernel = kernel, nth: int = nth) -> None:
            stack, _, _ = await running(kernel, monkeypatch)
            kernel.at_request(nth, lambda _a, k=kernel: k.delete(k.index("eth0")),
                              when="before")
            kernel.change(kernel.index("eth0"), master=None)
            kernel.deliver()
            await settle(kernel)
            assert kernel.by_name("eth0") is None
            kernel.add("eth0", "veth", up=True)
            kernel.deliver()
            await settle(kernel)
            link = kernel.by_name("eth0")
            assert link is not None and link.master == stack.bridge_index and link.up, \
                f"unplugged at step {nth}: not enslaved after the replug"
            assert ("eth0", "failed") not in stack.uplink_events
            held = {a.interface for a in kernel.addresses[stack.bridge_index]}
            assert ipaddress.ip_interface(HOST) in held
            stack.assert_true_to_the_kernel()

        run(main)


def test_an_uplink_unplugged_at_any_moment_of_the_start_does_not_stop_the_daemon(
        monkeypatch: pytest.MonkeyPatch):
    base = plain_host()
    count = requests_of_a_start(base, monkeypatch)
    for nth in range(count):
        kernel = copy.deepcopy(base)
        kernel.at_request(nth, lambda _a, k=kernel: k.delete(k.index("eth0")), when="before")

        async def main(kernel: FakeKernel = kernel, nth: int = nth) -> None:
            stack = Stack(kernel, monkeypatch)
            try:
                await stack.start()
            except AssertionError as e:
                raise AssertionError(f"eth0 unplugged at start request {nth}: {e}") from None
            await settle(kernel)
            kernel.add("eth0", "veth", up=True)
            kernel.deliver()
            await settle(kernel)
            link = kernel.by_name("eth0")
            assert link is not None and link.master == stack.bridge_index and link.up
            stack.assert_true_to_the_kernel()

        run(main)


# --- creation in flight ------------------------------------------------------------------


def test_a_removal_for_a_tap_whose_creation_is_in_flight_leaves_no_ghost(
        monkeypatch: pytest.MonkeyPatch):
    kernel = plain_host()

    def delete_new_tap(args: tuple[Any, ...]) -> None:
        spec: TapSpec = args[0]
        kernel.delete(kernel.index(spec.name))
        kernel.deliver()  # the removal arrives before create_tap returns

    async def main() -> None:
        stack, opened, lingering = await running(kernel, monkeypatch)
        for make in (stack.open, stack.create):
            kernel.on("create_tap", delete_new_tap, when="after")
            with pytest.raises(Failed, match="was deleted by another process"):
                await make()
            await settle(kernel)
            assert stack.taps == {opened, lingering}
            assert stack.added == [opened, lingering], "never announced"
            stack.assert_true_to_the_kernel()
        for fd in kernel.fds[2:]:  # the failed OpenTap's fd was closed, not leaked
            with pytest.raises(OSError) as e:
                os.fstat(fd)
            assert e.value.errno == errno.EBADF
        # And a tap that goes right after its creation returned (its removal comes later).
        kernel.auto_deliver = False
        tap = await stack.open()
        kernel.delete(tap.index)
        kernel.auto_deliver = True
        kernel.deliver()
        await settle(kernel)
        assert tap.name not in stack.taps and stack.removed == [tap.name]
        stack.assert_true_to_the_kernel()

    run(main)


def test_another_taps_removal_during_a_creation_does_not_fail_it(
        monkeypatch: pytest.MonkeyPatch):
    kernel = plain_host()

    async def main() -> None:
        stack, opened, lingering = await running(kernel, monkeypatch)
        kernel.on("create_tap", lambda _a: kernel.delete(kernel.index(opened)), when="after")
        tap = await stack.create()
        await settle(kernel)
        assert stack.taps == {lingering, tap.name}
        stack.assert_true_to_the_kernel()

    run(main)


def test_concurrent_creations_and_removals_end_true_to_the_kernel(
        monkeypatch: pytest.MonkeyPatch):
    """Eight creations at once while taps are deleted under them, sweeping the moment
    of the deletion across the creations' requests."""
    outcomes: list[type] = []
    for nth in range(12):
        kernel = plain_host()

        async def main(kernel: FakeKernel = kernel, nth: int = nth) -> None:
            stack, _, _ = await running(kernel, monkeypatch)

            def chaos(_a: tuple[Any, ...]) -> None:
                for link in list(kernel.links.values()):
                    if link.name.startswith("tap") and link.index % 2:
                        kernel.delete(link.index)

            kernel.at_request(nth, chaos)
            results = await asyncio.gather(
                *(stack.open() if i % 2 else stack.create() for i in range(8)),
                return_exceptions=True)
            await settle(kernel)
            for result in results:
                assert isinstance(result, (Tap, Failed)), result
                outcomes.append(type(result))
            stack.assert_true_to_the_kernel()

        run(main)
    # The sweep hit creations in flight (refused) and let others through.
    assert Failed in outcomes and Tap in outcomes


def test_the_bridge_deleted_at_any_step_of_an_uplinks_enslaving_is_rebuilt_whole(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """`ip link del br0` while eth0 is being put back on it: a new br0, with the host's
    address, eth0 and every tap on it, and no uplink reported failed."""
    caplog.set_level(logging.INFO, logger="bridged")
    for nth in range(requests_to_reenslave(monkeypatch)):
        kernel = plain_host()

        async def main(kernel: FakeKernel = kernel, nth: int = nth) -> None:
            stack, opened, lingering = await running(kernel, monkeypatch)
            old = stack.bridge_index
            kernel.at_request(nth, lambda _a, k=kernel: k.delete(k.index("br0")),
                              when="before")
            kernel.change(kernel.index("eth0"), master=None)
            kernel.deliver()
            await settle(kernel)
            br0 = kernel.by_name("br0")
            assert br0 is not None and br0.index != old and br0.up, f"step {nth}"
            for name in ("eth0", opened, lingering):
                link = kernel.by_name(name)
                assert link is not None and link.master == br0.index and link.up, \
                    f"br0 deleted at step {nth}: {name} is not on the new br0"
            held = {a.interface for a in kernel.addresses[br0.index]}
            assert ipaddress.ip_interface(HOST) in held
            assert ("eth0", "failed") not in stack.uplink_events, f"step {nth}"
            stack.assert_true_to_the_kernel()

        run(main)
    assert "cannot enslave" not in caplog.text
