#!/bin/bash
# Runs a command beside a private systemd-journald (LAB.md, journald).
# Usage, inside `unshare --mount --propagation private`:
#   journald-wrap.sh SCRATCH_DIR COMMAND...
# Journal files land in SCRATCH_DIR/log/journal/<machine-id>/; journald's pid in
# SCRATCH_DIR/journald.pid so the test can stop it.
set -eu
scratch=$1; shift
mkdir -p "$scratch/log"
cat > "$scratch/journald.conf" <<CONF
[Journal]
Storage=volatile
ReadKMsg=no
RateLimitBurst=0
ForwardToSyslog=no
ForwardToWall=no
CONF
mount -t tmpfs -o mode=755 tmpfs /run/systemd
mkdir -p /run/systemd/journal
mount --bind "$scratch/journald.conf" /etc/systemd/journald.conf
mount --bind "$scratch/log" /run/log
env -u NOTIFY_SOCKET -u WATCHDOG_USEC /lib/systemd/systemd-journald > "$scratch/journald.out" 2>&1 &
echo $! > "$scratch/journald.pid"
for _ in $(seq 500); do [ -S /run/systemd/journal/socket ] && break; sleep 0.01; done
exec "$@"
