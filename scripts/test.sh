#!/usr/bin/env bash
# Runs every test tier: format lint, build without warnings, unit + loopback tests, then the system
# tests against the agent inside a QEMU guest (image from packaging/guest-image/build.sh), then the
# Debian packages (built, linted, installed, removed and purged with apt), the Debian 12 guest with
# them under systemd, and README's main job on the packages (scripts/cluster.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="/opt/swift/usr/bin:$PATH"
echo "== swift format lint"
swift format lint --strict --recursive Sources Tests Package.swift fuzz
echo "== build"
swift build --build-tests 2>&1 | tee /tmp/lqx-build.log
if grep -E "^/.*(warning|error):" /tmp/lqx-build.log | grep -v "/.build/" | grep -v "/Generated/"; then
    echo "build produced warnings" >&2
    exit 1
fi
./scripts/check-agent-deps.sh .build/debug
echo "== guest image"
./packaging/guest-image/build.sh
echo "== libvirtd"
./scripts/libvirt-up.sh
export LQX_REQUIRE_LIBVIRT=1
# The store contract tests start their own PostgreSQL (initdb + pg_ctl in a temp dir); here it must exist.
export LQX_REQUIRE_POSTGRES=1
# A test runner that dies must not leave guests or test domains behind. Tests record what they
# start (LQXTestSupport.TestRun): QEMU and daemon pids, libvirt domain names. Only those are
# stopped; other VMs on this host, limiquantix or not, are left alone.
export LQX_TEST_RUN_DIR
LQX_TEST_RUN_DIR=$(mktemp -d /tmp/lqx-test-run.XXXXXX)
cleanup() {
    ./scripts/libvirt-peer.sh stop || true
    [ ! -d /run/lqx-cluster ] || ./scripts/cluster.sh stop >/dev/null 2>&1 || true
    if [ -f "$LQX_TEST_RUN_DIR/pids" ]; then
        while read -r pid; do
            # A pid the kernel has since given to another program is left alone.
            if grep -qa -e qemu-system -e lqx-node -e lqx-controlplane -e postgres -e prometheus "/proc/$pid/cmdline" 2>/dev/null; then
                kill -9 "$pid" 2>/dev/null || true
            fi
        done <"$LQX_TEST_RUN_DIR/pids"
    fi
    if [ -f "$LQX_TEST_RUN_DIR/domains" ]; then
        sort -u "$LQX_TEST_RUN_DIR/domains" | while read -r vm; do
            virsh -c qemu:///system destroy "$vm" >/dev/null 2>&1 || true
            virsh -c qemu:///system undefine --nvram "$vm" >/dev/null 2>&1 || true
        done
    fi
    rm -rf "$LQX_TEST_RUN_DIR"
}
trap cleanup EXIT
echo "== tests"
LIBVIRT_SYSTEM_TESTS="NodeLibvirtSystemTests|NodeManagerSystemTests|NodeAPISystemTests"
swift test --skip-build --parallel --num-workers 2 \
    --skip "GuestSystemTests|NodeLoadSystemTests|HostileAgentTests|ControlPlaneTests|$LIBVIRT_SYSTEM_TESTS"
# Apart: PostgreSQL and the concurrent-writer tests would take the CPU from the timing-sensitive tests above.
echo "== control plane: store contract (SQLite, PostgreSQL), durability, scheduler, cluster core, API"
swift test --skip-build --parallel --num-workers 2 --filter "ControlPlaneTests" --skip "ClusterSystemTests"
echo "== control plane with 8 simulated nodes and 48 VMs (the scale benchmark's path, small)"
timeout 300 .build/debug/lqx-cp-bench scale --nodes 8 --vms 48 --interval 1 --window 3 --base-port 21000 \
    --ramp-timeout 120
# Apart: its floods would take the CPU from the timing-sensitive tests above.
echo "== hostile agent against lqx's broker"
swift test --skip-build --parallel --num-workers 2 --filter "HostileAgentTests"
echo "== libFuzzer: frame decoder, messages, multiplexer (60 s)"
./scripts/fuzz.sh 60
echo "== system tests in a QEMU guest started directly"
swift test --skip-build --filter "GuestSystemTests"
# Separately, so the TCG guests under libvirt do not share the 2 cores with the direct ones.
echo "== system tests with VMs under libvirtd (node daemon; cluster: control plane + two nodes)"
swift test --skip-build --filter "$LIBVIRT_SYSTEM_TESTS|ClusterSystemTests"
echo "== 20 VMs on one node daemon, one hostile"
swift test --skip-build --filter "NodeLoadSystemTests"
echo "== Debian packages: build (release, static Swift runtime), lintian, signed local repository"
./packaging/build-debs.sh
echo "== Debian packages: install with apt, versions, units, conffiles, remove keeps, purge deletes"
./packaging/test-debs.sh
echo "== Debian 12 guest from its own disk (agent from the package, under systemd) through lqx-node"
./packaging/debian-image/build.sh
# A newer build of the same tree for the upgrade inside the guest (only the version differs).
LQX_DEB_OUT=.build-deb-next LQX_DEB_VERSION="$(cat .build-deb/version)+up1" ./packaging/build-debs.sh
LQX_REQUIRE_DEBIAN_IMAGE=1 swift test --skip-build --filter "DebianGuestSystemTests"
echo "== README's main job on the packages: install, start, join, a VM from the Debian image, exec"
./scripts/cluster.sh
./scripts/cluster.sh stop
