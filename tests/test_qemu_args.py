"""Pure logic of what bridgectl run puts on qemu's command line and reads from it."""

from bridged import qemu


def test_guest_name_forms():
    assert qemu.guest_name(["qemu", "-name", "vm1", "-m", "1"]) == "vm1"
    assert qemu.guest_name(["qemu", "-name", "guest=db,debug-threads=on"]) == "db"
    assert qemu.guest_name(["qemu", "-name", "process=x"]) is None
    assert qemu.guest_name(["qemu", "-m", "1024"]) is None
    assert qemu.guest_name(["qemu", "-name"]) is None


def test_guest_mac_is_stable_local_and_distinct():
    a = qemu.guest_mac(1000, "vm1", host_id="h")
    assert a == qemu.guest_mac(1000, "vm1", host_id="h")
    assert a.startswith("52:54:00:") and len(a) == 17
    others = {qemu.guest_mac(1000, "vm2", host_id="h"), qemu.guest_mac(1001, "vm1", host_id="h"),
              qemu.guest_mac(1000, "vm1", host_id="other")}
    assert a not in others and len(others) == 3


def test_netdev_args_single_and_multiqueue():
    assert qemu.netdev_args([5], "52:54:00:00:00:01") == [
        "-netdev", "tap,id=bridged0,fd=5",
        "-device", "virtio-net-pci,netdev=bridged0,mac=52:54:00:00:00:01"]
    netdev, device = qemu.netdev_args([5, 6], "m", netdev_id="n0")[1::2]
    assert netdev == "tap,id=n0,fds=5:6"
    assert device == "virtio-net-pci,netdev=n0,mac=m,mq=on,vectors=6"
