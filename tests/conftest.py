from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.buslab import PrivateBus, ensure_users
from tests.lab import Daemon, Lab


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def daemon_factory(lab: Lab) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(config: str, **kwargs: object) -> Daemon:
        daemon = Daemon(lab, config, **kwargs)  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.close()


@pytest.fixture
def bus() -> Iterator[PrivateBus]:
    """A private system bus with our policy, and the test users on the machine."""
    ensure_users()
    bus = PrivateBus()
    try:
        yield bus
    finally:
        bus.close()


FIGURES: list[str] = []


@pytest.fixture(scope="session")
def figures() -> Callable[[str], None]:
    """Record a measured figure to print in the test run's summary."""
    return FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
