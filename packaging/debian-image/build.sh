#!/usr/bin/env bash
# Builds a Debian 12 guest that boots from its own disk, from Debian packages only:
#
#   packaging/debian-image/build.sh      → .build-debian-image/debian12.qcow2 (+ manifest)
#
# debootstrap (minbase + systemd + udev + linux-image-cloud-amd64), limiquantix-agent installed
# with apt inside the chroot from the local repository packaging/build-debs.sh wrote (run first),
# root with no password, a serial console, journald keeping its journal on the disk, DHCP on
# every NIC (systemd-networkd).
#
# Boot: a bootloader in the image. The disk has an MBR with syslinux's boot code, an ext2 /boot
# holding extlinux, which starts the image's own kernel and initrd (root= by the file system's
# UUID, console=ttyS0), and an ext4 /. Loop devices and mounts work on this machine, which
# extlinux's installer needs (it writes its loader into the mounted file system); both file
# systems are made from the chroot with mke2fs -d (no root-owned mount of the tree needed). The VM
# needs nothing but the disk: `lqx vm create NAME --clone .build-debian-image/debian12.qcow2`.
#
# Rebuilt only when an input changes (this folder, the agent package, the package list).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$root/.build-debian-image
repo=$root/.build-deb/repo
suite=bookworm
mirror=${LQX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
size_mib=${LQX_IMAGE_SIZE_MIB:-2048}
packages=systemd,systemd-sysv,udev,dbus,linux-image-cloud-amd64,apt,ca-certificates,iproute2,procps,less,kmod
# What limiquantix-node and limiquantix-controlplane depend on, so the system tests install them
# with apt from the local repository inside the guest (which reaches no Debian mirror).
# libpam-systemd: debootstrap cannot resolve polkitd's `default-logind | logind` by itself.
packages+=,libvirt-daemon-system,qemu-system-x86,libpam-systemd
log() { echo "debian-image: $*" >&2; }

need=()
for pkg in debootstrap extlinux syslinux-common qemu-utils e2fsprogs fdisk; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi
[ -f "$repo/Packages" ] || { log "no local repository in $repo: run packaging/build-debs.sh first"; exit 1; }
agent_deb=$(ls -t "$repo"/pool/limiquantix-agent_*.deb | head -1)
agent_version=$(dpkg-deb -f "$agent_deb" Version)

mkdir -p "$out"
key=$( { sha256sum "$here"/build.sh "$here"/rootfs/*; sha256sum "$agent_deb"; echo "$suite $mirror $size_mib $packages"; } \
    | sha256sum | cut -c1-16)
if [ -f "$out/manifest" ] && grep -q "^input_hash=$key\$" "$out/manifest" && [ -f "$out/debian12.qcow2" ]; then
    log "up to date ($out/debian12.qcow2, inputs $key)"
    exit 0
fi

# --- debootstrap, its download kept for the next build -------------------------------------------
stage=$out/rootfs
mnt=$out/mnt
cleanup() {
    for m in "$stage/mnt/lqx-repo" "$stage/dev/pts" "$stage/dev" "$stage/proc" "$stage/sys" "$mnt"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    [ -n "${loop:-}" ] && losetup -d "$loop" 2>/dev/null
    true
}
trap cleanup EXIT
cleanup
rm -rf "$stage"
tarball=$out/debootstrap-$(echo "$suite $mirror $packages" | sha256sum | cut -c1-12).tgz
if [ ! -f "$tarball" ]; then
    log "downloading $suite ($packages) from $mirror"
    debootstrap --variant=minbase --include="$packages" --make-tarball="$tarball.tmp" "$suite" "$out/dl" "$mirror" >&2
    mv "$tarball.tmp" "$tarball"
    rm -rf "$out/dl"
fi
log "debootstrap $suite into $stage"
debootstrap --variant=minbase --include="$packages" --unpack-tarball="$tarball" "$suite" "$stage" "$mirror" >&2

# --- inside the chroot: the agent from the local repository, the system's settings ---------------
mount -t proc proc "$stage/proc"
mount -t sysfs sys "$stage/sys"
mount --bind /dev "$stage/dev"
mount --bind /dev/pts "$stage/dev/pts"
mkdir -p "$stage/mnt/lqx-repo"
mount --bind "$repo" "$stage/mnt/lqx-repo"
# No service starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$stage/usr/sbin/policy-rc.d"
chmod 0755 "$stage/usr/sbin/policy-rc.d"
install -m 0644 "$repo/limiquantix-local.gpg" "$stage/usr/share/keyrings/limiquantix-local.gpg"
echo "deb [signed-by=/usr/share/keyrings/limiquantix-local.gpg] file:/mnt/lqx-repo ./" \
    >"$stage/etc/apt/sources.list.d/limiquantix-local.list"
log "apt-get install limiquantix-agent=$agent_version (in the chroot)"
chroot "$stage" apt-get update -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/limiquantix-local.list \
    -o Dir::Etc::sourceparts=- >&2
chroot "$stage" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "limiquantix-agent=$agent_version" >&2
rm -f "$stage/etc/apt/sources.list.d/limiquantix-local.list" "$stage/usr/sbin/policy-rc.d"
chroot "$stage" apt-get clean
rm -rf "$stage"/var/lib/apt/lists/* "$stage"/var/cache/apt/*.bin
umount "$stage/mnt/lqx-repo" "$stage/dev/pts" "$stage/dev" "$stage/proc" "$stage/sys"
rmdir "$stage/mnt/lqx-repo"

uuid=$(cat /proc/sys/kernel/random/uuid) boot_uuid=$(cat /proc/sys/kernel/random/uuid)
echo "lqx-debian12" >"$stage/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tlqx-debian12\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$stage/etc/hosts"
printf 'UUID=%s / ext4 defaults,errors=remount-ro 0 1\nUUID=%s /boot ext2 defaults 0 2\n' "$uuid" "$boot_uuid" \
    >"$stage/etc/fstab"
chroot "$stage" passwd -d root >/dev/null
# The journal on the disk, so a shutdown can be read back after the next boot.
mkdir -p "$stage/var/log/journal"
install -m 0644 "$here/rootfs/10-dhcp.network" "$stage/etc/systemd/network/10-dhcp.network"
chroot "$stage" systemctl enable systemd-networkd.service >/dev/null 2>&1
# libvirtd only on demand: its sockets stay enabled (a client such as lqx-node starts it), but
# neither it nor libvirt-guests starts at boot: a guest that never runs a nested VM does not pay
# for them under TCG (not measured separately). (`systemctl disable libvirtd` would disable the
# sockets too: its unit has Also= lines.)
rm -f "$stage/etc/systemd/system/multi-user.target.wants/libvirtd.service" \
    "$stage/etc/systemd/system/multi-user.target.wants/libvirt-guests.service"
# The image has no machine id: each VM made from it gets its own at first boot.
: >"$stage/etc/machine-id"
rm -f "$stage/var/lib/dbus/machine-id"

kernel=$(cd "$stage/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=initrd.img-${kernel#vmlinuz-}
[ -f "$stage/boot/$initrd" ] || { log "no $initrd in the image"; exit 1; }
mkdir -p "$stage/boot/extlinux"
# extlinux boots /boot/vmlinuz and /boot/initrd.img (paths on the /boot partition): links that the
# kernel packages keep pointing at the newest kernel (link_in_boot), so an upgrade in the guest boots.
printf 'do_symlinks = yes\nlink_in_boot = yes\n' >"$stage/etc/kernel-img.conf"
ln -sfn "$kernel" "$stage/boot/vmlinuz"
ln -sfn "$initrd" "$stage/boot/initrd.img"
rm -f "$stage/vmlinuz" "$stage/vmlinuz.old" "$stage/initrd.img" "$stage/initrd.img.old"
sed -e "s|@KERNEL@|/vmlinuz|" -e "s|@INITRD@|/initrd.img|" -e "s|@UUID@|$uuid|" \
    "$here/rootfs/extlinux.conf" >"$stage/boot/extlinux/extlinux.conf"

# --- the disk: MBR + syslinux boot code, /boot (ext2) and / (ext4) made from the tree, extlinux ----
# extlinux reads /boot; syslinux 6.04 cannot load files from an ext4 made by this e2fsprogs (I/O
# error on the kernel), so /boot is ext2, which it reads fully, and / keeps every ext4 feature.
raw=$out/debian12.raw
rm -f "$raw"
truncate -s "${size_mib}M" "$raw"
boot_mib=160
printf 'label: dos\nstart=2048, size=%dMiB, type=83, bootable\nstart=%d, type=83\n' "$boot_mib" \
    $((2048 + boot_mib * 2048)) | sfdisk --quiet "$raw"
boot_start=2048 boot_sectors=$((boot_mib * 2048))
root_start=$((boot_start + boot_sectors))
root_sectors=$(($(stat -c %s "$raw") / 512 - root_start))
boot_tree=$out/boot-tree
rm -rf "$boot_tree"
mv "$stage/boot" "$boot_tree"
mkdir "$stage/boot"
log "/boot ext2 ($boot_mib MiB), / ext4 ($((root_sectors / 2048)) MiB, UUID $uuid), from the tree"
mke2fs -q -t ext2 -U "$boot_uuid" -L boot -d "$boot_tree" -E offset=$((boot_start * 512)) "$raw" \
    "$((boot_sectors / 2))k" >&2
mke2fs -q -t ext4 -U "$uuid" -L root -d "$stage" -E offset=$((root_start * 512)) "$raw" "$((root_sectors / 2))k" >&2
loop=$(losetup -f --show -o $((boot_start * 512)) --sizelimit $((boot_sectors * 512)) "$raw")
mkdir -p "$mnt"
mount "$loop" "$mnt"
extlinux --install "$mnt/extlinux" >&2
umount "$mnt"
losetup -d "$loop"
loop=
rm -rf "$boot_tree"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
qemu-img convert -c -O qcow2 "$raw" "$out/debian12.qcow2.tmp"
mv "$out/debian12.qcow2.tmp" "$out/debian12.qcow2"
rm -f "$raw"
rm -rf "$stage"
{
    echo "input_hash=$key"
    echo "suite=$suite"
    echo "kernel=${kernel#vmlinuz-}"
    echo "agent=$agent_version"
    echo "root_uuid=$uuid"
    echo "disk_mib=$size_mib"
    echo "qcow2_bytes=$(stat -c %s "$out/debian12.qcow2")"
} >"$out/manifest"
log "built $out/debian12.qcow2 ($(du -h "$out/debian12.qcow2" | cut -f1), kernel ${kernel#vmlinuz-}, agent $agent_version)"
