#!/usr/bin/env bash
# Starts virtlogd and libvirtd when they are not running (there is no systemd as PID 1 on the CI
# machines) and waits until qemu:///system answers. (A peer libvirtd of scripts/libvirt-peer.sh runs
# in its own mount namespace and does not count.)
set -euo pipefail
# virtlogd: the one whose pid file is /run/virtlogd.pid (a socket file alone may be stale).
if ! { [ -f /run/virtlogd.pid ] && kill -0 "$(cat /run/virtlogd.pid)" 2>/dev/null; }; then
    rm -f /run/libvirt/virtlogd-sock /run/libvirt/virtlogd-admin-sock
    virtlogd -d
fi
if virsh -c qemu:///system version >/dev/null 2>&1; then exit 0; fi
libvirtd -d
for _ in $(seq 1 50); do
    if virsh -c qemu:///system version >/dev/null 2>&1; then exit 0; fi
    sleep 0.2
done
echo "libvirt-up: libvirtd did not answer on qemu:///system within 10 s" >&2
exit 1
