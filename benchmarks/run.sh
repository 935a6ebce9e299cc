#!/usr/bin/env bash
# Runs the agent/broker benchmark (release builds, agent in its own process) and writes
# benchmarks/results/agent-unix.md. Usage: benchmarks/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
swift build -c release --product lqx-agent
swift build -c release --product lqx-bench
BIN=$(swift build -c release --show-bin-path)
OUT=benchmarks/results/agent-unix.md
{
    "$BIN/lqx-bench" "$BIN/lqx-agent"
    echo
    echo "Command: \`benchmarks/run.sh\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
} | tee "$OUT"
