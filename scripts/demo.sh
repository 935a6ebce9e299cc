#!/usr/bin/env bash
# The main job: builds lqx and lqx-agent, starts an agent on a unix socket, and shows exec, cp
# and metrics through lqx. Leaves the agent running for you to try more (its pid is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="/opt/swift/usr/bin:$PATH"
swift build -c release --product lqx-agent
swift build -c release --product lqx
BIN=$(swift build -c release --show-bin-path)
SOCK=${SOCK:-/tmp/lqx-demo.sock}
WORK=$(mktemp -d)
"$BIN/lqx-agent" --listen "unix:$SOCK" --dry-run-power --audit-log "$WORK/audit.log" 2>"$WORK/agent.log" &
AGENT=$!
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
lqx() { echo "\$ lqx --agent unix:$SOCK $*"; "$BIN/lqx" --agent "unix:$SOCK" "$@"; }
lqx info
lqx ping -c 3
lqx exec -- sh -c 'echo "hello from $(hostname) as $(id -un)"; echo "to stderr" >&2; exit 7' || echo "(exit status $?)"
head -c 64000000 /dev/urandom > "$WORK/payload.bin"
lqx cp "$WORK/payload.bin" ":$WORK/uploaded.bin"
lqx cp ":$WORK/uploaded.bin" "$WORK/downloaded.bin"
cmp "$WORK/payload.bin" "$WORK/downloaded.bin" && echo "round trip identical: $(sha256sum < "$WORK/downloaded.bin" | cut -c1-16)…"
lqx metrics
echo
echo "agent pid $AGENT on unix:$SOCK (audit log $WORK/audit.log); stop it with: kill $AGENT"
