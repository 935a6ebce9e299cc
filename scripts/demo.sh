#!/usr/bin/env bash
# The main job: a cluster on this machine. Builds limiquantix and the test guest, starts
# lqx-controlplane on SQLite, joins one lqx-node (on this host's libvirtd) with a join token,
# creates a VM from the test guest through the control plane, and runs exec, cp and metrics in it
# through control plane → node → agent. On a terminal it ends in a shell in the guest
# (`lqx exec -t demo -- sh`). Everything lives in one temporary directory, removed at the end
# (KEEP=1 leaves the cluster running and prints how to reach it and how to stop it).
#
#   scripts/demo.sh            (scripts/demo-agent.sh: one guest agent, no cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
began=$(date +%s)
./scripts/setup.sh
export PATH="/opt/swift/usr/bin:$PATH"
./packaging/guest-image/build.sh
echo "== build"
swift build --product lqx-controlplane
swift build --product lqx-node
swift build --product lqx
./scripts/libvirt-up.sh
BIN=$(pwd)/.build/debug
IMAGE=$(pwd)/.build-guest/image
WORK=$(mktemp -d /tmp/lqx-cluster.XXXXXX)
chmod 755 "$WORK" # libvirt's QEMU user reaches the node's run directory through it
export XDG_CONFIG_HOME=$WORK/config # lqx login writes here, not to your ~/.config
CP_PID="" NODE_PID=""
cleanup() {
    if [ -n "$NODE_PID" ]; then
        "$BIN/lqx" vm delete demo >/dev/null 2>&1 || true
        for _ in $(seq 100); do "$BIN/lqx" vm get demo >/dev/null 2>&1 || break; sleep 0.2; done
        kill "$NODE_PID" 2>/dev/null || true
    fi
    [ -n "$CP_PID" ] && kill "$CP_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
[ "${KEEP:-0}" = 1 ] || trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || shuf -i 20000-60000 -n 1; }

echo "== control plane (SQLite in $WORK/cp)"
"$BIN/lqx-controlplane" --listen 127.0.0.1:0 --node-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --state-dir "$WORK/cp" --heartbeat-interval 1 >"$WORK/cp.out" 2>"$WORK/cp.log" &
CP_PID=$!
for _ in $(seq 100); do grep -q '^cluster CA' "$WORK/cp.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^cluster CA' "$WORK/cp.out" || { echo "the control plane did not start:" >&2; cat "$WORK/cp.log" >&2; exit 1; }
cat "$WORK/cp.out"
API=$(sed -n 's/.* grpc=\([^ ]*\).*/\1/p' "$WORK/cp.out")
METRICS=$(sed -n 's/.* metrics=\([^ ]*\).*/\1/p' "$WORK/cp.out")
HTTPS=$(sed -n 's/.* https=\([^ ]*\).*/\1/p' "$WORK/cp.out")
SHA=$(sed -n 's/^cluster CA: .* (sha256 \([0-9a-f]*\))$/\1/p' "$WORK/cp.out")
lqx() { echo "\$ lqx $*"; "$BIN/lqx" "$@"; }
lqx login "$API" --token "$(cat "$WORK/cp/admin.token")" --ca-sha256 "$SHA"

echo "== node: joins with a single-use token"
JOIN=$("$BIN/lqx" node join-token create --ttl 10m 2>/dev/null)
NODE_PORT=$(free_port)
"$BIN/lqx-node" --listen "127.0.0.1:$NODE_PORT" --control-plane "$API" --join-token "$JOIN" --ca-sha256 "$SHA" \
    --state-dir "$WORK/node/state" --run-dir "$WORK/node/run" --node-name "$(hostname)" \
    --telemetry-interval 2 >"$WORK/node.out" 2>"$WORK/node.log" &
NODE_PID=$!
for _ in $(seq 100); do "$BIN/lqx" node list 2>/dev/null | grep -q ' READY ' && break; sleep 0.2; done
lqx node list

echo "== a VM from the test guest, created through the control plane"
lqx vm create demo --kernel "$IMAGE/vmlinuz" --initrd "$IMAGE/initramfs.cpio" \
    --cmdline "console=ttyS0 loglevel=6 no_timer_check rdinit=/init" --cpus 1 --memory 512 --label app=demo
start=$(date +%s)
for _ in $(seq 300); do
    "$BIN/lqx" vm list 2>/dev/null | grep -E '^default +demo +RUNNING .* yes' >/dev/null && break
    sleep 0.5
done
lqx vm list
"$BIN/lqx" vm list | grep -E 'demo +RUNNING .* yes' >/dev/null || {
    echo "the VM did not come up with its agent; node log:" >&2
    tail -n 40 "$WORK/node.log" >&2
    exit 1
}
echo "VM running with its agent $(($(date +%s) - start)) s after create"
lqx vm explain demo

echo "== in the guest, through control plane → node → agent"
lqx exec demo -- sh -c 'echo "hello from $(hostname), kernel $(uname -r)"; exit 7' || echo "(exit status $?)"
head -c 16000000 /dev/urandom >"$WORK/payload.bin"
lqx cp "$WORK/payload.bin" demo:/tmp/payload.bin
lqx exec demo -- sha256sum /tmp/payload.bin
lqx cp demo:/tmp/payload.bin "$WORK/back.bin"
cmp "$WORK/payload.bin" "$WORK/back.bin" && echo "round trip identical: $(sha256sum <"$WORK/back.bin" | cut -c1-16)…"
lqx metrics demo
lqx audit --vm demo
lqx events --vm demo
if command -v curl >/dev/null; then
    echo "the same API as JSON over HTTPS (Connect's unary form):"
    echo "\$ curl -s --cacert ca.crt -X POST https://$HTTPS/limiquantix.compute.v1.VMService/GetVM -H 'Content-Type: application/json' -H 'Authorization: Bearer …' -d '{\"name\":\"demo\"}'"
    curl -s --cacert "$WORK/cp/pki/ca.crt" -X POST "https://$HTTPS/limiquantix.compute.v1.VMService/GetVM" \
        -H "Content-Type: application/json" -H "Authorization: Bearer $(cat "$WORK/cp/admin.token")" \
        -d '{"name":"demo"}' | head -c 700
    echo
fi
lqx metrics demo --since 1m
echo "control plane /metrics:"
command -v curl >/dev/null && curl -s "http://$METRICS/metrics" | grep -E '^lqx_(controlplane_(nodes|vms)|vm_memory_total_bytes)\{' | grep -v ' 0$' || true
echo "from a fresh machine to here: $(($(date +%s) - began)) s"
cat <<EOF

Try next (XDG_CONFIG_HOME=$XDG_CONFIG_HOME holds the login):
  lqx vm list | lqx vm get demo -o json | lqx node list
  lqx exec -t demo -- sh                     a shell in the guest
  lqx vm stop demo; lqx vm start demo        graceful stop through the agent, and back
  lqx events -f                              follow the event log
  lqx token create --user alice --role viewer
EOF
if [ "${KEEP:-0}" = 1 ]; then
    echo "KEEP=1: control plane pid $CP_PID, node pid $NODE_PID; stop with: kill $NODE_PID $CP_PID (the VM keeps running: lqx vm delete demo first)"
elif [ -t 0 ] && [ -t 1 ]; then
    echo
    lqx exec -t demo -- sh || true
fi
