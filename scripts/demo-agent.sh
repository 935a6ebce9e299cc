#!/usr/bin/env bash
# The agent on its own: builds the demo guest (Debian cloud kernel + busybox initramfs with lqx-agent),
# boots it under QEMU, shows info, exec, cp and metrics through lqx over the guest's virtio-serial
# port, and then drops you into a shell in the guest (`lqx exec -t -- sh`) when run on a terminal.
# Leaving the shell powers the guest off through the agent.
#
#   scripts/demo-agent.sh      (KEEP=1 leaves the guest running and prints how to reach it)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="/opt/swift/usr/bin:$PATH"
./packaging/guest-image/build.sh
LQX=$(pwd)/.build-static/release/lqx
WORK=$(mktemp -d /tmp/lqx-demo.XXXXXX)
SOCK=$WORK/agent.sock
packaging/guest-image/boot.sh --socket "$SOCK" --console "$WORK/console.log" --memory 1024 --cpus 2 &
QEMU=$!
cleanup() {
    kill "$QEMU" 2>/dev/null || true
    rm -rf "$WORK"
}
[ "${KEEP:-0}" = 1 ] || trap cleanup EXIT
echo "booting the demo guest (QEMU pid $QEMU, console $WORK/console.log)…"
start=$(date +%s.%N)
for _ in $(seq 600); do
    "$LQX" --agent "unix:$SOCK" ping -c 1 >/dev/null 2>&1 && break
    kill -0 "$QEMU" 2>/dev/null || { echo "QEMU exited; console:" >&2; cat "$WORK/console.log" >&2; exit 1; }
    sleep 0.2
done
"$LQX" --agent "unix:$SOCK" ping -c 1 >/dev/null || { echo "the agent did not answer; console:" >&2; cat "$WORK/console.log" >&2; exit 1; }
echo "agent ready $(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo "?") s after QEMU started"
lqx() { echo "\$ lqx --agent unix:$SOCK $*"; "$LQX" --agent "unix:$SOCK" "$@"; }
lqx info
lqx ping -c 3
lqx exec -- sh -c 'echo "hello from $(hostname), kernel $(uname -r)"; echo "to stderr" >&2; exit 7' || echo "(exit status $?)"
head -c 32000000 /dev/urandom >"$WORK/payload.bin"
lqx cp "$WORK/payload.bin" ":/tmp/payload.bin"
lqx exec -- sha256sum /tmp/payload.bin
lqx cp ":/tmp/payload.bin" "$WORK/back.bin"
cmp "$WORK/payload.bin" "$WORK/back.bin" && echo "round trip identical: $(sha256sum <"$WORK/back.bin" | cut -c1-16)…"
lqx metrics
cat <<EOF

The guest is reachable through its virtio-serial port's socket:
  $LQX --agent unix:$SOCK exec -- ls -l /        run a command
  $LQX --agent unix:$SOCK cp FILE :/tmp/FILE     copy into the guest (and :PATH LOCAL back)
  $LQX --agent unix:$SOCK metrics                in-guest telemetry (top for a live view)
  $LQX --agent unix:$SOCK shutdown               power it off
EOF
if [ -t 0 ] && [ -t 1 ]; then
    echo
    lqx exec -t -- sh || true
    [ "${KEEP:-0}" = 1 ] && exit 0
    lqx shutdown
    for _ in $(seq 100); do kill -0 "$QEMU" 2>/dev/null || break; sleep 0.1; done
elif [ "${KEEP:-0}" = 1 ]; then
    echo "KEEP=1: the guest keeps running (QEMU pid $QEMU)."
else
    echo "(not a terminal: no interactive shell; powering the guest off)"
    lqx shutdown
    for _ in $(seq 100); do kill -0 "$QEMU" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$QEMU" 2>/dev/null && echo "guest still running after 10 s" || echo "guest powered off"
fi
