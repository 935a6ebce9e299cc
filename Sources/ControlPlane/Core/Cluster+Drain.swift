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
        let pinned = vms.filter { vm in
            vm.spec.machine.disks.contains {
                if case .path = $0.source { return false }
                return true
            }
        }
        if !pinned.isEmpty {
            let names = pinned.map { "\($0.meta.project)/\($0.meta.name)" }.joined(separator: ", ")
            throw LQXError(
                .failedPrecondition,
                "cannot drain \(name): \(names) have disks this node created (no shared storage yet); stop and delete them, or leave the node as it is"
            )
        }
        _ = try await updateNode(name, by: principal, reason: "Draining") { node in
            node.spec.schedulable = false
            if node.status.phase != .maintenance { node.status.phase = vms.isEmpty ? .maintenance : .draining }
            return vms.isEmpty ? "no VMs: in maintenance" : "moving \(vms.count) VMs away"
        }
        for vm in vms { try await evict(vm.meta.id, from: name) }
        return vms
    }

    func evict(_ vmID: String, from node: String) async throws(LQXError) {
        try await retrying { () async throws(LQXError) in
            guard var vm = try await repository.vm(id: vmID), !vm.status.evicting else { return }
            let expected = vm.meta.resourceVersion
            vm.status.evicting = true
            try await store.commit(
                [.update(try Repository.stored(vm), expected: expected)],
                events: [
                    event(.vm, vm.meta, "Evicting", "moving off node \(node) (drain): stop, then start elsewhere")
                ],
                audit: [])
        }
    }

    /// A VM the reconciler stopped and removed from `node` for a drain loses its placement and is
    /// scheduled again (a new epoch on another node, or PENDING, explained, when none fits).
    func releasePlacement(vmID: String, from node: Node) async throws(LQXError) {
        try await retrying { () async throws(LQXError) in
            guard var vm = try await repository.vm(id: vmID), vm.status.evicting, vm.status.nodeID == node.meta.id
            else { return }
            let expected = vm.meta.resourceVersion
            vm.status.evicting = false
            vm.status.nodeID = ""
            vm.status.phase = .pending
            vm.status.agentConnected = false
            try await store.commit(
                [.update(try Repository.stored(vm), expected: expected)],
                events: [event(.vm, vm.meta, "Evicted", "stopped and removed from node \(node.meta.name)")], audit: [])
        }
        _ = try? await schedule(vmID: vmID)
    }

    /// Nodes DRAINING with no VM left on them become MAINTENANCE.
    func completeDrains() async throws(LQXError) {
        let draining = try await repository.nodes().filter { $0.status.phase == .draining }
        guard !draining.isEmpty else { return }
        let vms = try await repository.vms()
        for node in draining where !vms.contains(where: { $0.status.nodeID == node.meta.id }) {
            _ = try await updateNode(node.meta.name, by: .system, reason: "Maintenance") { node in
                node.status.phase = .maintenance
                return "drained: no VMs left"
            }
        }
    }
}
