"""An overlay lab: several "hosts" that share no LAN, only an underlay network.

Each host is a ``Lab`` (its namespace, where bridged runs, with eth0 to a LAN namespace
of its own) plus an underlay veth ``und0`` holding 192.0.2.1N/24 (the test range for an
underlay, used only inside these namespaces) on a bridge in an underlay namespace. FRR
(zebra and bgpd, Debian 12's 8.4) runs the way LAB.md found it works in a namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.lab import Lab, NetNS, sh, wait_for

VNI = 4242
DEVICE = f"vx{VNI}"
UNDERLAY_MTU = 1600  # room for 1500-byte frames and the 50 bytes of VXLAN over IPv4
FRR_DIR = Path("/usr/lib/frr")


class Host:
    """Host ``n`` (1, 2, 3...): LAN peer 198.51.100.1n, bridge address 198.51.100.2n,
    underlay address 192.0.2.1n on und0."""

    def __init__(self, n: int, underlay: NetNS, mtu: int = UNDERLAY_MTU) -> None:
        self.n = n
        self.lab = Lab(lan_v4=f"198.51.100.1{n}", lan_v6=f"2001:db8::1{n}")
        self.ns = self.lab.host
        self.lan = self.lab.lan
        self.lan_ip = f"198.51.100.1{n}"
        self.bridge_ip = f"198.51.100.2{n}"
        self.underlay_ip = f"192.0.2.1{n}"
        self.ns.ip("link", "add", "und0", "mtu", str(mtu), "type", "veth", "peer", "name",
                   f"u{n}", "netns", underlay.name)
        underlay.ip("link", "set", f"u{n}", "mtu", str(mtu), "master", "ub", "up")
        self.ns.ip("addr", "add", f"{self.underlay_ip}/24", "dev", "und0")
        self.ns.ip("link", "set", "und0", "up")
        # The kernel reports carrier up to a second late (linkwatch): a daemon started
        # before would see its underlay down, rightly.
        wait_for(lambda: (self.ns.link("und0") or {}).get("operstate") == "UP",
                 what="und0 up")

    def config(self, peers: Sequence[Host | str] = (), *, evpn: bool = False,
               extra: str = "") -> str:
        """bridged.toml for this host: ``peers`` (hosts or addresses), or EVPN; ``extra``
        lines go into [bridge]."""
        listed = [p.underlay_ip if isinstance(p, Host) else p for p in peers]
        vxlan = 'control = "evpn"' if evpn else f"peers = {json.dumps(listed)}"
        return f"""
[bridge]
name = "br0"
uplinks = ["eth0"]
{extra}
[ip]
mode = "static"
addresses = ["{self.bridge_ip}/24"]

[vxlan]
vni = {VNI}
local = "{self.underlay_ip}"
{vxlan}
"""

    def fdb(self) -> list[dict[str, object]]:
        """The VXLAN device's own FDB entries, as iproute2's bridge(8) shows them."""
        out = self.ns.exec("bridge", "-j", "fdb", "show", "dev", DEVICE, check=False).stdout
        return [e for e in json.loads(out or "[]") if "self" in e.get("flags", [])]

    def flood_list(self) -> set[str]:
        return {str(e["dst"]) for e in self.fdb() if e["mac"] == "00:00:00:00:00:00"}

    def close(self) -> None:
        self.lab.close()


class Fabric:
    """An underlay namespace with bridge ``ub`` and ``count`` hosts on it."""

    def __init__(self, count: int = 3, mtu: int = UNDERLAY_MTU) -> None:
        self.underlay = NetNS("bridged-underlay")
        self.hosts: list[Host] = []
        try:
            self.underlay.ip("link", "add", "ub", "mtu", str(mtu), "type", "bridge")
            self.underlay.ip("link", "set", "ub", "up")
            for n in range(1, count + 1):
                self.hosts.append(Host(n, self.underlay, mtu))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        self.underlay.close()


def ping_times(ns: NetNS, address: str, count: int, interval: float = 0.02) -> list[float]:
    """Round-trip times in ms of ``count`` pings (only those answered)."""
    out = ns.exec("busybox", "ping", "-c", str(count), "-i", str(interval), "-W", "2",
                  address, check=False, timeout=count * (interval + 1) + 10).stdout
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency(ns: NetNS, local: str, remote: str, rounds: int = 10,
            per_round: int = 20) -> dict[str, dict[str, float]]:
    """Ping ``local`` and ``remote`` alternately, ``per_round`` each per round, so that
    the machine's drift hits both alike; p50/p99 in ms of each."""
    seen: dict[str, list[float]] = {"local": [], "remote": []}
    for _ in range(rounds):
        for what, address in (("local", local), ("remote", remote)):
            seen[what] += ping_times(ns, address, per_round)
    return {what: {"count": len(times), "p50": statistics.median(times),
                   "p99": percentile(times, 0.99)} for what, times in seen.items()}


class BackgroundPing:
    """busybox ping running while something else happens; ``finish`` says how many
    answers of how many requests came back."""

    def __init__(self, ns: NetNS, address: str, count: int, interval: float = 0.05) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, "busybox", "ping", "-c", str(count), "-i",
             str(interval), "-W", "2", address],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish(self, timeout: float = 60) -> tuple[int, int]:
        out, _ = self.proc.communicate(timeout=timeout)
        found = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
        assert found, out
        return int(found.group(1)), int(found.group(2))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Frr:
    """zebra and bgpd of FRR in one host namespace, in the foreground, with a private
    directory for their sockets, pid files and logs, bound over /var/tmp too (FRR
    writes crash data there)."""

    def __init__(self, ns: NetNS, conf: str) -> None:
        self.ns = ns
        self.dir = tempfile.mkdtemp(prefix="bridged-frr-")
        for sub in ("run", "tmp"):
            os.mkdir(os.path.join(self.dir, sub))
        self.conf = os.path.join(self.dir, "frr.conf")
        Path(self.conf).write_text(conf)
        sh("chown", "-R", "frr:frr", self.dir)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def socket_dir(self) -> str:
        return os.path.join(self.dir, "run")

    def _daemon(self, name: str) -> subprocess.Popen[bytes]:
        run = self.socket_dir
        command = [str(FRR_DIR / name), "-f", self.conf, "-i", f"{run}/{name}.pid",
                   "-z", f"{run}/zserv.api", "--vty_socket", run, "-P", "0",
                   "--log", f"file:{self.dir}/{name}.log"]
        with open(os.path.join(self.dir, f"{name}.out"), "ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.ns.name, "unshare", "--mount", "sh", "-c",
                 'mount --bind "$0" /var/tmp && exec "$@"', f"{self.dir}/tmp", *command],
                stdout=out, stderr=out, start_new_session=True)

    def start(self) -> Frr:
        self.procs.append(self._daemon("zebra"))
        wait_for(lambda: os.path.exists(f"{self.socket_dir}/zserv.api") or
                 self.procs[0].poll() is not None, what="zebra's zserv socket")
        assert self.procs[0].poll() is None, self.log("zebra")
        self.procs.append(self._daemon("bgpd"))
        return self

    def vtysh(self, *commands: str) -> str:
        args = [a for c in commands for a in ("-c", c)]
        return sh("vtysh", "--vty_socket", self.socket_dir, *args, check=False).stdout

    def log(self, name: str) -> str:
        texts = []
        for suffix in ("log", "out"):
            path = os.path.join(self.dir, f"{name}.{suffix}")
            if os.path.exists(path):
                texts.append(Path(path).read_text(errors="replace"))
        return "\n".join(texts)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def frr_conf(host: Host, reflector: Host, clients: list[Host]) -> str:
    """iBGP EVPN, AS 65000: ``reflector`` reflects to ``clients``; every host advertises
    all its VNIs (zebra finds bridged's VXLAN device by itself)."""
    lines = ["frr defaults traditional", f"hostname h{host.n}", "log timestamp precision 3",
             "router bgp 65000", f" bgp router-id {host.underlay_ip}",
             " no bgp default ipv4-unicast"]
    if host is reflector:
        lines += [" neighbor fabric peer-group", " neighbor fabric remote-as 65000",
                  " neighbor fabric timers connect 2"]
        lines += [f" neighbor {c.underlay_ip} peer-group fabric" for c in clients]
        lines += [" address-family l2vpn evpn", "  neighbor fabric activate",
                  "  neighbor fabric route-reflector-client"]
    else:
        peer = reflector.underlay_ip
        lines += [f" neighbor {peer} remote-as 65000", f" neighbor {peer} timers connect 2",
                  " address-family l2vpn evpn", f"  neighbor {peer} activate"]
    lines += ["  advertise-all-vni", " exit-address-family", ""]
    return "\n".join(lines)


def frr_installed() -> bool:
    return (FRR_DIR / "zebra").exists() and (FRR_DIR / "bgpd").exists() and \
        shutil.which("vtysh") is not None


def elapsed(since: float) -> float:
    return time.monotonic() - since
