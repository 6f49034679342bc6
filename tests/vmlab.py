"""A real qemu guest for the end-to-end tests.

The guest is Debian's cloud kernel plus a tiny initramfs of busybox-static and the
virtio-net modules, built from Debian's packages on first use and cached. Its /init
(tests/vm/init) pings the LAN peer, waits to be pinged and powers off. qemu runs with
TCG (KVM is not available on these machines) under a hard timeout.
"""

from __future__ import annotations

import gzip
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.lab import REPO, sh

CACHE = Path(os.environ.get("BRIDGED_GUEST_CACHE", "/var/tmp/bridged-guest"))
GUEST_IP = "198.51.100.3"
MODULES = ["drivers/virtio/virtio_ring", "drivers/virtio/virtio",
           "drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci_modern_dev",
           "drivers/virtio/virtio_pci", "net/core/failover", "drivers/net/net_failover",
           "drivers/net/virtio_net"]


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


def kernel_package() -> str:
    out = sh("apt-cache", "depends", "linux-image-cloud-amd64").stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise RuntimeError("cannot resolve linux-image-cloud-amd64 to a kernel package")


def build_guest() -> GuestImage:
    """Kernel and initramfs, readable by every user; built once, then cached."""
    kernel, initrd = CACHE / "vmlinuz", CACHE / "initrd.gz"
    init = (REPO / "tests" / "vm" / "init").read_bytes()
    stamp = CACHE / "init"
    if kernel.exists() and initrd.exists() and stamp.exists() and stamp.read_bytes() == init:
        return GuestImage(kernel, initrd)
    CACHE.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE, 0o755)
    work = Path(tempfile.mkdtemp(prefix="guest-", dir=CACHE))
    try:
        # apt's sandbox user must be able to write where it downloads.
        os.chmod(work, 0o777)
        subprocess.run(["apt-get", "download", "-q", kernel_package(), "busybox-static"],
                       cwd=work, check=True, capture_output=True, timeout=600)
        for deb in work.glob("*.deb"):
            sh("dpkg-deb", "-x", str(deb), str(work / "x"))
        [version] = os.listdir(work / "x" / "lib" / "modules")
        root = work / "root"
        for d in ("bin", "proc", "sys", "dev", "lib/modules"):
            (root / d).mkdir(parents=True)
        shutil.copy(work / "x" / "bin" / "busybox", root / "bin" / "busybox")
        (root / "init").write_bytes(init)
        os.chmod(root / "init", 0o755)
        for module in MODULES:
            shutil.copy(work / "x" / "lib" / "modules" / version / "kernel" / f"{module}.ko",
                        root / "lib" / "modules")
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        archive = subprocess.run([str(root / "bin" / "busybox"), "cpio", "-o", "-H", "newc"],
                                 cwd=root, input=("\n".join([".", *names]) + "\n").encode(),
                                 capture_output=True, text=False, check=False, timeout=60)
        if archive.returncode != 0:
            raise RuntimeError(f"cpio failed: {archive.stderr!r}")
        (work / "initrd.gz").write_bytes(gzip.compress(archive.stdout, 6))
        shutil.copy(work / "x" / "boot" / f"vmlinuz-{version}", work / "vmlinuz")
        for built in ("vmlinuz", "initrd.gz"):
            os.chmod(work / built, 0o644)
            os.replace(work / built, CACHE / built)
        stamp.write_bytes(init)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return GuestImage(kernel, initrd)


def qemu_command(image: GuestImage, *, memory: int = 192, ip: str = f"{GUEST_IP}/24",
                 peer: str = "198.51.100.1") -> list[str]:
    """qemu with the test guest and no NIC; callers add (or have added) the network.
    ``ip`` may be "dhcp": the guest then asks the LAN's DHCP server."""
    return ["qemu-system-x86_64", "-accel", "tcg", "-m", str(memory), "-smp", "1",
            "-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", f"console=ttyS0 panic=-1 quiet bridged.ip={ip} "
                       f"bridged.peer={peer} bridged.wait=60"]


@dataclass
class GuestRun:
    returncode: int | None = None
    pinged_out: bool = False
    answered_in: bool = False
    lan_pinged: bool = False
    address: str = GUEST_IP  # as the guest reports it (a lease, with ip="dhcp")
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.pinged_out and self.answered_in and self.lan_pinged

    def transcript(self) -> str:
        return "\n".join(self.lines)


class Pinger(Protocol):
    def ping(self, address: str, count: int = 1, timeout: int = 2) -> bool: ...


def run_guest(command: list[str], lan: Pinger, timeout: float = 150) -> GuestRun:
    """Boot the guest with ``command``; ping it from the LAN when it is ready."""
    run = GuestRun()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    buffer = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                run.lines.append(line)
                run.pinged_out |= "GUEST: PING_OUT_OK" in line
                run.answered_in |= "GUEST: PING_IN_OK" in line
                if line.startswith("GUEST: eth0 ") and len(line.split()) > 3:
                    run.address = line.split()[3].split("/")[0]
                if "GUEST: READY_FOR_INBOUND" in line:
                    run.lan_pinged = lan.ping(run.address, count=3, timeout=3)
        else:
            run.lines.append(f"TEST: guest timed out after {timeout}s")
        run.returncode = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    return run
