#!/usr/bin/env bash
# Control-plane benchmarks (release build). Writes benchmarks/results/controlplane.md:
#   - scheduler decision p50/p99 at 1,000 and 10,000 nodes holding 10 VMs each
#   - HA admission control (tolerate 2 host failures) at 1,000 nodes, roomy and nearly full
#   - 1,000 concurrent creates on a nearly full cluster of 1,000 nodes (none over capacity), SQLite and PostgreSQL
#   - API create/get/list throughput through an lqx-controlplane process, SQLite and PostgreSQL
#   - relay: exec round trip and cp throughput through the control plane vs. straight to the node (one real
#     node and test guest; needs libvirtd and packaging/guest-image/build.sh)
#   - scale: 1,000 simulated nodes and 10,000 VMs streaming telemetry every 5 s against an lqx-controlplane
#     process: its CPU and RSS, vm get / vm list latency (about 7 minutes, most of it the ramp)
#
#   benchmarks/controlplane.sh                 everything
#   ONLY=scheduler benchmarks/controlplane.sh  one part (scheduler | admission | creates | api | scale | relay), printed, no results file
#
# PostgreSQL: Debian's postgresql 15 (scripts/setup.sh installs it), a temporary server started by the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
swift build -c release --product lqx-cp-bench
swift build -c release --product lqx-controlplane
swift build -c release --product lqx-node
BENCH=$(swift build -c release --show-bin-path)/lqx-cp-bench
ONLY=${ONLY:-}
part() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }
{
    if part scheduler; then
        echo "## Scheduler decisions"
        echo
        echo "A decision filters and scores every node (spread; zones, racks, GPU nodes tainted, 2 % cordoned; requests"
        echo "with node selectors, tolerations, hard and soft anti-affinity in the mix); each placement is counted before"
        echo "the next decision. The snapshot column is building the scheduler's view from the stored nodes and VMs,"
        echo "which the control plane does once per placement. Targets: p50 ≤ 1 ms at 1,000 nodes, ≤ 10 ms at 10,000."
        echo "Reference: OpenStack Placement's candidate query took ~16 s at ~6,000 hosts."
        echo
        "$BENCH" scheduler --nodes 1000,10000 --decisions 2000
        echo
    fi
    if part creates; then
        echo "## 1,000 concurrent creates"
        echo
        echo "1,000 nodes already holding 10 VMs each (seeded into the store) with room for about one more"
        echo "8-vCPU / 16 GiB VM each; 1,000 such creates at once through the control plane's core (validation, quota,"
        echo "store commit, scheduling, placement commit with the store's capacity check). Tainted and cordoned nodes take"
        echo "none, so some creates stay PENDING. The last column counts nodes over capacity, read back from the store: it"
        echo "must be 0."
        echo
        echo "| store | nodes | VMs before | creates | wall | creates/s | latency per create | result | nodes over capacity |"
        echo "|---|---:|---:|---:|---:|---:|---|---|---:|"
        "$BENCH" creates --store sqlite | grep '^|'
        "$BENCH" creates --store postgres | grep '^|'
        echo
    fi
    if part admission; then
        echo "## HA admission control"
        echo
        echo "\`ha.tolerate-failures 2\` checked for one more HA VM (\`lqx vm create --ha\`): every set of 2 node failures"
        echo "whose displaced HA VMs the counting bound cannot clear is packed VM by VM, highest priority first, with the"
        echo "scheduler's filters and scores. The fixture's nodes (3 sizes, zones, GPU taints, cordons) hold 10 VMs each,"
        echo "half of them HA, with the fixture's node selectors and hard anti-affinity groups; \"tight\" adds non-HA"
        echo "VMs until every node's memory is ~90 % allocated. The issue names no target; the scheduler's own decision"
        echo "at 1,000 nodes is the yardstick (p50 ≤ 1 ms)."
        echo
        "$BENCH" admission --nodes 1000 --tolerate 2
        echo
    fi
    if part api; then
        echo "## API throughput"
        echo
        echo "An lqx-controlplane process (release) with no nodes; clients over TLS with the admin token, one HTTP/2"
        echo "connection each. Creates are stored and scheduled (unschedulable: two commits each); gets read one VM;"
        echo "each list reads every VM, in pages of 1,000."
        echo
        echo "| store | clients | call | calls | throughput | latency |"
        echo "|---|---:|---|---:|---:|---|"
        "$BENCH" api --store sqlite
        "$BENCH" api --store postgres
        echo
    fi
    if part scale; then
        echo "## Control plane at scale"
        echo
        echo "\`lqx-cp-bench scale\`: 1,000 simulated nodes in the benchmark's process, each joined with its own token"
        echo "through the node daemon's join code (CSR, pinned CA), serving the node API over mutual TLS on its own port"
        echo "(the lifecycle calls the reconciler makes, in memory) and heartbeating every 5 s over mutual TLS; 10,000"
        echo "VMs created through the API (16 clients), placed by the scheduler, defined and started on the simulated"
        echo "nodes by the reconciler, each streaming an in-guest sample every 5 s (one WatchAllTelemetry stream per"
        echo "node). Once every VM is RUNNING with telemetry, 60 s are measured: the control plane's CPU and RSS from"
        echo "/proc, \`vm get\` 20/s and \`vm list\` (the first page, 500 VMs) 2/s, and every VM in pages of 1,000"
        echo "every 5 s. The load tool shares the 2 cores with the control plane. Targets: ≤ 1 core, ≤ 1 GB, p99 ≤ 50 ms."
        echo
        "$BENCH" scale --nodes 1000 --vms 10000 --interval 5 --window 60 | grep -v '^\['
        echo
    fi
    if part relay; then
        echo "## The in-guest path through the control plane"
        echo
        echo "\`lqx-cp-bench relay\`: one real lqx-node (libvirt, QEMU under TCG here) joined to an lqx-controlplane, one"
        echo "test guest with its agent. The same calls go straight to the node's API (mutual TLS, an operator certificate"
        echo "of the cluster CA) and through the control plane (TLS and a bearer token; relayed to the node over mutual"
        echo "TLS), interleaved in the same run. Targets: the relay adds ≤ 1 ms to an exec round trip and keeps ≥ 80 % of"
        echo "the file-transfer throughput."
        echo
        "$BENCH" relay --execs 200 --mib 32 --rounds 3
        echo
    fi
    echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB."
    echo "Command: \`benchmarks/controlplane.sh\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
} | if [ -z "$ONLY" ]; then tee benchmarks/results/controlplane.md; else cat; fi
