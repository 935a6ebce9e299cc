#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian 12 machine (Swift 6.3 is expected at
# /opt/swift or on PATH). Safe to run repeatedly: it only installs what is missing.
set -euo pipefail
export PATH="/opt/swift/usr/bin:$PATH"
need=()
for pkg in build-essential linux-libc-dev pkg-config qemu-system-x86 qemu-utils busybox-static cpio binutils \
    libvirt-dev libvirt-daemon-system libvirt-clients ovmf libsqlite3-dev postgresql prometheus curl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "setup: swift not found (expected /opt/swift/usr/bin)" >&2; exit 1; }
