import LQXModel

/// Live migration of an evicted VM (a drain, a `NoExecute` taint): the target is chosen and its
/// capacity taken in the store before the migration starts (`migratingFrom` set, a new epoch on
/// the target); the hypervisor moves the running guest so that one copy runs at every instant;
/// then the placement is final, or back on the source when the migration failed.
extension Cluster {
    /// What choosing a migration target gave: a target, a wait (nodes have not answered about
    /// the VM's paths yet), or no node (then the VM moves by stop and start).
    public enum MigrationPlacement: Sendable {
        case target(Node)
        case wait
        case none
    }

    /// The nodes of `candidates` that `vm`, running on `source`, can live-migrate to: they take
    /// live migrations and have every shared storage its writable disks are on (same id, same
    /// path). None when a disk cannot follow (created by the node, or writable on storage the
    /// source does not declare shared).
    public static func liveMigrationTargets(_ vm: VirtualMachine, from source: Node, among candidates: [Node])
        -> [Node]
    {
        guard let needed = vm.spec.machine.liveMigrationStorages(on: source.status.sharedStorage) else { return [] }
        return candidates.filter { node in
            node.meta.id != source.meta.id && node.status.migration != nil
                && needed.allSatisfy { node.status.sharedStorage.contains($0) }
        }
    }

    /// Chooses a node that takes live migrations for the evicting VM on `source` and records the
    /// migration (new epoch, capacity checked by the store). When none fits the VM is marked to
    /// move by stop and start, with the scheduler's reason.
    public func placeForMigration(vmID: String, from source: Node) async throws(LQXError) -> MigrationPlacement {
        var attempt = 0
        while true {
            guard var vm = try await repository.vm(id: vmID), vm.status.evicting,
                vm.status.nodeID == source.meta.id, vm.status.migratingFrom.isEmpty
            else { return .none }
            let nodes = Self.liveMigrationTargets(vm, from: source, among: try await repository.nodes())
            let decision = decide(vm, nodes: nodes, vms: try await repository.vms())
            defer { reservations.withLock { _ = $0.removeValue(forKey: vmID) } }
            if decision.waiting { return .wait }
            let expected = vm.meta.resourceVersion
            guard let nodeID = decision.nodeID, let target = nodes.first(where: { $0.meta.id == nodeID }) else {
                vm.status.migrationFailed = true
                let message =
                    nodes.isEmpty
                    ? "no node that takes live migrations has the storage of its writable disks: moving by stop and start"
                    : "no node that takes live migrations fits (\(decision.summary)): moving by stop and start"
                do {
                    try await store.commit(
                        [.update(try Repository.stored(vm), expected: expected)],
                        events: [event(.vm, vm.meta, "MigrationNotPossible", message)], audit: [])
                } catch  where error.code == .conflict && attempt < Self.attempts {
                    attempt += 1
                    continue
                }
                return .none
            }
            vm.status.migratingFrom = source.meta.id
            vm.status.evicting = false
            vm.status.phase = .migrating
            do {
                try await commitPlacement(
                    &vm, expected: expected, on: target, reason: "Migrating", summary: decision.summary
                ) { epoch in
                    "live-migrating from \(source.meta.name) to \(target.meta.name) (epoch \(epoch)): \(decision.summary)"
                }
                return .target(target)
            } catch  where (error.code == .conflict || error.code == .resourceExhausted) && attempt < Self.attempts {
                attempt += 1
            }
        }
    }

    /// The migration of `vmID` is done: it runs on its target.
    public func finishMigration(vmID: String, from source: Node, to target: Node, detail: String = "")
        async throws(LQXError)
    {
        try await retrying { () async throws(LQXError) in
            guard var vm = try await repository.vm(id: vmID), vm.status.migratingFrom == source.meta.id,
                vm.status.nodeID == target.meta.id
            else { return }
            let expected = vm.meta.resourceVersion
            vm.status.migratingFrom = ""
            try await store.commit(
                [.update(try Repository.stored(vm), expected: expected)],
                events: [
                    event(
                        .vm, vm.meta, "Migrated",
                        "live-migrated from \(source.meta.name) to \(target.meta.name)\(detail)")
                ], audit: [])
        }
        patchObservation(nodeID: source.meta.id, vmID: vmID, nil)
    }

    /// The migration of `vmID` failed and it still runs on `source`: it is placed there again
    /// (a new epoch) and moves by stop and start instead.
    public func abortMigration(vmID: String, from source: Node, to target: Node, _ failure: LQXError)
        async throws(LQXError)
    {
        try await retrying { () async throws(LQXError) in
            guard var vm = try await repository.vm(id: vmID), vm.status.migratingFrom == source.meta.id,
                vm.status.nodeID == target.meta.id
            else { return }
            let expected = vm.meta.resourceVersion
            vm.status.migratingFrom = ""
            vm.status.nodeID = source.meta.id
            vm.status.epoch += 1
            vm.status.evicting = true
            vm.status.migrationFailed = true
            try await store.commit(
                [.update(try Repository.stored(vm), expected: expected)],
                events: [
                    event(
                        .vm, vm.meta, "MigrationFailed",
                        "live migration to \(target.meta.name) failed (\(failure.fullMessage)); it runs on \(source.meta.name) (epoch \(vm.status.epoch)) and moves by stop and start",
                        warning: true)
                ], audit: [])
        }
    }
}
