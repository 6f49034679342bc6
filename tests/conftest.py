from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.buslab import PrivateBus, ensure_users
from tests.lab import REPO, Daemon, Lab
from tests.test_bridge import SEED
from tests.vmlab import GuestImage, build_guest


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


@pytest.fixture
def daemon(bus: PrivateBus, daemon_factory: Callable[..., Daemon]) -> Daemon:
    """bridged with the seed's setup, serving on the private bus. A module that needs
    another configuration defines its own ``daemon``."""
    return daemon_factory(SEED, extra_args=("--bus-address", bus.address)).start()


@pytest.fixture(scope="module")
def image() -> GuestImage:
    """A guest kernel and initramfs built from Debian packages (cached on disk)."""
    return build_guest()


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


@pytest.fixture(scope="session")
def deb() -> Path:
    """The Debian package built from this checkout, once per test session."""
    for old in (REPO / "dist").glob("bridged_*.deb"):
        old.unlink()
    subprocess.run([str(REPO / "scripts" / "build-deb")], check=True, capture_output=True,
                   timeout=900)
    arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()
    [package] = (REPO / "dist").glob(f"bridged_*_{arch}.deb")
    return package


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
