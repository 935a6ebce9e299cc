#!/usr/bin/env bash
# A second libvirtd on this machine standing in for another host, as a live-migration target:
# its own mount namespace with private /etc/libvirt, /run/libvirt, /var/lib/libvirt,
# /var/log/libvirt and /var/cache/libvirt, its own host UUID (libvirt refuses to migrate to
# itself), reachable at qemu+tcp://127.0.0.1:16510/system (no authentication: loopback only).
#
#   scripts/libvirt-peer.sh start   prints the URI and the peer libvirtd's pid (for nsenter)
#   scripts/libvirt-peer.sh stop
set -euo pipefail
dir=${LQX_PEER_DIR:-/tmp/lqx-libvirt-peer}
uri="qemu+tcp://127.0.0.1:16510/system"
case "${1:-start}" in
start)
    if virsh -c "$uri" version >/dev/null 2>&1; then
        echo "$uri $(cat "$dir/libvirtd.pid")"
        exit 0
    fi
    rm -rf "$dir"
    mkdir -p "$dir"/{run,lib,log,cache/qemu,etc}
    cp -a /etc/libvirt/. "$dir/etc/"
    cp -a /var/lib/libvirt/. "$dir/lib/"
    cat >>"$dir/etc/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "16510"
auth_tcp = "none"
host_uuid = "6c717800-0000-4000-8000-0000000000a2"
CONF
    unshare -m --propagation private bash -c "
        mount --bind '$dir/run' /run/libvirt
        mount --bind '$dir/lib' /var/lib/libvirt
        mount --bind '$dir/log' /var/log/libvirt
        mount --bind '$dir/cache' /var/cache/libvirt
        mount --bind '$dir/etc' /etc/libvirt
        virtlogd -d -p '$dir/virtlogd.pid' </dev/null >/dev/null 2>&1
        libvirtd -d --listen -p '$dir/libvirtd.pid' </dev/null >/dev/null 2>&1"
    for _ in $(seq 1 50); do
        if virsh -c "$uri" version >/dev/null 2>&1; then
            echo "$uri $(cat "$dir/libvirtd.pid")"
            exit 0
        fi
        sleep 0.2
    done
    echo "libvirt-peer: the peer libvirtd did not answer on $uri within 10 s" >&2
    exit 1
    ;;
stop)
    for vm in $(virsh -c "$uri" list --all --name 2>/dev/null || true); do
        virsh -c "$uri" destroy "$vm" >/dev/null 2>&1 || true
        virsh -c "$uri" undefine "$vm" >/dev/null 2>&1 || true
    done
    # Only processes that are still the peer's (a stale pid file may name a reused pid).
    for p in libvirtd virtlogd; do
        pidfile="$dir/$p.pid"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
        if [[ "$cmdline" == *"-p $pidfile"* ]]; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true # SIGTERM blocked or ignored: no more waiting
        fi
        rm -f "$pidfile"
    done
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
