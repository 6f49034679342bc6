"""libvirt sessions: an unprivileged user's libvirt (qemu:///session) puts a domain on
bridged's bridge with ``<interface type='bridge'>`` and ``bridge_helper`` pointing at
bridged-helper in the user's qemu.conf.

Real libvirt (Debian 12's libvirtd, in session mode: run as the user, with its own
XDG directories), real qemu (TCG), the test guest of tests/vmlab.py booted from its
kernel (direct kernel boot), run as bt-member (group bridged); bt-other, not a member,
gets bridged's one-line refusal. libvirtd runs the helper itself (``--use-vnet
--br=br0 --fd=N``) and hands the fd to qemu. libvirtd and the helper reach the test's
private bus as they would the system bus: a private mount namespace binds its socket
over /run/dbus/system_bus_socket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.buslab import MEMBER, OTHER, PrivateBus
from tests.lab import Daemon, Lab, sh, wait_for
from tests.vmlab import GUEST_IP, GuestImage

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("libvirtd") is None or shutil.which("virsh") is None,
                       reason="libvirt is not installed (scripts/install-deps: "
                              "libvirt-daemon, libvirt-clients, libvirt-daemon-driver-qemu)"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86 is not installed (scripts/install-deps)"),
]

DOMAIN = "bridged-vm1"


class Session:
    """A user's libvirtd (qemu:///session) in the lab's host namespace."""

    def __init__(self, lab: Lab, bus: PrivateBus, user: str, helper: str,
                 open_tun: bool = False) -> None:
        self.user = user
        self.home = Path(tempfile.mkdtemp(prefix=f"bridged-libvirt-{user}-"))
        self.runtime = self.home / "run"
        config = self.home / ".config" / "libvirt"
        config.mkdir(parents=True)
        self.runtime.mkdir(mode=0o700)
        # What the README tells a user to put in ~/.config/libvirt/qemu.conf.
        (config / "qemu.conf").write_text(f'bridge_helper = "{helper}"\n')
        sh("chown", "-R", f"{user}:{user}", str(self.home))
        os.chmod(self.home, 0o755)
        socket_path = bus.address.removeprefix("unix:path=").split(",")[0]
        self.env = {"HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.runtime),
                    "XDG_CONFIG_HOME": str(config.parent),
                    "XDG_CACHE_HOME": str(self.home / ".cache"), "USER": user,
                    "LOGNAME": user, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        # The system bus, as every program in the session sees it: the test's bus.
        # With open_tun, /dev/net/tun is 0666 as udev makes it on a real system (here
        # it is 0600): qemu opens a tap by name itself.
        tun = self.home / "tun"
        if open_tun:
            sh("mknod", "-m", "666", str(tun), "c", "10", "200")
        self.prefix = [
            "ip", "netns", "exec", lab.host.name, "unshare", "--mount", "--propagation",
            "private", "sh", "-ec",
            'mount -t tmpfs -o mode=755 tmpfs /run/dbus && touch /run/dbus/system_bus_socket'
            ' && mount --bind "$0" /run/dbus/system_bus_socket'
            ' && if [ -c "$1" ]; then mount --bind "$1" /dev/net/tun; fi'
            ' && shift && exec "$@"',
            socket_path, str(tun), "setpriv", f"--reuid={user}", f"--regid={user}",
            "--init-groups", "--reset-env", "env", *[f"{k}={v}" for k, v in self.env.items()]]
        self.log = self.home / "libvirtd.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([*self.prefix, "libvirtd"], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: (self.runtime / "libvirt" / "libvirt-sock").exists()
                 or self.proc.poll() is not None, timeout=30, what="libvirtd's socket")
        assert self.proc.poll() is None, f"libvirtd exited:\n{self.log.read_text()}"

    def virsh(self, *args: str, check: bool = True,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # errors="replace": virsh's text is libvirt's, not always UTF-8. Seen once in CI:
        # after the helper's refusal (ours, intact), libvirt 9.0 printed a stray 0xa0
        # where a name belongs in its own ": Transport endpoint ..." part.
        result = subprocess.run([*self.prefix, "virsh", "-c", "qemu:///session", *args],
                                capture_output=True, text=True, errors="replace",
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}\nlibvirtd:\n"
                                 f"{self.log.read_text()[-3000:]}")
        return result

    def close(self) -> None:
        self.virsh("destroy", DOMAIN, check=False, timeout=30)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        # virtlogd, started by libvirtd for the session, outlives it: its own session.
        subprocess.run(["pkill", "-u", self.user, "-x", "virtlogd"], check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def sessions(lab: Lab, bus: PrivateBus,
             helper_binary: str) -> Iterator[Callable[..., Session]]:
    started: list[Session] = []

    def start(user: str, open_tun: bool = False) -> Session:
        session = Session(lab, bus, user, helper_binary, open_tun)
        started.append(session)
        return session

    yield start
    for session in started:
        session.close()


BRIDGE_INTERFACE = """<interface type='bridge'>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>"""


def domain_xml(image: GuestImage, console: Path, wait: int,
               interface: str = BRIDGE_INTERFACE) -> str:
    return f"""<domain type='qemu'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{image.kernel}</kernel>
    <initrd>{image.initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet bridged.ip={GUEST_IP}/24 bridged.peer=198.51.100.1 bridged.wait={wait}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {interface}
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""  # noqa: E501


def taps(bus: PrivateBus) -> list[dict[str, object]]:
    out = json.loads(bus.busctl("--json=short", "call", "org.bridged.Bridged1",
                                "/org/bridged/Bridged1", "org.freedesktop.DBus.ObjectManager",
                                "GetManagedObjects").stdout)
    found = []
    for _path, interfaces in out["data"][0].items():
        tap = interfaces.get("org.bridged.Bridged1.Tap")
        if tap is not None:
            found.append({key: value["data"] for key, value in tap.items()})
    return found


def test_session_domain_on_the_bridge_as_a_member(lab: Lab, bus: PrivateBus, daemon: Daemon,
                                                  sessions: Callable[..., Session],
                                                  image: GuestImage) -> None:
    session = sessions(MEMBER)
    console = session.home / "console.log"
    xml = session.home / "domain.xml"
    xml.write_text(domain_xml(image, console, wait=120))
    os.chmod(xml, 0o644)
    session.virsh("create", str(xml))
    try:
        def seen(line: str) -> bool:
            return console.exists() and line in console.read_text(errors="replace")

        wait_for(lambda: seen("GUEST: READY_FOR_INBOUND"), timeout=150, what="guest booted")
        assert seen("GUEST: PING_OUT_OK"), console.read_text(errors="replace")
        # The LAN reaches the guest (one ping: the guest powers off after three).
        assert lab.lan.ping(GUEST_IP, count=1, timeout=3), console.read_text(errors="replace")
        [tap] = taps(bus)
        uid = int(sh("id", "-u", MEMBER).stdout)
        assert tap["OwnerUID"] == uid and tap["Persistent"] is False
        # The helper's parent is libvirtd, not qemu: there is no guest name to read, so
        # the label is left empty; libvirt itself names the tap for the domain.
        assert tap["Label"] == ""
        listed = session.virsh("domiflist", DOMAIN).stdout
        assert str(tap["Name"]) in listed, listed
        link = lab.host.link(str(tap["Name"]))
        assert link is not None and link.get("master") == "br0"
    finally:
        session.virsh("destroy", DOMAIN, check=False)
    wait_for(lambda: not taps(bus), timeout=20, what="the tap freed after virsh destroy")
    assert not any(name.startswith("tap") for name in lab.host.links())


def test_session_domain_refused_for_a_non_member(lab: Lab, bus: PrivateBus, daemon: Daemon,
                                                 sessions: Callable[..., Session],
                                                 image: GuestImage) -> None:
    session = sessions(OTHER)
    xml = session.home / "domain.xml"
    xml.write_text(domain_xml(image, session.home / "console.log", wait=5))
    os.chmod(xml, 0o644)
    started = time.monotonic()
    result = session.virsh("create", str(xml), check=False)
    assert result.returncode != 0
    # libvirt quotes the helper's stderr: bridged's refusal, in one line.
    assert "bridged-helper: " in result.stderr, result.stderr
    refusal = next(line for line in result.stderr.splitlines() if "bridged-helper: " in line)
    assert "group" in refusal and "bridged" in refusal, result.stderr
    assert not taps(bus)
    assert time.monotonic() - started < 60


def test_readme_ethernet_interface_on_a_lingering_tap(lab: Lab, bus: PrivateBus,
                                                      daemon: Daemon,
                                                      sessions: Callable[..., Session],
                                                      image: GuestImage) -> None:
    """The README's libvirt example: a tap from 'bridgectl create --linger' as
    <interface type='ethernet'> with managed='no'. Written for the system libvirt
    (qemu:///system, Debian's libvirt-daemon-system, not installed on these machines);
    the same XML runs in the member's session here, where qemu opens the tap by name
    as the user it belongs to."""
    created = bus.manager("CreateTap", "a{sv}", "3", "linger", "b", "true", "name", "s",
                          "tapvm1", "label", "s", "vm1", user=MEMBER)
    assert created.returncode == 0, created.stderr
    session = sessions(MEMBER, open_tun=True)
    console = session.home / "console.log"
    xml = session.home / "domain.xml"
    xml.write_text(domain_xml(image, console, wait=120, interface="""<interface type='ethernet'>
      <target dev='tapvm1' managed='no'/>
      <model type='virtio'/>
    </interface>"""))
    os.chmod(xml, 0o644)
    session.virsh("create", str(xml))
    try:
        wait_for(lambda: console.exists() and "GUEST: READY_FOR_INBOUND" in
                 console.read_text(errors="replace"), timeout=150, what="guest booted")
        assert "GUEST: PING_OUT_OK" in console.read_text(errors="replace")
        assert lab.lan.ping(GUEST_IP, count=1, timeout=3), console.read_text(errors="replace")
    finally:
        session.virsh("destroy", DOMAIN, check=False)
    # Lingering: the tap outlives the domain, until released.
    [tap] = taps(bus)
    assert tap["Name"] == "tapvm1" and tap["Label"] == "vm1"
    released = bus.manager("ReleaseTap", "s", "tapvm1", user=MEMBER)
    assert released.returncode == 0, released.stderr
    wait_for(lambda: not taps(bus), timeout=20, what="tapvm1 released")
