"""The demo behind scripts/demo: everything in namespaces it makes and removes."""

import sys

from tests.buslab import MEMBER, PrivateBus, ensure_users
from tests.lab import LAN_V4, Daemon, Lab
from tests.test_bridge import SEED
from tests.vmlab import build_guest, qemu_command, run_guest


def main() -> None:
    ensure_users()
    lab, bus = Lab(), PrivateBus()
    lab.classic_host_config()
    print("== before: the seed's host, IP on eth0")
    print(lab.host.ip("-br", "addr").stdout)
    daemon = Daemon(lab, SEED, extra_args=("--bus-address", bus.address)).start()
    try:
        print("== bridged is ready:", daemon.notify.wait("READY=1").split("\n")[-1])
        print(lab.host.ip("-br", "addr").stdout)
        print("== the LAN pings the host on br0:", lab.lan.ping("198.51.100.2"))
        print("== the host pings its gateway:", lab.host.ping(LAN_V4))
        print(f"== {MEMBER} (group bridged) asks for a tap with busctl:")
        print(bus.manager("CreateTap", "a{sv}", "2", "linger", "b", "true", "label", "s",
                          "demo-vm", user=MEMBER).stdout)
        print(lab.host.ip("-d", "link", "show", "tap0").stdout)
        print(bus.busctl("tree", "org.bridged.Bridged1").stdout)
        print(f"== bridgectl status, as {MEMBER}:")
        print(bus.bridgectl("status", user=MEMBER).stdout)
        print(f"== {MEMBER} boots a real VM on the bridge: bridgectl run -- qemu-system-x86_64 ...")
        image = build_guest()
        command = bus.user_command(MEMBER, sys.executable, "-m", "bridged.cli", "run",
                                   "--label", "demo-vm2", "--", *qemu_command(image))
        run = run_guest(["ip", "netns", "exec", lab.host.name, *command], lab.lan)
        print("\n".join(line for line in run.lines if "GUEST:" in line or "bridgectl" in line))
        print("== the guest pinged the LAN and was pinged back:", run.ok)
        print("== daemon log")
        print(daemon.log())
    finally:
        daemon.close()
        bus.close()
        lab.close()


if __name__ == "__main__":
    main()
