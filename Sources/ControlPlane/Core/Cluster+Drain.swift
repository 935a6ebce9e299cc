import LQXModel

extension Cluster {
    /// Drains a node (admins): cordons it (DRAINING) and marks each of its VMs for eviction; the
    /// reconciler stops each on the node, removes it there, and places it again elsewhere (stop
    /// → start: a VM never runs twice). Once no VM is on it the node is MAINTENANCE. A VM whose
    /// disks the node created (clones, new disks) cannot leave without them: the drain is
    /// refused, naming it, and nothing changes. Returns the VMs that will move.
    public func drainNode(_ name: String, by principal: Principal) async throws(LQXError) -> [VirtualMachine] {
        try principal.require(.admin, to: "drain nodes")
        guard let node = try await repository.node(name: name) else {
            throw LQXError(.notFound, "node \(name) does not exist")
        }
        let vms = try await repository.vms().filter { $0.status.nodeID == node.meta.id }
        let pinned = vms.filter(Self.hasNodeDisks)
        if !pinned.isEmpty {
            let names = pinned.map { "\($0.meta.project)/\($0.meta.name)" }.joined(separator: ", ")
            throw LQXError(
                .failedPrecondition,
                "cannot drain \(name): \(names) have disks this node created (no shared storage yet); stop and delete them, or leave the node as it is"
            )
        }
        let time = now()
        _ = try await updateNode(name, by: principal, reason: "Draining") { node in
            node.spec.schedulable = false
            if node.status.phase != .maintenance { node.status.phase = vms.isEmpty ? .maintenance : .draining }
            // Kept while the drain lasts: a node that goes silent meanwhile drains on when back.
            node.status.conditions.set(
                Condition(
                    type: "Draining", status: !vms.isEmpty, reason: vms.isEmpty ? "Drained" : "Drain",
                    message: vms.isEmpty ? "no VMs" : "moving \(vms.count) VMs away", lastTransitionUnixMs: time))
            return vms.isEmpty ? "no VMs: in maintenance" : "moving \(vms.count) VMs away"
        }
        for vm in vms { try await evict(vm.meta.id, from: name, why: "drain") }
        return vms
    }

    /// Whether some disk of `vm` was created by its node (a clone or a new disk): such a VM
    /// cannot move to another node without shared storage.
    static func hasNodeDisks(_ vm: VirtualMachine) -> Bool {
        vm.spec.machine.disks.contains {
            if case .path = $0.source { return false }
            return true
        }
    }

    /// A VM on a node with a NoExecute taint it does not tolerate is evicted like a drained one
    /// (stopped, removed there, placed again where it is tolerated). One whose disks that node
    /// created cannot leave: it keeps running and its `Evicted` condition says why (once).
    /// Returns whether the VM was marked for eviction.
    func enforceNoExecute(_ vm: VirtualMachine, on node: Node) async throws(LQXError) -> Bool {
        guard !vm.status.evicting, vm.meta.deletionRequestedUnixMs == nil,
            let taint = Scheduler.evictingTaint(vm.spec.placement, on: node.spec)
        else { return false }
        guard Self.hasNodeDisks(vm) else {
            try await evict(vm.meta.id, from: node.meta.name, why: "taint \(taint.display)")
            return true
        }
        let message =
            "not evicted for taint \(taint.display): its disks were created on node \(node.meta.name) (no shared storage yet)"
        guard vm.status.conditions["Evicted"]?.message != message else { return false }
        var updated = vm
        updated.status.conditions.set(
            Condition(
                type: "Evicted", status: false, reason: "CannotMove", message: message, lastTransitionUnixMs: now()))
        do {
            try await store.commit(
                [.update(try Repository.stored(updated), expected: vm.meta.resourceVersion)],
                events: [event(.vm, vm.meta, "EvictionRefused", message, warning: true)], audit: [])
        } catch  where error.code == .conflict {
            // Changed meanwhile: the next pass looks again.
        }
        return false
    }

    func evict(_ vmID: String, from node: String, why: String) async throws(LQXError) {
        try await retrying { () async throws(LQXError) in
            guard var vm = try await repository.vm(id: vmID), !vm.status.evicting else { return }
            let expected = vm.meta.resourceVersion
            vm.status.evicting = true
            try await store.commit(
                [.update(try Repository.stored(vm), expected: expected)],
                events: [
                    event(
                        .vm, vm.meta, "Evicting",
                        "moving off node \(node) (\(why)): live where its disks can follow, else stop, then start elsewhere"
                    )
                ],
                audit: [])
        }
    }

    /// A VM the reconciler stopped and removed from `node` for a drain loses its placement and is
    /// scheduled again (a new epoch on another node, or PENDING, explained, when none fits).
    func releasePlacement(vmID: String, from node: Node) async throws(LQXError) {
        try await unplace(vmID, reason: "Evicted", "stopped and removed from node \(node.meta.name)") { vm in
            vm.status.evicting && vm.status.nodeID == node.meta.id
        }
    }

    /// Clears the placement of `vmID` when `still` holds for the VM as stored now (PENDING, no
    /// node), records `reason`, and schedules it again.
    func unplace(
        _ vmID: String, reason: String, _ message: String,
        when still: (VirtualMachine) async throws(LQXError) -> Bool
    ) async throws(LQXError) {
        let released = try await retrying { () async throws(LQXError) -> Bool in
            guard var vm = try await repository.vm(id: vmID), try await still(vm) else { return false }
            let expected = vm.meta.resourceVersion
            vm.status.evicting = false
            vm.status.migratingFrom = ""
            vm.status.nodeID = ""
            vm.status.phase = .pending
            vm.status.agentConnected = false
            try await store.commit(
                [.update(try Repository.stored(vm), expected: expected)],
                events: [event(.vm, vm.meta, reason, message)],
                audit: [])
            return true
        }
        if released { _ = try? await schedule(vmID: vmID) }
    }

    /// Nodes DRAINING with no VM left on them become MAINTENANCE.
    func completeDrains() async throws(LQXError) {
        let draining = try await repository.nodes().filter { $0.status.phase == .draining }
        guard !draining.isEmpty else { return }
        let vms = try await repository.vms()
        // A VM live-migrating away still runs on the node until the migration is done.
        for node in draining
        where !vms.contains(where: { $0.status.nodeID == node.meta.id || $0.status.migratingFrom == node.meta.id }) {
            let time = now()
            _ = try await updateNode(node.meta.name, by: .system, reason: "Maintenance") { node in
                node.status.phase = .maintenance
                node.status.conditions.set(
                    Condition(
                        type: "Draining", status: false, reason: "Drained", message: "no VMs left",
                        lastTransitionUnixMs: time))
                return "drained: no VMs left"
            }
        }
    }
}
