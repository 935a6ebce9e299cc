#!/usr/bin/env bash
# Agent/broker benchmark: the agent as it ships in a guest (release, --static-swift-stdlib, stripped)
# in its own process on a unix socket, the broker in lqx-bench. Writes benchmarks/results/agent-unix.md
# (work files on tmpfs, the transfer ceiling without disk) and agent-unix-disk.md (work files on /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
swift build -c release --static-swift-stdlib --disable-default-traits --product lqx-agent --scratch-path .build-static
swift build -c release --product lqx-bench
strip -o .build-static/lqx-agent.stripped .build-static/release/lqx-agent
AGENT=.build-static/lqx-agent.stripped
# Let the build's write-back finish first: it otherwise shows up as noise in the first run.
sync
sleep 10
BENCH=$(swift build -c release --show-bin-path)/lqx-bench
run() {
    local out=$1 work=$2
    {
        "$BENCH" "$AGENT" "$work"
        echo
        echo "Agent binary: $(du -m "$AGENT" | cut -f1) MB stripped, static Swift stdlib. Work directory: $work."
        echo "Command: \`benchmarks/run.sh\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
    } | tee "$out"
    rm -rf "$work"
}
run benchmarks/results/agent-unix.md /dev/shm/lqx-bench
run benchmarks/results/agent-unix-disk.md /tmp/lqx-bench-disk
