import LQXModel
import Logging
import ServiceLifecycle
import Synchronization

/// Drives every placed VM's node until what the node reports matches the VM's spec: defines,
/// starts, stops, pauses, resumes and deletes, and writes the phase, agent and conditions it
/// observes. It keeps no state of its own that matters: after a restart of the control plane
/// (or of a node) it reads the store and the nodes' reports and picks up where it left off.
/// A pass runs on every commit, every node report that changed, and every `resync`.
public final class Reconciler: Service, Sendable {
    let cluster: Cluster
    let driver: any NodeDriver
    let logger: Logger
    let resync: Duration
    let concurrency: Int
    private let state = Mutex(State())

    private struct State {
        /// VMs with an operation on their node in flight.
        var busy: Set<String> = []
        /// Per VM: failures in a row and when to try again (cluster clock, ms).
        var backoff: [String: (failures: Int, notBeforeUnixMs: Int64)] = [:]
    }

    /// A reconciler for `cluster` acting through `driver`, with at most `concurrency` node
    /// operations at once.
    public init(
        cluster: Cluster, driver: any NodeDriver, resync: Duration = .seconds(2), concurrency: Int = 16,
        logger: Logger
    ) {
        self.cluster = cluster
        self.driver = driver
        self.resync = resync
        self.concurrency = concurrency
        self.logger = logger
    }

    /// Reconciles until graceful shutdown; operations in flight are cancelled then.
    public func run() async throws {
        let (wake, wakeContinuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let (commits, stopCommits) = cluster.feed.changes()
        let (reports, stopReports) = cluster.observed.changes()
        defer {
            stopCommits()
            stopReports()
        }
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    for await _ in commits { wakeContinuation.yield() }
                }
                group.addTask {
                    for await _ in reports { wakeContinuation.yield() }
                }
                group.addTask {
                    while !Task.isCancelled {
                        wakeContinuation.yield()
                        try? await Task.sleep(for: self.resync)
                    }
                }
                var passes = 0
                for await _ in wake {
                    guard !Task.isCancelled else { break }
                    passes += 1
                    // Now and then (and first): place VMs that waited for room.
                    if passes % 10 == 1 { _ = try? await self.cluster.schedulePending() }
                    try? await self.cluster.completeDrains()
                    for (vm, node, action) in await self.pass() {
                        group.addTask { await self.act(action, vm, node) }
                    }
                }
                group.cancelAll()
            }
        }
    }

    /// One pass: writes the status every VM's report implies and returns the operations to
    /// start (VMs already busy, or backing off, are skipped).
    func pass() async -> [(VirtualMachine, Node, ReconcileAction)] {
        let vms: [VirtualMachine], nodes: [String: Node]
        do {
            vms = try await cluster.repository.vms()
            nodes = Dictionary(uniqueKeysWithValues: try await cluster.repository.nodes().map { ($0.meta.id, $0) })
        } catch {
            logger.warning("reconciler cannot read the store: \(error.fullMessage)")
            return []
        }
        let time = cluster.now()
        var work: [(VirtualMachine, Node, ReconcileAction)] = []
        // Nodes that take live migrations now.
        let migrationTargets = nodes.values.filter { $0.status.phase == .ready && $0.status.migration != nil }
        for vm in vms where !vm.status.nodeID.isEmpty {
            guard let node = nodes[vm.status.nodeID] else {
                do { try await cluster.releaseOrphan(vmID: vm.meta.id) } catch {
                    logger.warning("cannot place \(vm.meta.name) again: \(error.fullMessage)")
                }
                continue
            }
            if !vm.status.migratingFrom.isEmpty {
                // Not being migrated by this reconciler (a restart came between): what both nodes
                // report decides.
                let busy = state.withLock { $0.busy.contains(vm.meta.id) }
                if !busy, let source = nodes[vm.status.migratingFrom] {
                    await settleMigration(vm.meta.id, source: source, target: node, failure: nil, fromReports: true)
                }
                continue
            }
            let ready = node.status.phase == .ready || node.status.phase == .draining
            let report = cluster.observation(nodeID: node.meta.id)
            let observed = report?.vms.first { $0.id == vm.meta.id || $0.name == vm.meta.id }
            // Until its node has reported once, a VM's state there is unknown: nothing is done.
            guard report != nil || !ready else { continue }
            if ready, report != nil, vm.meta.deletionRequestedUnixMs == nil {
                await writeStatus(vm, observed: observed, node: node)
            }
            if !vm.status.evicting, Scheduler.evictingTaint(vm.spec.placement, on: node.spec) != nil {
                // Marked now, moved by the next pass (which reads the VM again).
                do { if try await cluster.enforceNoExecute(vm, on: node) { continue } } catch {
                    logger.warning("cannot evict \(vm.meta.name): \(error.fullMessage)")
                }
            }
            let action = ReconcileAction.decide(
                vm, observed: observed, nodeReady: ready && report != nil,
                canMigrate: !Cluster.liveMigrationTargets(vm, from: node, among: migrationTargets).isEmpty)
            guard action != .none else { continue }
            let admitted = state.withLock { state -> Bool in
                guard !state.busy.contains(vm.meta.id), state.busy.count < concurrency else { return false }
                if let backoff = state.backoff[vm.meta.id], backoff.notBeforeUnixMs > time { return false }
                state.busy.insert(vm.meta.id)
                return true
            }
            if admitted { work.append((vm, node, action)) }
        }
        return work
    }

    /// Runs one operation on the VM's node, checking first that the node still disagrees.
    func act(_ action: ReconcileAction, _ listed: VirtualMachine, _ node: Node) async {
        defer { _ = state.withLock { $0.busy.remove(listed.meta.id) } }
        let id = listed.meta.id
        do {
            // The pass that chose this may have read the VM before the last operation on it
            // finished: act on what the store has now (gone: nothing to do).
            guard let vm = try await cluster.repository.vm(id: id), vm.status.nodeID == node.meta.id else { return }
            let current = try await driver.get(id, on: node)
            let epoch = vm.status.epoch
            let confirmed = ReconcileAction.decide(
                vm, observed: current, nodeReady: true, canMigrate: action == .migrate)
            var observed = current
            switch confirmed {
            case .none: break
            case .create(let start):
                var machine = vm.spec.machine
                machine.name = id
                observed = try await driver.create(machine, start: start, epoch: epoch, on: node)
                try await cluster.recordEvent(.vm, vm.meta, "Defined", "defined on node \(node.meta.name)")
            case .start: observed = try await driver.start(id, epoch: epoch, on: node)
            case .stop: observed = try await driver.stop(id, epoch: epoch, on: node)
            case .pause: observed = try await driver.pause(id, epoch: epoch, on: node)
            case .resume: observed = try await driver.resume(id, epoch: epoch, on: node)
            case .delete:
                if current != nil { try await driver.delete(id, epoch: epoch, on: node) }
                cluster.patchObservation(nodeID: node.meta.id, vmID: id, nil)
                try await cluster.finishDeletion(vmID: id, node: node.meta.name)
                state.withLock { _ = $0.backoff.removeValue(forKey: id) }
                return
            case .migrate:
                try await migrate(vm, from: node)
                state.withLock { _ = $0.backoff.removeValue(forKey: id) }
                return
            case .release:
                if current != nil { try await driver.undefine(id, epoch: epoch, on: node) }
                cluster.patchObservation(nodeID: node.meta.id, vmID: id, nil)
                try await cluster.releasePlacement(vmID: id, from: node)
                state.withLock { _ = $0.backoff.removeValue(forKey: id) }
                return
            }
            cluster.patchObservation(nodeID: node.meta.id, vmID: id, observed)
            state.withLock { _ = $0.backoff.removeValue(forKey: id) }
            if let fresh = try await cluster.repository.vm(id: id) {
                await writeStatus(fresh, observed: observed, node: node, failure: nil)
            }
        } catch {
            let failures = state.withLock { state -> Int in
                let failures = (state.backoff[id]?.failures ?? 0) + 1
                let delay = Int64(min(30_000, 500 << min(failures, 6)))
                state.backoff[id] = (failures, cluster.now() + delay)
                return failures
            }
            logger.warning(
                "reconciling failed: \(error.fullMessage)",
                metadata: ["vm.id": "\(id)", "node": "\(node.meta.name)", "attempt": "\(failures)"])
            if let fresh = try? await cluster.repository.vm(id: id) {
                let observed = cluster.observation(nodeID: node.meta.id)?.vms.first { $0.id == id || $0.name == id }
                await writeStatus(fresh, observed: observed, node: node, failure: (action, error))
            }
        }
    }

    /// Live-migrates the evicting `vm` off `source` to a node the scheduler chooses among those
    /// that take migrations (none fits: it moves by stop and start on the next pass).
    func migrate(_ vm: VirtualMachine, from source: Node) async throws(LQXError) {
        let id = vm.meta.id
        guard case .target(let target) = try await cluster.placeForMigration(vmID: id, from: source) else { return }
        var machine = vm.spec.machine
        machine.name = id
        // The placement on the target is a new epoch; both nodes are told it.
        let epoch = try await cluster.repository.vm(id: id)?.status.epoch ?? vm.status.epoch + 1
        let clock = ContinuousClock(), started = clock.now
        do {
            try await driver.prepareIncoming(machine, epoch: epoch, on: target)
            try await driver.migrate(id, epoch: epoch, from: source, to: target)
        } catch {
            logger.warning(
                "live migration failed: \(error.fullMessage)",
                metadata: ["vm.id": "\(id)", "from": "\(source.meta.name)", "to": "\(target.meta.name)"])
            await settleMigration(id, source: source, target: target, failure: error, fromReports: false)
            return
        }
        let took = clock.now - started
        try await cluster.finishMigration(
            vmID: id, from: source, to: target,
            detail: " in \(took.components.seconds).\(took.components.attoseconds / 100_000_000_000_000_000) s")
        if let observed = try? await driver.get(id, on: target) {
            cluster.patchObservation(nodeID: target.meta.id, vmID: id, observed)
        }
    }

    /// Where a VM whose migration ended without an answer (an error, a restart of the control
    /// plane) runs decides: only on the target → done; only on the source → it stays there and
    /// moves by stop and start; on both (the job still ending) or unknown → asked again later.
    /// `fromReports`: judged from the nodes' heartbeats, else asked directly.
    func settleMigration(_ id: String, source: Node, target: Node, failure: LQXError?, fromReports: Bool) async {
        func has(_ node: Node) async -> Bool? {
            if fromReports {
                return cluster.observation(nodeID: node.meta.id).map { report in
                    report.vms.contains { $0.id == id || $0.name == id }
                }
            }
            do { return try await driver.get(id, on: node) != nil } catch { return nil }
        }
        let onSource = await has(source), onTarget = await has(target)
        do {
            switch (onSource, onTarget) {
            case (false?, true?), (false?, false?):
                try await cluster.finishMigration(vmID: id, from: source, to: target)
            case (true?, false?):
                try await cluster.abortMigration(
                    vmID: id, from: source, to: target,
                    failure ?? LQXError(.unavailable, "the migration ended while the control plane was away"))
            default:
                break
            }
        } catch {
            logger.warning("cannot record how the migration of \(id) ended: \(error.fullMessage)")
        }
    }

    /// Writes the phase, agent and `Reconciled` condition `observed` implies, if they changed
    /// (a VM changed meanwhile is left to the next pass).
    func writeStatus(
        _ vm: VirtualMachine, observed: ObservedVM?, node: Node, failure: (ReconcileAction, LQXError)? = nil
    ) async {
        var updated = vm
        updated.status.phase = ReconcileAction.phase(vm, observed: observed)
        let time = cluster.now()
        if let observed {
            updated.status.agentConnected = observed.agentConnected
            if !observed.agent.isEmpty { updated.status.agent = observed.agent }
        }
        if let (action, error) = failure {
            updated.status.conditions.set(
                Condition(
                    type: "Reconciled", status: false, reason: action.name + "Failed",
                    message: error.fullMessage, lastTransitionUnixMs: time))
        } else if ReconcileAction.decide(vm, observed: observed, nodeReady: true) == .none,
            updated.status.conditions["Reconciled"]?.status != true
        {
            // Only once the node matches the spec: a failure stays visible until then.
            updated.status.conditions.set(
                Condition(
                    type: "Reconciled", status: true, reason: "Reconciled",
                    message: "node \(node.meta.name) matches the spec", lastTransitionUnixMs: time))
        }
        guard updated.status != vm.status else { return }
        var events: [EventRecord] = []
        if updated.status.phase != vm.status.phase {
            events.append(
                cluster.event(
                    .vm, vm.meta, updated.status.phase.rawValue.capitalized,
                    "\(updated.status.phase.rawValue) on node \(node.meta.name)",
                    warning: updated.status.phase == .failed))
        }
        if updated.status.agentConnected != vm.status.agentConnected {
            events.append(
                cluster.event(
                    .vm, vm.meta, updated.status.agentConnected ? "AgentConnected" : "AgentDisconnected",
                    updated.status.agentConnected
                        ? "the guest agent connected\(updated.status.agent.summary)"
                        : "the guest agent is not connected"))
        }
        if let (action, error) = failure, vm.status.conditions["Reconciled"]?.message != error.fullMessage {
            events.append(
                cluster.event(.vm, vm.meta, action.name + "Failed", error.fullMessage, warning: true))
        }
        do {
            try await cluster.store.commit(
                [.update(try Repository.stored(updated), expected: vm.meta.resourceVersion)], events: events, audit: [])
        } catch  where error.code == .conflict {
            // Someone changed the VM meanwhile: the next pass sees it.
        } catch {
            logger.warning("cannot write the status of \(vm.meta.name): \(error.fullMessage)")
        }
    }
}
