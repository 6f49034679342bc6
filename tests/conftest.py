from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator

import pytest

from tests.buslab import PrivateBus, ensure_users
from tests.lab import REPO, Daemon, Lab


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


@pytest.fixture(scope="session")
def helper_binary() -> Iterator[str]:
    """bridged-helper built from helper/ with its own Makefile, as the package builds it,
    into a directory the test users can read (pytest's tmp_path is root's only)."""
    missing = [tool for tool in ("make", "gcc", "pkg-config") if shutil.which(tool) is None]
    if not missing and subprocess.run(["pkg-config", "--exists", "libsystemd"]).returncode != 0:
        missing.append("libsystemd-dev")
    if missing:
        pytest.skip(f"cannot build bridged-helper without {', '.join(missing)} "
                    "(scripts/install-deps)")
    out = tempfile.mkdtemp(prefix="bridged-helper-")
    os.chmod(out, 0o755)
    try:
        build = subprocess.run(["make", "-f", str(REPO / "helper" / "Makefile"), "-C", out],
                               capture_output=True, text=True, timeout=120)
        assert build.returncode == 0, f"bridged-helper does not build:\n{build.stderr}"
        yield os.path.join(out, "bridged-helper")
    finally:
        shutil.rmtree(out, ignore_errors=True)


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
