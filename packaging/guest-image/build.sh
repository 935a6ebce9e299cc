#!/usr/bin/env bash
# Builds the test/demo guest: the kernel of Debian's linux-image-cloud-amd64 and an initramfs with
# busybox (static), the kernel modules the agent needs, and release builds of lqx-agent and lqx
# (static Swift stdlib) with the shared libraries ldd lists. Everything comes from Debian packages
# and this repository. The result is cached by the content of its inputs, so a second run only
# rebuilds what changed (the Swift build is incremental; the initramfs is repacked only when an input
# differs).
#
#   packaging/guest-image/build.sh [OUT_DIR]      (default: .build-guest/image)
#
# LQX_GUEST_DEBUG=1 keeps the agent's symbols and adds Swift's backtracer, so a crash of the agent
# prints a symbolicated backtrace on the guest console (default OUT_DIR .build-guest/image-debug).
#
# Output in OUT_DIR: vmlinuz, initramfs.cpio, initramfs-hostile.cpio (the same guest running
# lqx-hostile-agent instead of lqx-agent, for the broker's tests), manifest (kernel release, input
# hash, sizes).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
debug=${LQX_GUEST_DEBUG:-0}
if [ "$debug" = 1 ]; then out=${1:-$root/.build-guest/image-debug}; else out=${1:-$root/.build-guest/image}; fi
cache=$root/.build-guest
here=$root/packaging/guest-image
export PATH="/opt/swift/usr/bin:$PATH"

log() { echo "guest-image: $*" >&2; }

# --- host tools (Debian packages) ----------------------------------------------------------------
need=()
for pkg in busybox-static cpio binutils; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- kernel: download the .deb behind linux-image-cloud-amd64 and extract it ----------------------
mkdir -p "$cache/debs"
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}' || true)
if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
deb=$(ls "$cache"/debs/"${kpkg}"_*.deb 2>/dev/null | head -1 || true)
download() { (cd "$cache/debs" && apt-get download "$kpkg" 2>&1 | grep -v "^W: Download is performed unsandboxed" >&2 || true); }
if [ -z "$deb" ]; then
    log "downloading $kpkg"
    download
    deb=$(ls "$cache"/debs/"${kpkg}"_*.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
        # Stale package lists name a version the mirror no longer has: refresh and ask again.
        log "refreshing package lists and retrying"
        apt-get update -qq
        kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
        download
        deb=$(ls "$cache"/debs/"${kpkg}"_*.deb 2>/dev/null | head -1 || true)
    fi
    [ -n "$deb" ] || { log "could not download $kpkg (apt-get download failed)"; exit 1; }
fi
kroot=$cache/kernel/$(basename "$deb" .deb)
if [ ! -d "$kroot/boot" ]; then
    rm -rf "$kroot.tmp"
    mkdir -p "$kroot.tmp"
    dpkg-deb -x "$deb" "$kroot.tmp"
    mv "$kroot.tmp" "$kroot"
fi
krel=$(ls "$kroot/lib/modules" | head -1)
vmlinuz=$kroot/boot/vmlinuz-$krel

# --- modules, in dependency order (read from each .ko's .modinfo section) ------------------------
wanted="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console virtio_blk
        virtio_net evdev button vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport vsock_loopback"
declare -A kofile=()
while IFS= read -r f; do
    name=$(basename "$f" .ko)
    kofile[${name//-/_}]=$f
done < <(find "$kroot/lib/modules/$krel/kernel" -name '*.ko')
declare -A placed=()
order=()
place() {
    local m=${1//-/_}
    [ -n "${placed[$m]:-}" ] && return 0
    if [ -z "${kofile[$m]:-}" ]; then
        grep -q "/$m.ko\$" "$kroot/lib/modules/$krel/modules.builtin" 2>/dev/null && { placed[$m]=builtin; return 0; }
        log "module $m is neither a .ko in $kpkg nor built in"
        exit 1
    fi
    placed[$m]=pending
    local deps
    deps=$(objcopy -O binary --only-section=.modinfo "${kofile[$m]}" /dev/stdout | tr '\0' '\n' |
        sed -n 's/^depends=//p' | tr ',' ' ')
    for d in $deps; do place "$d"; done
    placed[$m]=done
    order+=("$m")
}
for m in $wanted; do place "$m"; done

# --- the agent and lqx: release, static Swift stdlib, stripped -----------------------------------
log "building lqx-agent and lqx (release, --static-swift-stdlib)"
# The in-guest lqx talks to agents only: without the NodeClient trait it links no gRPC.
swift build -c release --static-swift-stdlib --disable-default-traits --scratch-path "$root/.build-static" \
    --product lqx-agent >&2
swift build -c release --static-swift-stdlib --disable-default-traits --scratch-path "$root/.build-static" \
    --product lqx >&2
# The hostile agent of the broker's tests (in initramfs-hostile.cpio, instead of lqx-agent).
swift build -c release --static-swift-stdlib --disable-default-traits --scratch-path "$root/.build-static" \
    --product lqx-hostile-agent >&2
bin=$root/.build-static/release
mkdir -p "$cache/bin"
for b in lqx-agent lqx lqx-hostile-agent; do
    if [ ! -f "$cache/bin/$b" ] || [ "$bin/$b" -nt "$cache/bin/$b" ]; then
        strip -o "$cache/bin/$b.tmp" "$bin/$b"
        mv "$cache/bin/$b.tmp" "$cache/bin/$b"
    fi
done
libs=$( (ldd "$cache/bin/lqx-agent"; ldd "$cache/bin/lqx"; ldd "$cache/bin/lqx-hostile-agent") | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | sort -u)

# --- cache key: every input's content --------------------------------------------------------------
busybox=$(command -v busybox)
key=$(
    {
        sha256sum "$here/build.sh" "$here"/rootfs/* "$deb" "$busybox" "$cache/bin/lqx-agent" "$cache/bin/lqx" \
            "$cache/bin/lqx-hostile-agent"
        for l in $libs; do sha256sum "$(readlink -f "$l")"; done
        echo "${order[*]} debug=$debug"
    } | sha256sum | cut -c1-16
)
if [ -f "$out/manifest" ] && grep -q "^input_hash=$key\$" "$out/manifest" && [ -f "$out/initramfs.cpio" ] \
    && [ -f "$out/initramfs-hostile.cpio" ]; then
    log "up to date ($out, inputs $key)"
    exit 0
fi

# --- the initramfs tree ----------------------------------------------------------------------------
log "packing initramfs (kernel $krel, modules: ${order[*]})"
stage=$cache/stage
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,var/log,usr/bin,lib/modules,etc/limiquantix}
cp "$busybox" "$stage/bin/busybox"
ln -s bin/busybox "$stage/init"
for applet in $("$busybox" --list); do [ -e "$stage/bin/$applet" ] || ln -s busybox "$stage/bin/$applet"; done
ln -s ../bin/busybox "$stage/sbin/init"
for m in "${order[@]}"; do
    [ "${placed[$m]}" = done ] && cp "${kofile[$m]}" "$stage/lib/modules/$m.ko" && echo "$m" >>"$stage/lib/modules/load.order"
done
cp "$cache/bin/lqx-agent" "$cache/bin/lqx" "$stage/usr/bin/"
if [ "$debug" = 1 ]; then
    cp "$bin/lqx-agent" "$stage/usr/bin/lqx-agent"
    mkdir -p "$stage/usr/libexec"
    cp /opt/swift/usr/libexec/swift/linux/swift-backtrace-static "$stage/usr/libexec/"
    echo "SWIFT_BACKTRACE=enable=yes,interactive=no,swift-backtrace=/usr/libexec/swift-backtrace-static" >"$stage/etc/lqx-debug.env"
fi
for l in $libs; do
    mkdir -p "$stage$(dirname "$l")"
    cp -L "$l" "$stage$l"
done
cp "$here/rootfs/inittab" "$here/rootfs/os-release" "$here/rootfs/passwd" "$here/rootfs/group" "$stage/etc/"
install -m 0755 "$here/rootfs/rcS" "$here/rootfs/lqx-agent.run" "$stage/etc/"
# busybox acpid runs /etc/acpi/PWRF/00000080 when the ACPI power button is pressed.
install -D -m 0755 "$here/rootfs/acpi-power-button" "$stage/etc/acpi/PWRF/00000080"
echo "lqx-guest" >"$stage/etc/hostname"
chmod 1777 "$stage/tmp"

mkdir -p "$out"
pack() { (cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) >"$1.tmp" && mv "$1.tmp" "$1"; }
pack "$out/initramfs.cpio"
# The same guest with lqx-hostile-agent in place of lqx-agent and lqx (the broker's hostile-guest
# tests; a separate archive so that the normal guests do not grow: at 384 MiB an initramfs much
# over 110 MB no longer unpacks).
rm "$stage/usr/bin/lqx-agent" "$stage/usr/bin/lqx"
cp "$cache/bin/lqx-hostile-agent" "$stage/usr/bin/"
pack "$out/initramfs-hostile.cpio"
cp "$vmlinuz" "$out/vmlinuz"
{
    echo "input_hash=$key"
    echo "kernel_package=$kpkg"
    echo "kernel_release=$krel"
    echo "modules=${order[*]}"
    echo "os_id=lqx-guest"
    echo "initramfs_bytes=$(stat -c %s "$out/initramfs.cpio")"
    echo "agent_bytes=$(stat -c %s "$cache/bin/lqx-agent")"
} >"$out/manifest"
rm -rf "$stage"
log "done: $out ($(($(stat -c %s "$out/initramfs.cpio") >> 20)) MiB initramfs, kernel $krel)"
