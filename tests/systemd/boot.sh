#!/bin/bash
# PID 1 of fresh pid/mount/net/uts/ipc/cgroup namespaces (see tests/syslab.py): build a
# throw-away copy-on-write view of the machine's / (or of another root, e.g. a
# debootstrapped Debian 13) and exec systemd in it. Nothing written inside reaches the
# machine or that root: the overlay's upper layer is a tmpfs.
# usage: boot.sh WORKDIR [LOWER]
# environment: BRIDGED_FRESH_SYSFS=1   a sysfs of this network namespace instead of a bind
#                                      of the machine's /sys (NetworkManager reads its
#                                      links there)
#              BRIDGED_NET_SYSCTL=rw   /proc/sys/net writable (per network namespace;
#                                      NetworkManager and networkd write it)
set -eu
W=$1
LOWER=${2:-/}
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs "$W/ov"
mkdir -p "$W/ov/upper" "$W/ov/work" "$W/ov/root"
R=$W/ov/root
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$W/ov/upper,workdir=$W/ov/work" "$R"
mount -t proc proc "$R/proc"
# No sysctl writes and no sysrq reach the machine.
mount --bind "$R/proc/sys" "$R/proc/sys" && mount -o remount,bind,ro "$R/proc/sys"
if [ "${BRIDGED_NET_SYSCTL:-ro}" = rw ]; then
    # net.* under /proc/sys/net belongs to this network namespace, not to the machine.
    mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
    mount -o remount,bind,rw "$R/proc/sys/net"
fi
if [ -e "$R/proc/sysrq-trigger" ]; then
    mount --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"
    mount -o remount,bind,ro "$R/proc/sysrq-trigger"
fi
if [ "${BRIDGED_FRESH_SYSFS:-0}" = 1 ]; then
    # Mounted from inside the new network namespace: /sys/class/net lists its links only.
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
else
    mount --bind /sys "$R/sys" && mount -o remount,bind,ro,nosuid,nodev,noexec "$R/sys"
fi
mount -t cgroup2 -o nsdelegate cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
for d in null zero full random urandom tty; do
    touch "$R/dev/$d" && mount --bind "/dev/$d" "$R/dev/$d"
done
# udev would make /dev/net/tun 0666 on a real machine; there is no udev here.
mkdir -p "$R/dev/net" && mknod -m 666 "$R/dev/net/tun" c 10 200
touch "$R/dev/console" && mount --bind "$W/console.log" "$R/dev/console"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts" && ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
# Debian's tmp.conf has "D /tmp": it would empty the overlay's /tmp. Mask it.
mkdir -p "$R/etc/tmpfiles.d" && : > "$R/etc/tmpfiles.d/tmp.conf"
cp "$W/bridged-test.target" "$R/etc/systemd/system/"
ip link set lo up
exec chroot "$R" /usr/bin/setpriv --bounding-set -sys_module,-sys_time,-sys_rawio \
    /usr/bin/env -i container=bridged-test TERM=dumb \
    /lib/systemd/systemd --unit=bridged-test.target --log-target=console --log-level=info
