#!/usr/bin/env bash
# The main job, on the Debian packages: a cluster on this machine as an operator installs one.
#
#   scripts/cluster.sh          build the packages (packaging/build-debs.sh) and the Debian 12 guest
#                               image (packaging/debian-image/build.sh), install limiquantix-agent,
#                               -node, -controlplane and -client with apt from the local repository,
#                               start the control plane and the node daemon, join the node with a
#                               single-use token, create a VM from the image through the control
#                               plane and run `lqx exec` in it; prints the times and what to try next
#   scripts/cluster.sh stop     delete the VM and stop both daemons (the packages stay installed;
#                               `apt-get purge limiquantix-node limiquantix-controlplane` removes
#                               them and the cluster's state)
#
# Where systemd is PID 1 the daemons are its units (`systemctl enable --now`). Elsewhere
# (containers, CI) this script runs each unit's own command line: ExecStart with the unit's
# EnvironmentFile, as its User/Group, with its StateDirectory/RuntimeDirectory/LogsDirectory and
# UMask, output to /var/log/limiquantix/UNIT.log. The login is root's (~/.config/limiquantix/config).
# Running it again on an installed system skips what is done (the build, the install, the join) and
# reports the time from an installed system to the first exec. VM: VM=NAME (default debian-1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
began=$(date +%s)
vm=${VM:-debian-1}
units=(lqx-controlplane lqx-node)
run=/run/lqx-cluster # pids of the daemons started without systemd
systemd=no
[ -d /run/systemd/system ] && systemd=yes
say() { echo "cluster: $*"; }
lqx() { echo "\$ lqx $*"; /usr/bin/lqx "$@"; }

# --- the units' own command lines, where systemd is not PID 1 --------------------------------------
unit_key() { sed -n "s/^$2=//p" "/lib/systemd/system/$1.service" | tail -n 1; }
unit_running() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }
unit_stop() {
    if [ $systemd = yes ]; then
        systemctl stop "$1"
    elif unit_running "$1"; then
        local pid
        pid=$(cat "$run/$1.pid")
        kill "$pid"
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$run/$1.pid"
    fi
}
unit_start() {
    local unit=$1
    if [ $systemd = yes ]; then
        systemctl enable "$unit" >/dev/null 2>&1
        systemctl restart "$unit"
        return
    fi
    unit_stop "$unit"
    local user group env mode dir
    user=$(unit_key "$unit" User) group=$(unit_key "$unit" Group)
    env=$(unit_key "$unit" EnvironmentFile)
    mkdir -p "$run"
    install -d -m 0750 /var/log/limiquantix
    for kind in State:/var/lib Runtime:/run Logs:/var/log; do
        dir=$(unit_key "$unit" "${kind%%:*}Directory")
        [ -n "$dir" ] || continue
        mode=$(unit_key "$unit" "${kind%%:*}DirectoryMode")
        install -d -m "${mode:-0755}" "${kind#*:}/$dir"
        [ -z "$user" ] || chown "$user:${group:-$user}" "${kind#*:}/$dir"
    done
    # ExecStart's words; $VAR expands to the variable's words, as systemd does.
    local words=() word name
    read -ra raw <<<"$(unit_key "$unit" ExecStart)"
    (
        [ -z "$env" ] || { set -a; . "${env#-}"; set +a; }
        for word in "${raw[@]}"; do
            if [[ $word =~ ^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$ ]]; then
                name=${BASH_REMATCH[1]}
                read -ra more <<<"${!name:-}"
                words+=("${more[@]}")
            else
                words+=("$word")
            fi
        done
        mask=$(unit_key "$unit" UMask)
        umask "${mask:-0022}"
        if [ -n "$user" ]; then
            exec setsid setpriv --reuid="$user" --regid="${group:-$user}" --init-groups -- "${words[@]}" \
                >>"/var/log/limiquantix/$unit.log" 2>&1 </dev/null
        fi
        exec setsid "${words[@]}" >>"/var/log/limiquantix/$unit.log" 2>&1 </dev/null
    ) &
    echo $! >"$run/$unit.pid"
}
# Started unless it runs (systemd: enabled and started).
unit_ensure() {
    if [ $systemd = yes ]; then
        systemctl enable --now "$1" >/dev/null 2>&1
    elif ! unit_running "$1"; then
        unit_start "$1"
    fi
}
unit_log() {
    if [ $systemd = yes ]; then journalctl -u "$1" -o cat --no-pager -n 400; else cat "/var/log/limiquantix/$1.log" 2>/dev/null; fi
}

if [ "${1:-}" = stop ]; then
    if /usr/bin/lqx vm get "$vm" >/dev/null 2>&1; then
        lqx vm delete "$vm" || true
        for _ in $(seq 150); do /usr/bin/lqx vm get "$vm" >/dev/null 2>&1 || break; sleep 0.2; done
    fi
    unit_stop lqx-node
    unit_stop lqx-controlplane
    say "stopped (the packages stay installed)"
    exit 0
fi
[ $# -eq 0 ] || { echo "usage: scripts/cluster.sh [stop]" >&2; exit 2; }

# --- packages and image ----------------------------------------------------------------------------
./scripts/setup.sh
echo "== packages (packaging/build-debs.sh)"
./packaging/build-debs.sh
version=$(cat .build-deb/version)
echo "== Debian 12 guest image (packaging/debian-image/build.sh)"
./packaging/debian-image/build.sh
image=$root/.build-debian-image/debian12.qcow2
[ $systemd = yes ] || ./scripts/libvirt-up.sh

echo "== apt-get install from the local repository (.build-deb/repo, signed)"
keyring=/usr/share/keyrings/limiquantix-local.gpg
list=/etc/apt/sources.list.d/limiquantix-local.list
install -m 0644 .build-deb/repo/limiquantix-local.gpg "$keyring"
# Kept: `apt-get update && apt-get upgrade` installs the next build from here.
echo "deb [signed-by=$keyring] file:$root/.build-deb/repo ./" >"$list"
packages=(limiquantix-controlplane limiquantix-node limiquantix-client limiquantix-agent)
installed=yes
for p in "${packages[@]}"; do
    [ "$(dpkg-query -W -f='${Version} ${db:Status-Abbrev}' "$p" 2>/dev/null)" = "$version ii " ] || installed=no
done
if [ $installed = yes ]; then
    say "installed already at $version"
else
    apt-get update -qq -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]/%/=$version}" \
        >/dev/null
    say "installed ${packages[*]} $version"
fi
ready=$(date +%s) # an installed system from here

echo "== control plane (lqx-controlplane.service$([ $systemd = yes ] || echo ", its command line: systemd is not PID 1 here"))"
state=/var/lib/limiquantix/controlplane
unit_ensure lqx-controlplane
for _ in $(seq 300); do
    [ $systemd = yes ] || unit_running lqx-controlplane || break
    [ -s "$state/admin.token" ] && /usr/bin/lqx login 127.0.0.1:8443 --token "$(cat "$state/admin.token")" \
        --ca "$state/pki/ca.crt" >/dev/null 2>&1 && break
    sleep 0.2
done
echo "\$ lqx login 127.0.0.1:8443 --token \"\$(cat $state/admin.token)\" --ca $state/pki/ca.crt"
/usr/bin/lqx login 127.0.0.1:8443 --token "$(cat "$state/admin.token")" --ca "$state/pki/ca.crt" ||
    { unit_log lqx-controlplane | tail -n 30 >&2; exit 1; }

echo "== node (lqx-node.service), joined with a single-use token"
if grep -q '^LQX_NODE_OPTS=".*--control-plane' /etc/default/lqx-node && [ -s /var/lib/limiquantix/node/cluster/node.crt ]; then
    say "joined before (/var/lib/limiquantix/node): no token needed"
else
    said=$(mktemp)
    token=$(/usr/bin/lqx node join-token create --ttl 10m 2>"$said") || true
    sha=$(sed -n 's/.*--ca-sha256 \([0-9a-f]*\).*/\1/p' "$said")
    hint=$(cat "$said")
    rm -f "$said"
    [ -n "$token" ] && [ -n "$sha" ] || { echo "no join token: $hint" >&2; exit 1; }
    # /etc/default/lqx-node is a conffile: this edits the line it documents.
    sed -i "s|^LQX_NODE_OPTS=.*|LQX_NODE_OPTS=\"--listen 127.0.0.1:7443 --control-plane 127.0.0.1:8443 --join-token $token --ca-sha256 $sha\"|" \
        /etc/default/lqx-node
    say "LQX_NODE_OPTS set in /etc/default/lqx-node (CA sha256 $sha)"
    unit_start lqx-node # again: a node the package started runs standalone
fi
unit_ensure lqx-node
for _ in $(seq 300); do /usr/bin/lqx node list 2>/dev/null | grep -q ' READY ' && break; sleep 0.2; done
lqx node list
/usr/bin/lqx node list | grep -q ' READY ' || { unit_log lqx-node | tail -n 30 >&2; exit 1; }

echo "== a VM from the Debian 12 image (its own disk, bootloader and kernel; the agent from its package)"
if /usr/bin/lqx vm get "$vm" >/dev/null 2>&1; then
    lqx vm delete "$vm" || true
    for _ in $(seq 150); do /usr/bin/lqx vm get "$vm" >/dev/null 2>&1 || break; sleep 0.2; done
fi
created=$(date +%s)
lqx vm create "$vm" --clone "$image" --cpus 2 --memory 1024 --label app=demo
for _ in $(seq 600); do
    /usr/bin/lqx vm list 2>/dev/null | grep -E "^default +$vm +RUNNING .* yes" >/dev/null && break
    sleep 0.5
done
lqx vm list
/usr/bin/lqx vm list | grep -E "$vm +RUNNING .* yes" >/dev/null || {
    echo "the VM did not come up with its agent; node log:" >&2
    unit_log lqx-node | tail -n 40 >&2
    exit 1
}
lqx exec "$vm" -- sh -c '. /etc/os-release; echo "hello from $(hostname): $PRETTY_NAME, kernel $(uname -r), lqx-agent $(lqx-agent --version), systemd says $(systemctl is-system-running)"'
now=$(date +%s)
say "first exec: $((now - began)) s from the start of this command, $((now - ready)) s from an installed system, $((now - created)) s from vm create"
echo
echo "Try next (as root; the login is in ~/.config/limiquantix/config):"
while IFS='|' read -r command what; do printf '  %-46s %s\n' "$command" "$what"; done <<EOF
lqx vm list; lqx node list; lqx vm get $vm -o json|
lqx exec -t $vm -- bash|a shell in the guest
lqx cp ./file $vm:/root/file|and back: lqx cp $vm:/root/file ./copy
lqx metrics $vm --since 5m|in-guest telemetry
lqx vm stop $vm; lqx vm start $vm|graceful stop through the agent (systemd poweroff)
lqx audit --vm $vm; lqx events -f|who ran what; the event log
lqx node join-token create|join another host: prints its lqx-node line
apt-get update && apt-get upgrade|the next build from .build-deb/repo
scripts/cluster.sh stop|delete the VM, stop the daemons (packages stay)
EOF
