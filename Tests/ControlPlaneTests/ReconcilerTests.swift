import ControlPlane
import LQXModel
import LQXTestSupport
import Logging
import Synchronization
import Testing

/// Nodes in memory for the reconciler's logic: each keeps its VMs' states; `report` is what a
/// heartbeat would carry. Calls can be made to fail.
final class MemoryNodes: NodeDriver {
    private let vms = Mutex<[String: [String: String]]>([:])
    let failures = Mutex<[String: Int]>([:])
    /// Exact calls that fail once.
    let failOnce = Mutex<Set<String>>([])
    let calls = Mutex<[String]>([])
    /// The epoch of every command, by VM id, in order.
    let epochs = Mutex<[String: [Int64]]>([:])

    private func record(_ call: String, epoch: Int64) throws(LQXError) {
        let id = String(call.split(separator: " ")[1])
        epochs.withLock { $0[id, default: []].append(epoch) }
        try record(call)
    }

    func report(_ node: Node) -> [ObservedVM] {
        vms.withLock { $0[node.meta.id] ?? [:] }.map {
            ObservedVM(id: $0.key, name: $0.key, state: $0.value, agentConnected: $0.value == "running")
        }
    }

    func states(_ node: Node) -> [String: String] { vms.withLock { $0[node.meta.id] ?? [:] } }

    private func record(_ call: String) throws(LQXError) {
        calls.withLock { $0.append(call) }
        let kind = String(call.split(separator: " ")[0])
        let failing =
            failOnce.withLock { $0.remove(call) != nil }
            || failures.withLock { failures -> Bool in
                guard let left = failures[kind], left > 0 else { return false }
                failures[kind] = left - 1
                return true
            }
        if failing { throw LQXError(.hypervisor, "\(kind) failed on purpose") }
    }

    private func set(_ id: String, _ state: String?, _ node: Node) -> ObservedVM {
        vms.withLock { $0[node.meta.id, default: [:]][id] = state }
        return ObservedVM(id: id, name: id, state: state ?? "", agentConnected: state == "running")
    }

    func get(_ vmID: String, on node: Node) async throws(LQXError) -> ObservedVM? {
        states(node)[vmID].map { ObservedVM(id: vmID, name: vmID, state: $0, agentConnected: $0 == "running") }
    }
    func create(_ machine: VMSpec, start: Bool, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM {
        try record("create \(machine.name)", epoch: epoch)
        return set(machine.name, start ? "running" : "shut_off", node)
    }
    func start(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM {
        try record("start \(vmID)", epoch: epoch)
        return set(vmID, "running", node)
    }
    func stop(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM {
        try record("stop \(vmID)", epoch: epoch)
        return set(vmID, "shut_off", node)
    }
    func pause(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM {
        try record("pause \(vmID)", epoch: epoch)
        return set(vmID, "paused", node)
    }
    func resume(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM {
        try record("resume \(vmID)", epoch: epoch)
        return set(vmID, "running", node)
    }
    func delete(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) {
        try record("delete \(vmID)", epoch: epoch)
        _ = set(vmID, nil, node)
    }
    func undefine(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) {
        try record("undefine \(vmID)", epoch: epoch)
        _ = set(vmID, nil, node)
    }
    func prepareIncoming(_ machine: VMSpec, epoch: Int64, on node: Node) async throws(LQXError) {
        try record("prepare \(machine.name) on \(node.meta.name)", epoch: epoch)
    }
    /// Moves the VM's state from `source` to `target` in one step (one copy at every instant).
    func migrate(_ vmID: String, epoch: Int64, from source: Node, to target: Node) async throws(LQXError) {
        try record("migrate \(vmID) \(source.meta.name)→\(target.meta.name)", epoch: epoch)
        vms.withLock { vms in
            guard let state = vms[source.meta.id]?.removeValue(forKey: vmID) else { return }
            vms[target.meta.id, default: [:]][vmID] = state
        }
    }
}

@Suite("reconciler: decisions")
struct ReconcileDecisionTests {
    func vm(_ runState: VirtualMachine.RunState, node: String = "n1", deleting: Bool = false) -> VirtualMachine {
        var spec = kernelSpec()
        spec.runState = runState
        var meta = ObjectMeta(id: "v", name: "v")
        meta.deletionRequestedUnixMs = deleting ? 1 : nil
        return VirtualMachine(meta: meta, spec: spec, status: .init(phase: .running, nodeID: node))
    }

    func observed(_ state: String) -> ObservedVM { ObservedVM(id: "v", name: "v", state: state, agentConnected: false) }

    @Test(
        "each spec and node state gives one action",
        arguments: [
            (VirtualMachine.RunState.running, nil, ReconcileAction.create(start: true)),
            (.stopped, nil, .create(start: false)), (.running, "shut_off", .start), (.running, "crashed", .start),
            (.running, "running", .none), (.running, "paused", .resume), (.paused, "running", .pause),
            (.paused, "shut_off", .start), (.stopped, "running", .stop), (.stopped, "paused", .stop),
            (.stopped, "shut_off", .none), (.running, "shutting_down", .none),
        ] as [(VirtualMachine.RunState, String?, ReconcileAction)])
    func decisions(runState: VirtualMachine.RunState, state: String?, expected: ReconcileAction) {
        #expect(ReconcileAction.decide(vm(runState), observed: state.map(observed), nodeReady: true) == expected)
    }

    @Test("a VM paused while it starts (QEMU starts paused) is starting, not paused, and is not resumed")
    func startingPaused() {
        var starting = vm(.running)
        starting.status.phase = .starting
        #expect(ReconcileAction.decide(starting, observed: observed("paused"), nodeReady: true) == .none)
        #expect(ReconcileAction.phase(starting, observed: observed("paused")) == .starting)
        var paused = vm(.running)
        paused.status.phase = .paused
        #expect(ReconcileAction.decide(paused, observed: observed("paused"), nodeReady: true) == .resume)
    }

    @Test("nothing goes to a node that is not READY or a VM on no node; a deletion wins over the rest")
    func guards() {
        #expect(ReconcileAction.decide(vm(.running), observed: nil, nodeReady: false) == .none)
        #expect(ReconcileAction.decide(vm(.running, node: ""), observed: nil, nodeReady: true) == .none)
        #expect(
            ReconcileAction.decide(vm(.running, deleting: true), observed: observed("running"), nodeReady: true)
                == .delete)
    }

    @Test("phases follow the node's report and the spec")
    func phases() {
        #expect(ReconcileAction.phase(vm(.running), observed: nil) == .scheduled)
        #expect(ReconcileAction.phase(vm(.running), observed: observed("running")) == .running)
        #expect(ReconcileAction.phase(vm(.stopped), observed: observed("running")) == .stopping)
        #expect(ReconcileAction.phase(vm(.running), observed: observed("shut_off")) == .starting)
        #expect(ReconcileAction.phase(vm(.stopped), observed: observed("shut_off")) == .stopped)
        #expect(ReconcileAction.phase(vm(.running), observed: observed("crashed")) == .failed)
        #expect(ReconcileAction.phase(vm(.running), observed: observed("blocked")) == .unknown)
    }
}

@Suite("reconciler: driving nodes (SQLite)")
struct ReconcilerTests {
    /// Runs a reconciler over a fresh cluster with one READY node while `body` runs.
    func withReconciler(
        _ body: (Cluster, MemoryNodes, Node, TestClock) async throws -> Void
    ) async throws {
        _ = try await withStore(.sqlite) { store, _ in
            let clock = TestClock()
            let cluster = try await makeCluster(store, clock: clock)
            let nodes = MemoryNodes()
            let node = try await joinNode(cluster, "n1")
            try await cluster.heartbeat(nodeID: node.meta.id, vms: [])
            var logger = Logger(label: "reconciler-test")
            logger.logLevel = .critical
            let reconciler = Reconciler(cluster: cluster, driver: nodes, resync: .milliseconds(50), logger: logger)
            let task = Task { try await reconciler.run() }
            defer { task.cancel() }
            try await body(cluster, nodes, node, clock)
        }
    }

    /// Waits (up to 10 s) until the VM is in `phase`, reporting the node's state by heartbeat.
    func until(
        _ cluster: Cluster, _ nodes: MemoryNodes, _ node: Node, _ name: String, _ phase: VirtualMachine.Phase?
    ) async throws -> VirtualMachine? {
        for _ in 0..<200 {
            try await cluster.heartbeat(nodeID: node.meta.id, vms: nodes.report(node))
            let vm = try await cluster.repository.vm(project: Cluster.defaultProject, name: name)
            if vm?.status.phase == phase { return vm }
            if phase == nil && vm == nil { return nil }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("\(name) never reached \(phase?.rawValue ?? "deletion")")
        return try await cluster.repository.vm(project: Cluster.defaultProject, name: name)
    }

    @Test("create → defined and started → RUNNING with the agent; stop, pause, resume; delete removes it everywhere")
    func lifecycle() async throws {
        try await withReconciler { cluster, nodes, node, _ in
            let vm = try await cluster.createVM(CreateVM(name: "web", spec: kernelSpec()), by: .system)
            let running = try await until(cluster, nodes, node, "web", .running)
            #expect(running?.status.agentConnected == true)
            #expect(nodes.states(node) == [vm.meta.id: "running"])
            _ = try await cluster.setRunState(Cluster.defaultProject, "web", .stopped, by: .system)
            _ = try await until(cluster, nodes, node, "web", .stopped)
            _ = try await cluster.setRunState(Cluster.defaultProject, "web", .paused, by: .system)
            _ = try await until(cluster, nodes, node, "web", .paused)
            _ = try await cluster.setRunState(Cluster.defaultProject, "web", .running, by: .system)
            _ = try await until(cluster, nodes, node, "web", .running)
            try await cluster.deleteVM(Cluster.defaultProject, "web", by: .system)
            _ = try await until(cluster, nodes, node, "web", nil)
            #expect(nodes.states(node).isEmpty)
            let reasons = try await cluster.events(LogQuery(object: vm.meta.id), by: .system).map(\.reason)
            for reason in [
                "Created", "Scheduled", "Defined", "Running", "AgentConnected", "Stopped", "Paused", "Deleted",
            ] {
                #expect(reasons.contains(reason), "\(reason) in \(reasons)")
            }
            // Each step happened once: no operation was repeated while the node caught up.
            let calls = nodes.calls.withLock { $0 }
            #expect(calls.filter { $0.hasPrefix("create") }.count == 1, "\(calls)")
            #expect(calls.filter { $0.hasPrefix("delete") }.count == 1, "\(calls)")
        }
    }

    @Test("a failing node call is a Reconciled=False condition and a warning event, retried until it works")
    func failures() async throws {
        try await withReconciler { cluster, nodes, node, clock in
            nodes.failures.withLock { $0["create"] = 2 }
            _ = try await cluster.createVM(CreateVM(name: "db", spec: kernelSpec()), by: .system)
            var failed: VirtualMachine?
            for _ in 0..<100 {
                failed = try await cluster.repository.vm(project: Cluster.defaultProject, name: "db")
                if failed?.status.conditions["Reconciled"]?.status == false { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            let condition = failed?.status.conditions["Reconciled"]
            #expect(condition?.reason == "CreateFailed")
            #expect(condition?.message.contains("create failed on purpose") == true)
            // Backoff is on the cluster's clock: moving it lets the retries through.
            for _ in 0..<10 {
                clock.advance(seconds: 60)
                try await Task.sleep(for: .milliseconds(60))
            }
            let running = try await until(cluster, nodes, node, "db", .running)
            #expect(running?.status.conditions["Reconciled"]?.status == true)
            let events = try await cluster.events(LogQuery(), by: .system)
            #expect(events.contains { $0.reason == "CreateFailed" && $0.type == "Warning" })
        }
    }

    @Test("drain: each VM is stopped and removed on its node before it starts on another; the node ends in MAINTENANCE")
    func drain() async throws {
        try await withReconciler { cluster, nodes, first, _ in
            _ = try await cluster.createVM(CreateVM(name: "mover", spec: kernelSpec()), by: .system)
            _ = try await until(cluster, nodes, first, "mover", .running)
            let second = try await joinNode(cluster, "n2")
            try await cluster.heartbeat(nodeID: second.meta.id, vms: [])
            let moving = try await cluster.drainNode("n1", by: .system)
            #expect(moving.map(\.meta.name) == ["mover"])
            var moved: VirtualMachine?
            for _ in 0..<200 {
                try await cluster.heartbeat(nodeID: first.meta.id, vms: nodes.report(first))
                try await cluster.heartbeat(nodeID: second.meta.id, vms: nodes.report(second))
                moved = try await cluster.repository.vm(project: Cluster.defaultProject, name: "mover")
                if moved?.status.nodeID == second.meta.id, moved?.status.phase == .running { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(moved?.status.nodeID == second.meta.id && moved?.status.phase == .running)
            #expect(nodes.states(first).isEmpty)
            #expect(moved?.status.epoch == 2)
            // The order that keeps one copy: stop, undefine on n1, then create on n2.
            let id = moved?.meta.id ?? ""
            let order = nodes.calls.withLock { $0 }.filter { $0.hasSuffix(id) }
            #expect(order.suffix(3) == ["stop \(id)", "undefine \(id)", "create \(id)"], "\(order)")
            // Every command carried the placement's epoch: 1 on n1 (up to the undefine), 2 on n2.
            let epochs = nodes.epochs.withLock { $0[id] ?? [] }
            #expect(epochs.first == 1 && epochs.last == 2 && epochs == epochs.sorted(), "\(epochs)")
            var phase: Node.Phase?
            for _ in 0..<100 {
                phase = try await cluster.repository.node(name: "n1")?.status.phase
                if phase == .maintenance { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(phase == .maintenance)
            let back = try await cluster.setSchedulable("n1", true, by: .system)
            #expect(back.status.phase == .ready)
        }
    }

    @Test(
        "a NoExecute taint evicts the VMs that do not tolerate it (stop, remove, start elsewhere); tolerating VMs and VMs with node-made disks stay"
    )
    func noExecute() async throws {
        try await withReconciler { cluster, nodes, first, _ in
            var tolerant = kernelSpec()
            tolerant.placement.tolerations = [Placement.Toleration(key: "maintenance", effect: .noExecute)]
            var pinned = kernelSpec()
            pinned.machine.disks = [DiskSpec(source: .new(sizeGiB: 1))]
            for (name, spec) in [("mover", kernelSpec()), ("stayer", tolerant), ("pinned", pinned)] {
                _ = try await cluster.createVM(CreateVM(name: name, spec: spec), by: .system)
                _ = try await until(cluster, nodes, first, name, .running)
            }
            let second = try await joinNode(cluster, "n2")
            try await cluster.heartbeat(nodeID: second.meta.id, vms: [])
            _ = try await cluster.setTaint("n1", key: "maintenance", value: "now", effect: .noExecute, by: .system)
            var moved: VirtualMachine?
            var refused: VirtualMachine?
            for _ in 0..<200 {
                try await cluster.heartbeat(nodeID: first.meta.id, vms: nodes.report(first))
                try await cluster.heartbeat(nodeID: second.meta.id, vms: nodes.report(second))
                moved = try await cluster.repository.vm(project: Cluster.defaultProject, name: "mover")
                refused = try await cluster.repository.vm(project: Cluster.defaultProject, name: "pinned")
                if moved?.status.nodeID == second.meta.id, moved?.status.phase == .running,
                    refused?.status.conditions["Evicted"] != nil
                {
                    break
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(moved?.status.nodeID == second.meta.id && moved?.status.phase == .running)
            #expect(moved?.status.epoch == 2)
            let id = moved?.meta.id ?? ""
            let order = nodes.calls.withLock { $0 }.filter { $0.hasSuffix(id) }
            #expect(order.suffix(3) == ["stop \(id)", "undefine \(id)", "create \(id)"], "\(order)")
            let stayer = try await cluster.repository.vm(project: Cluster.defaultProject, name: "stayer")
            #expect(stayer?.status.nodeID == first.meta.id && stayer?.status.phase == .running)
            #expect(refused?.status.nodeID == first.meta.id && refused?.status.phase == .running)
            #expect(refused?.status.conditions["Evicted"]?.reason == "CannotMove")
            #expect(refused?.status.conditions["Evicted"]?.message.contains("maintenance=now:NoExecute") == true)
            let events = try await cluster.events(LogQuery(), by: .system)
            #expect(
                events.contains { $0.reason == "Evicting" && $0.message.contains("taint maintenance=now:NoExecute") })
            #expect(events.filter { $0.reason == "EvictionRefused" }.count == 1)
        }
    }

    @Test("drain with a node that takes live migrations: moved while running (no stop); a failed one falls back")
    func liveMigration() async throws {
        try await withReconciler { cluster, nodes, first, _ in
            let target = try Node.MigrationTarget(uri: "qemu+tls://n2/system", address: "10.0.0.2")
            _ = try await cluster.createVM(CreateVM(name: "live", spec: kernelSpec()), by: .system)
            _ = try await cluster.createVM(CreateVM(name: "twice", spec: kernelSpec()), by: .system)
            _ = try await until(cluster, nodes, first, "live", .running)
            _ = try await until(cluster, nodes, first, "twice", .running)
            let second = try await joinNode(cluster, "n2")
            try await cluster.heartbeat(nodeID: second.meta.id, vms: [], migration: target)
            #expect(try await cluster.repository.node(name: "n2")?.status.migration == target)
            // The second VM's first migration fails: it stays on n1 and moves by stop and start.
            let twice = try #require(try await cluster.repository.vm(project: Cluster.defaultProject, name: "twice"))
            nodes.failOnce.withLock { _ = $0.insert("migrate \(twice.meta.id) n1→n2") }
            _ = try await cluster.drainNode("n1", by: .system)
            var live: VirtualMachine?, moved: VirtualMachine?
            for _ in 0..<200 {
                try await cluster.heartbeat(nodeID: first.meta.id, vms: nodes.report(first))
                try await cluster.heartbeat(nodeID: second.meta.id, vms: nodes.report(second), migration: target)
                live = try await cluster.repository.vm(project: Cluster.defaultProject, name: "live")
                moved = try await cluster.repository.vm(id: twice.meta.id)
                if live?.status.phase == .running, live?.status.nodeID == second.meta.id,
                    moved?.status.phase == .running, moved?.status.nodeID == second.meta.id
                {
                    break
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            let liveID = live?.meta.id ?? ""
            #expect(live?.status.nodeID == second.meta.id && live?.status.phase == .running)
            #expect(live?.status.epoch == 2 && live?.status.migratingFrom == "")
            let calls = nodes.calls.withLock { $0 }
            #expect(
                calls.filter { $0.hasSuffix(liveID) || $0.contains(" \(liveID) ") }.suffix(2) == [
                    "prepare \(liveID) on n2", "migrate \(liveID) n1→n2",
                ], "\(calls)")
            #expect(!calls.contains("stop \(liveID)"))
            // Placed on n2 (epoch 2), back on n1 when the migration failed (3), then stopped,
            // removed and started on n2 (4).
            let id = twice.meta.id
            #expect(
                moved?.status.nodeID == second.meta.id && moved?.status.epoch == 4,
                "\(String(describing: moved?.status))")
            #expect(moved?.status.migrationFailed == true)
            #expect(
                calls.filter { $0.contains(id) }.suffix(5) == [
                    "prepare \(id) on n2", "migrate \(id) n1→n2", "stop \(id)", "undefine \(id)", "create \(id)",
                ], "\(calls)")
            let reasons = try await cluster.events(LogQuery(object: liveID), by: .system).map(\.reason)
            #expect(reasons.contains("Migrating") && reasons.contains("Migrated"), "\(reasons)")
            let failed = try await cluster.events(LogQuery(object: id), by: .system)
            #expect(
                failed.contains { $0.reason == "MigrationFailed" && $0.message.contains("migrate failed on purpose") })
            var phase: Node.Phase?
            for _ in 0..<100 {
                phase = try await cluster.repository.node(name: "n1")?.status.phase
                if phase == .maintenance { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(phase == .maintenance)
        }
    }

    @Test(
        "writable disks follow a live migration only to a node declaring the same shared storage; others move by stop and start"
    )
    func liveMigrationSharedStorage() async throws {
        try await withReconciler { cluster, nodes, first, _ in
            let storage = try SharedStorage(id: String(repeating: "5", count: 32), path: "/srv/shared")
            // Mounted at the same path, but another storage (another id): its files are not these.
            let impostor = try SharedStorage(id: String(repeating: "6", count: 32), path: "/srv/shared")
            var shared = kernelSpec()
            shared.machine.disks = [DiskSpec(source: .path("/srv/shared/a.img"))]
            var local = kernelSpec()
            local.machine.disks = [DiskSpec(source: .path("/var/local/b.img"))]
            _ = try await cluster.createVM(CreateVM(name: "shared", spec: shared), by: .system)
            _ = try await cluster.createVM(CreateVM(name: "local", spec: local), by: .system)
            // n2, the larger node (spread prefers it), has the impostor; n3 the storage.
            let second = try await joinNode(cluster, "n2", cpus: 64, memory: 65536)
            let third = try await joinNode(cluster, "n3")
            let targets = [
                second.meta.id: try Node.MigrationTarget(uri: "qemu+tls://n2/system", address: ""),
                third.meta.id: try Node.MigrationTarget(uri: "qemu+tls://n3/system", address: ""),
            ]
            let declared = [first.meta.id: [storage], second.meta.id: [impostor], third.meta.id: [storage]]
            func beat() async throws {
                for node in [first, second, third] {
                    try await cluster.heartbeat(
                        nodeID: node.meta.id, vms: nodes.report(node), migration: targets[node.meta.id],
                        sharedStorage: declared[node.meta.id] ?? [])
                }
            }
            _ = try await cluster.setSchedulable("n2", false, by: .system)
            _ = try await cluster.setSchedulable("n3", false, by: .system)
            func vm(_ name: String) async throws -> VirtualMachine? {
                try await cluster.repository.vm(project: Cluster.defaultProject, name: name)
            }
            for _ in 0..<200 {
                try await beat()
                if try await vm("shared")?.status.phase == .running, try await vm("local")?.status.phase == .running {
                    break
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(try await cluster.repository.node(name: "n3")?.status.sharedStorage == [storage])
            _ = try await cluster.setSchedulable("n2", true, by: .system)
            _ = try await cluster.setSchedulable("n3", true, by: .system)
            _ = try await cluster.drainNode("n1", by: .system)
            var movedShared: VirtualMachine?, movedLocal: VirtualMachine?
            for _ in 0..<200 {
                try await beat()
                movedShared = try await vm("shared")
                movedLocal = try await vm("local")
                if movedShared?.status.phase == .running, movedShared?.status.nodeID == third.meta.id,
                    movedLocal?.status.phase == .running, movedLocal?.status.nodeID != first.meta.id
                {
                    break
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            let sharedID = movedShared?.meta.id ?? "", localID = movedLocal?.meta.id ?? ""
            #expect(movedShared?.status.nodeID == third.meta.id && movedShared?.status.epoch == 2)
            #expect(movedLocal?.status.phase == .running && movedLocal?.status.nodeID != first.meta.id)
            let calls = nodes.calls.withLock { $0 }
            #expect(
                calls.filter { $0.contains(sharedID) }.suffix(2) == [
                    "prepare \(sharedID) on n3", "migrate \(sharedID) n1→n3",
                ], "\(calls)")
            #expect(!calls.contains("stop \(sharedID)") && !calls.contains { $0.contains("\(sharedID) on n2") })
            #expect(
                calls.filter { $0.contains(localID) }.suffix(3) == [
                    "stop \(localID)", "undefine \(localID)", "create \(localID)",
                ], "\(calls)")
            #expect(!calls.contains { $0.hasPrefix("migrate \(localID)") })
        }
    }

    @Test("a VM placed on a node that no longer exists is placed again (NodeGone), on a node that exists")
    func orphanPlacedAgain() async throws {
        try await withReconciler { cluster, nodes, first, _ in
            _ = try await cluster.setSchedulable("n1", false, by: .system)
            let created = try await cluster.createVM(CreateVM(name: "orphan", spec: kernelSpec()), by: .system)
            // As a placement that committed while its node was being deleted would leave it.
            var stored = try #require(try await cluster.repository.vm(id: created.meta.id))
            stored.status.nodeID = "0000-gone"
            stored.status.phase = .scheduled
            stored.status.epoch += 1
            try await cluster.repository.store.commit(
                [.update(try Repository.stored(stored), expected: stored.meta.resourceVersion)], events: [], audit: [])
            _ = try await cluster.setSchedulable("n1", true, by: .system)
            let placed = try await until(cluster, nodes, first, "orphan", .running)
            #expect(placed?.status.nodeID == first.meta.id)
            let reasons = try await cluster.events(LogQuery(object: created.meta.id), by: .system).map(\.reason)
            #expect(reasons.contains("NodeGone"), "\(reasons)")
        }
    }

    @Test("a VM left mid-migration (control plane restarted) is settled from both nodes' reports")
    func settleFromReports() async throws {
        try await withReconciler { cluster, nodes, first, _ in
            let target = try Node.MigrationTarget(uri: "qemu+tls://n2/system", address: "")
            let second = try await joinNode(cluster, "n2")
            try await cluster.heartbeat(nodeID: second.meta.id, vms: [], migration: target)
            _ = try await cluster.setSchedulable("n2", false, by: .system)
            _ = try await cluster.createVM(CreateVM(name: "halfway", spec: kernelSpec()), by: .system)
            let vm = try #require(try await until(cluster, nodes, first, "halfway", .running))
            _ = try await cluster.setSchedulable("n2", true, by: .system)
            // As a control plane that chose n2 and then died would leave it: migratingFrom n1,
            // placed on n2, and the guest already on n2 (the job finished).
            var stored = vm
            stored.status.migratingFrom = first.meta.id
            stored.status.nodeID = second.meta.id
            stored.status.epoch += 1
            try await cluster.repository.store.commit(
                [.update(try Repository.stored(stored), expected: vm.meta.resourceVersion)], events: [], audit: [])
            try await nodes.migrate(vm.meta.id, epoch: stored.status.epoch, from: first, to: second)
            var settled: VirtualMachine?
            for _ in 0..<200 {
                try await cluster.heartbeat(nodeID: first.meta.id, vms: nodes.report(first))
                try await cluster.heartbeat(nodeID: second.meta.id, vms: nodes.report(second), migration: target)
                settled = try await cluster.repository.vm(id: vm.meta.id)
                if settled?.status.migratingFrom == "", settled?.status.phase == .running { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(settled?.status.nodeID == second.meta.id && settled?.status.migratingFrom == "")
            #expect(settled?.status.phase == .running)
            #expect(nodes.states(first).isEmpty && nodes.states(second) == [vm.meta.id: "running"])
        }
    }

    @Test("a drain that would strand a VM's node-created disks is refused, naming it, and changes nothing")
    func drainRefused() async throws {
        try await withReconciler { cluster, nodes, first, _ in
            var spec = kernelSpec()
            spec.machine.disks = [DiskSpec(source: .new(sizeGiB: 1))]
            _ = try await cluster.createVM(CreateVM(name: "pinned", spec: spec), by: .system)
            await expectLQXError(.failedPrecondition, containing: "default/pinned") {
                _ = try await cluster.drainNode("n1", by: .system)
            }
            let node = try await cluster.repository.node(name: "n1")
            #expect(node?.spec.schedulable == true && node?.status.phase == .ready)
            await expectLQXError(.permissionDenied) {
                _ = try await cluster.drainNode("n1", by: Principal(user: "o", role: .operator))
            }
        }
    }

    @Test("a VM created while no reconciler ran is started by the next one")
    func picksUp() async throws {
        _ = try await withStore(.sqlite) { store, _ in
            let clock = TestClock()
            let cluster = try await makeCluster(store, clock: clock)
            let node = try await joinNode(cluster, "n1")
            _ = try await cluster.createVM(CreateVM(name: "late", spec: kernelSpec()), by: .system)
            let nodes = MemoryNodes()
            var logger = Logger(label: "reconciler-test")
            logger.logLevel = .critical
            let task = Task {
                try await Reconciler(cluster: cluster, driver: nodes, resync: .milliseconds(50), logger: logger).run()
            }
            defer { task.cancel() }
            _ = try await until(cluster, nodes, node, "late", .running)
        }
    }
}
