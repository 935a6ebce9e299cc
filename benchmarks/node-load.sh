#!/usr/bin/env bash
# Node daemon under load: N small VMs (the test guest image, kernel + initramfs boot) on one
# lqx-node, every agent connected and in-guest telemetry flowing every 5 s; then the daemon's CPU
# and RSS over a quiet measuring window. Writes benchmarks/results/node-load.md.
#
#   benchmarks/node-load.sh            N=20 VMs, 384 MiB and 1 vCPU each, 120 s window
#   N=5 WINDOW=30 benchmarks/node-load.sh
#   N=6 HOSTILE=1 benchmarks/node-load.sh   the last VM runs lqx-hostile-agent (initramfs-hostile.cpio), which
#                                           plays its hostile scenarios in turn; writes node-hostile.md
#   OUT=FILE                                results file (default node-load.md / node-hostile.md)
#
# Needs libvirtd (scripts/libvirt-up.sh) and the guest image (packaging/guest-image/build.sh).
# Targets (issue: node daemon on libvirt): <= 2 % of one core and <= 50 MB RSS at 20 VMs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
N=${N:-20}
MEMORY=${MEMORY:-384}
WINDOW=${WINDOW:-120}
INTERVAL=${INTERVAL:-5}
HOSTILE=${HOSTILE:-0}
NORMAL=$((N - HOSTILE))
if [ "$HOSTILE" -gt 0 ]; then OUT=${OUT:-benchmarks/results/node-hostile.md}; else OUT=${OUT:-benchmarks/results/node-load.md}; fi
image=.build-guest/image
[ -f "$image/vmlinuz" ] || ./packaging/guest-image/build.sh
./scripts/libvirt-up.sh
swift build -c release --product lqx-node
swift build -c release --product lqx
bin=$(swift build -c release --show-bin-path)
work=$(mktemp -d /tmp/lqx-node-load.XXXXXX)
chmod 755 "$work"
prefix="lqx-load-$$"
cleanup() {
    for i in $(seq 1 "$N"); do
        "$bin/lqx" --node "${api:-127.0.0.1:1}" vm delete "$prefix-$i" --force >/dev/null 2>&1 || true
    done
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
    for vm in $(virsh -c qemu:///system list --all --name | grep "^$prefix-" || true); do
        virsh -c qemu:///system destroy "$vm" >/dev/null 2>&1 || true
        virsh -c qemu:///system undefine "$vm" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

"$bin/lqx-node" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --state-dir "$work/state" \
    --run-dir "$work/run" --telemetry-interval "$INTERVAL" --node-name load --log-level warning \
    >"$work/out" 2>"$work/log" &
daemon=$!
for _ in $(seq 1 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
api=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$work/out")
metrics=$(sed -n 's/.*metrics=\([^ ]*\).*/\1/p' "$work/out")
get() { python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://$metrics$1').read().decode())"; }

start=$(date +%s.%N)
for i in $(seq 1 "$N"); do
    initrd=initramfs.cpio
    [ "$i" -gt "$NORMAL" ] && initrd=initramfs-hostile.cpio
    "$bin/lqx" --node "$api" vm create "$prefix-$i" --kernel "$PWD/$image/vmlinuz" \
        --initrd "$PWD/$image/$initrd" --cmdline "console=ttyS0 loglevel=4 no_timer_check rdinit=/init" \
        --cpus 1 --memory "$MEMORY" --start >/dev/null
done
echo "node-load: $N VMs started ($HOSTILE hostile); waiting for every normal agent and its telemetry" >&2
normal_vms=$(for i in $(seq 1 "$NORMAL"); do echo "$prefix-$i"; done)
count_normal() { # metric lines of the normal VMs matching an extended regex
    get /metrics | grep -E "$1" | grep -cF -f <(echo "$normal_vms" | sed 's/.*/vm="&"}/') || true
}
deadline=$(($(date +%s) + 600))
while :; do
    connected=$(count_normal '^lqx_vm_agent_connected\{.*\} 1$')
    sampled=$(count_normal '^lqx_guest_telemetry_age_seconds\{')
    [ "$connected" -eq "$NORMAL" ] && [ "$sampled" -eq "$NORMAL" ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "node-load: only $connected agents, $sampled with telemetry" >&2
        for vm in $(get /metrics | sed -n 's/^lqx_vm_agent_connected{.*vm="\([^"]*\)"} 0$/\1/p'); do
            echo "console of $vm (no agent):" >&2
            tail -5 "$work/state/vms/$vm/console.log" >&2
        done
        exit 1
    fi
    sleep 2
done
ready=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
echo "node-load: all $N agents connected with telemetry after $ready s; measuring $WINDOW s" >&2

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }
rss() { awk '/^VmRSS/{print $2}' "/proc/$daemon/status"; }
sleep 10  # let the boot burst settle
c0=$(cpu); t0=$(date +%s.%N); max=0; sum=0; count=0
end=$(($(date +%s) + WINDOW))
while [ "$(date +%s)" -lt "$end" ]; do
    r=$(rss); sum=$((sum + r)); count=$((count + 1)); [ "$r" -gt "$max" ] && max=$r
    sleep 1
done
c1=$(cpu); t1=$(date +%s.%N)
stale=$(get /metrics | grep -F -f <(echo "$normal_vms" | sed 's/.*/vm="&"}/') |
    awk '/^lqx_guest_telemetry_age_seconds\{/ && $2 > 3 * '"$INTERVAL"' {n++} END {print n + 0}')
connected=$(count_normal '^lqx_vm_agent_connected\{.*\} 1$')
hostile_sessions=$(get /metrics | awk '/^lqx_vm_agent_sessions_total\{/ && /'"$prefix"'-('"$(seq -s '|' $((NORMAL + 1)) "$N" 2>/dev/null || echo none)"')"/ {n += $2} END {print n + 0}')
exec_ms=$(python3 - "$bin/lqx" "$api" "$prefix" "$NORMAL" <<'PY'
import subprocess, sys, time
lqx, api, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
times = []
for i in range(1, n + 1):
    t = time.monotonic()
    subprocess.run([lqx, "--node", api, "exec", f"{prefix}-{i}", "--", "true"], check=True, stdout=subprocess.DEVNULL)
    times.append((time.monotonic() - t) * 1000)
times.sort()
print(f"{times[len(times) // 2]:.0f}")
PY
)
read -r pct mean_mb max_mb <<<"$(python3 -c "
cpu = ($c1 - $c0) / $ticks / ($t1 - $t0) * 100
print(f'{cpu:.2f} {$sum / $count * 1024 / 1e6:.1f} {$max * 1024 / 1e6:.1f}')")"
host_load=$(cut -d' ' -f1-3 /proc/loadavg)
{
    if [ "$HOSTILE" -gt 0 ]; then
        echo "# Node daemon with $NORMAL VMs and $HOSTILE hostile one(s)"
        echo
        echo "lqx-node (release) with $NORMAL normal VMs and $HOSTILE running \`lqx-hostile-agent\` (initramfs-hostile.cpio:"
        echo "PING flood then not reading, telemetry flood, tiny replies next to 256 KiB discarded frames,"
        echo "oversized replies, garbage, protocol violation; one per session, in turn)."
    else
        echo "# Node daemon with $N VMs"
        echo
        echo "lqx-node (release) with $N running VMs."
    fi
    echo "Test guest image, 1 vCPU, $MEMORY MiB, TCG here; every normal agent connected, in-guest"
    echo "telemetry every $INTERVAL s per VM, measured over $WINDOW s after all were up."
    echo
    echo "| measure | result | target | ratio |"
    echo "|---|---|---|---|"
    echo "| daemon CPU | $pct % of one core | <= 2 % | $(python3 -c "print(f'{$pct / 2:.2f}')") |"
    echo "| daemon RSS, mean (10^6 bytes) | $mean_mb MB | | |"
    echo "| daemon RSS, max | $max_mb MB | <= 50 MB | $(python3 -c "print(f'{$max_mb / 50:.2f}')") |"
    echo "| normal agents connected at the end | $connected of $NORMAL | all | |"
    echo "| normal VMs whose last sample is older than 3 intervals | $stale | 0 | |"
    echo "| \`lqx --node exec VM -- true\`, median over the normal VMs, at the end | $exec_ms ms | | |"
    [ "$HOSTILE" -gt 0 ] && echo "| sessions the node established with the hostile agent(s) | $hostile_sessions | closed and retried | |"
    echo "| create + start of $N VMs until all normal agents sent telemetry | $ready s | | |"
    echo
    echo "Host: $(nproc) cores, load average at the end $host_load (the guests run under TCG)."
    echo "Command: \`N=$N HOSTILE=$HOSTILE MEMORY=$MEMORY WINDOW=$WINDOW benchmarks/node-load.sh\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
} | tee "$OUT"
