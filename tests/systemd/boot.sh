#!/bin/bash
# PID 1 of fresh pid/mount/net/uts/ipc/cgroup namespaces (see tests/syslab.py): build a
# throw-away copy-on-write view of the machine's / and exec systemd in it. Nothing
# written inside reaches the machine: the overlay's upper layer is a tmpfs.
# usage: boot.sh WORKDIR
set -eu
W=$1
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs "$W/ov"
mkdir -p "$W/ov/upper" "$W/ov/work" "$W/ov/root"
R=$W/ov/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/ov/upper,workdir=$W/ov/work" "$R"
mount -t proc proc "$R/proc"
# No sysctl writes and no sysrq reach the machine.
mount --bind "$R/proc/sys" "$R/proc/sys" && mount -o remount,bind,ro "$R/proc/sys"
if [ -e "$R/proc/sysrq-trigger" ]; then
    mount --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"
    mount -o remount,bind,ro "$R/proc/sysrq-trigger"
fi
mount --bind /sys "$R/sys" && mount -o remount,bind,ro,nosuid,nodev,noexec "$R/sys"
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
