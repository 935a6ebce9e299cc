#!/usr/bin/env bash
# Boots the guest built by build.sh under QEMU, in the foreground (exec: the pid is QEMU's).
#
#   packaging/guest-image/boot.sh --socket PATH [--console FILE] [--raw-socket PATH] [--image DIR]
#                                 [--memory MIB] [--cpus N] [--initramfs NAME]
#   --initramfs initramfs-hostile.cpio boots the guest whose agent is lqx-hostile-agent (tests).
#
# --socket      host end of the agent's virtio-serial port org.limiquantix.agent.0 (QEMU listens;
#               connect with `lqx --agent unix:PATH`)
# --raw-socket  a second port, org.limiquantix.raw.0, with nothing on top (benchmarks' raw channel)
# --console     the guest's serial console is written to this file (default: stdout)
# Acceleration: KVM only when /sys/module/kvm_intel or /sys/module/kvm_amd exists (a bare /dev/kvm
# is not enough on every host), else TCG with `-cpu max` (exposes SHA and SSE4.2 to the guest).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=$here/../../.build-guest/image
socket="" raw="" console="" memory=1024 cpus=2 initramfs=initramfs.cpio
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case $1 in
    --socket) socket=$2; shift 2 ;;
    --raw-socket) raw=$2; shift 2 ;;
    --console) console=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --initramfs) initramfs=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "boot.sh: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$socket" ] || { echo "boot.sh: --socket is required" >&2; usage; }
for f in vmlinuz "$initramfs"; do
    [ -f "$image/$f" ] || { echo "boot.sh: $image/$f missing; run packaging/guest-image/build.sh" >&2; exit 1; }
done
if [ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ]; then
    accel=(-accel kvm -cpu host)
else
    accel=(-accel tcg -cpu max)
fi
args=(
    -nodefaults -no-user-config -display none -machine q35 "${accel[@]}"
    -m "$memory" -smp "$cpus"
    -kernel "$image/vmlinuz" -initrd "$image/$initramfs"
    -append "console=ttyS0 loglevel=4 no_timer_check rdinit=/init"
    -device virtio-serial-pci,id=vser
    -chardev "socket,id=agent,path=$socket,server=on,wait=off"
    -device virtserialport,bus=vser.0,chardev=agent,name=org.limiquantix.agent.0
)
if [ -n "$raw" ]; then
    args+=(-chardev "socket,id=raw,path=$raw,server=on,wait=off"
        -device virtserialport,bus=vser.0,chardev=raw,name=org.limiquantix.raw.0)
fi
if [ -n "$console" ]; then args+=(-serial "file:$console"); else args+=(-serial stdio); fi
rm -f "$socket" ${raw:+"$raw"}
exec qemu-system-x86_64 "${args[@]}"
