#!/usr/bin/env bash
# Starts virtlogd and libvirtd when they are not running (there is no systemd as PID 1 on the CI
# machines) and waits until qemu:///system answers. (A peer libvirtd of scripts/libvirt-peer.sh runs
# in its own mount namespace and does not count.)
set -euo pipefail
if virsh -c qemu:///system version >/dev/null 2>&1; then exit 0; fi
[ -S /run/libvirt/virtlogd-sock ] || virtlogd -d
libvirtd -d
for _ in $(seq 1 50); do
    if virsh -c qemu:///system version >/dev/null 2>&1; then exit 0; fi
    sleep 0.2
done
echo "libvirt-up: libvirtd did not answer on qemu:///system within 10 s" >&2
exit 1
