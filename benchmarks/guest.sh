#!/usr/bin/env bash
# The agent measured inside a QEMU guest (TCG here): builds the guest image and lqx-bench, boots the
# guest and writes benchmarks/results/agent-guest.md (each figure next to its floor or ceiling
# measured in the same guest in the same run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
./packaging/guest-image/build.sh
swift build -c release --product lqx-bench
BENCH=$(swift build -c release --show-bin-path)/lqx-bench
sync
sleep 5
{
    "$BENCH" guest .build-guest/image
    echo
    echo "Command: \`benchmarks/guest.sh\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD)); host: $(nproc) cores, QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}')."
} | tee benchmarks/results/agent-guest.md
