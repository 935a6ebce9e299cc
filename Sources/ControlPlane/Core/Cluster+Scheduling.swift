import LQXModel

extension Cluster {
    /// The scheduler's decision for a VM, without placing it (`lqx vm explain`).
    public func explain(_ project: String, _ name: String, by principal: Principal) async throws(LQXError) -> Decision {
        let vm = try await vm(project, name, by: principal)
        var snapshot = ClusterSnapshot(
            nodes: try await repository.nodes(), vms: try await repository.vms(), excluding: vm.meta.id)
        let request = SchedulingRequest(vm.spec)
        attachPaths(request, to: &snapshot)
        return scheduler.schedule(request, on: snapshot)
    }

    /// Places a VM that is on no node: writes the chosen node, a new epoch and a `Scheduled`
    /// condition in one transaction with the store's capacity check, retrying when another
    /// placement won the race. When nothing fits the VM stays PENDING with `Scheduled=false`,
    /// reason `Unschedulable` and the summary; it is tried again when nodes or VMs change.
    @discardableResult
    public func schedule(vmID: String) async throws(LQXError) -> Decision? {
        var attempt = 0
        while true {
            guard var vm = try await repository.vm(id: vmID), vm.status.nodeID.isEmpty,
                vm.meta.deletionRequestedUnixMs == nil
            else { return nil }
            let nodes = try await repository.nodes()
            let vms = try await repository.vms()
            let decision = decide(vm, nodes: nodes, vms: vms)
            defer { reservations.withLock { _ = $0.removeValue(forKey: vmID) } }
            let expected = vm.meta.resourceVersion
            // An HA VM's first placement is an admission (moves and restarts later are not).
            let refusal =
                if let nodeID = decision.nodeID, vm.status.epoch == 0 {
                    try await admissionRefusal(vm, on: nodeID, nodes: nodes, vms: vms)
                } else {
                    HAAdmission.Refusal?.none
                }
            guard refusal == nil, let nodeID = decision.nodeID, let node = nodes.first(where: { $0.meta.id == nodeID })
            else {
                let reason =
                    refusal != nil ? "HAAdmissionControl" : decision.waiting ? "WaitingForNodes" : "Unschedulable"
                let summary = refusal.map { "\($0)" } ?? decision.summary
                let condition = Condition(
                    type: "Scheduled", status: false, reason: reason, message: summary, lastTransitionUnixMs: now())
                // Refused by admission control: placed nowhere, whatever the scheduler chose.
                let result = refusal == nil ? decision : nil
                guard vm.status.conditions["Scheduled"]?.message != summary else { return result }
                vm.status.conditions.set(condition)
                vm.status.phase = .pending
                do {
                    // Waiting for answers is normal, not worth a warning event.
                    let events =
                        decision.waiting && refusal == nil
                        ? [] : [event(.vm, vm.meta, "FailedScheduling", summary, warning: true)]
                    try await store.commit(
                        [.update(try Repository.stored(vm), expected: expected)], events: events, audit: [])
                } catch  where error.code == .conflict && attempt < Self.attempts {
                    attempt += 1
                    continue
                }
                return result
            }
            vm.status.phase = .scheduled
            do {
                try await commitPlacement(
                    &vm, expected: expected, on: node, reason: "Scheduled", summary: decision.summary
                ) { epoch in "placed on \(node.meta.name) (epoch \(epoch)): \(decision.summary)" }
                logger.info(
                    "scheduled",
                    metadata: ["vm.id": "\(vm.meta.id)", "vm.name": "\(vm.meta.name)", "node": "\(node.meta.name)"])
                return decision
            } catch  where (error.code == .conflict || error.code == .resourceExhausted) && attempt < Self.attempts {
                attempt += 1
            }
        }
    }

    /// The decision for `vm` on the stored nodes and VMs plus the placements other decisions
    /// reserved and have not committed yet; the chosen node is reserved for `vm` (the caller
    /// removes the reservation once its commit is done, whether it held or not).
    func decide(_ vm: VirtualMachine, nodes: [Node], vms: [VirtualMachine]) -> Decision {
        var snapshot = ClusterSnapshot(nodes: nodes, vms: vms, excluding: vm.meta.id)
        // Reservations whose VM the list shows placed are counted there already.
        let reserved = reservations.withLock { Set($0.keys) }
        let placed =
            reserved.isEmpty
            ? [] : Set(vms.lazy.filter { reserved.contains($0.meta.id) && !$0.status.nodeID.isEmpty }.map(\.meta.id))
        let request = SchedulingRequest(vm.spec)
        attachPaths(request, to: &snapshot)
        // Paths asked about less than a heartbeat grace ago: wait for every node's answer.
        let recent = paths.recent(request.paths, since: now() - heartbeatGrace.components.seconds * 1000)
        return reservations.withLock { reservations in
            let pending = reservations.filter { $0.key != vm.meta.id && !placed.contains($0.key) }
            if !pending.isEmpty {
                let positions = Dictionary(
                    snapshot.nodes.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { first, _ in first })
                for reservation in pending.values {
                    if let position = positions[reservation.node] {
                        snapshot.place(reservation.request, at: position)
                    }
                }
            }
            var decision = scheduler.schedule(request, on: snapshot)
            let unanswered = decision.unchecked.filter { recent.contains($0.path) }
            if decision.nodeID != nil, !unanswered.isEmpty {
                decision = decision.waiting(
                    for: Array(Set(unanswered.map(\.node))).sorted(), paths: Array(Set(unanswered.map(\.path))).sorted()
                )
            }
            if let node = decision.nodeID { reservations[vm.meta.id] = (node, request) }
            return decision
        }
    }

    /// Gives the nodes that check paths their answers, and asks them (in their next heartbeat
    /// replies) about the paths `request` names.
    private func attachPaths(_ request: SchedulingRequest, to snapshot: inout ClusterSnapshot) {
        guard !request.paths.isEmpty else { return }
        paths.want(request.paths, now: now())
        snapshot.attach(paths: paths.facts())
    }

    /// Tries to place every VM that waits for a node (after a node joined or became READY, a VM
    /// was deleted or shrank). Returns how many were placed.
    @discardableResult
    public func schedulePending() async throws(LQXError) -> Int {
        var placed = 0
        let waiting = try await repository.vms().filter {
            $0.status.nodeID.isEmpty && $0.meta.deletionRequestedUnixMs == nil && $0.spec.runState != .stopped
        }
        for vm in waiting {
            if let decision = try await schedule(vmID: vm.meta.id), decision.nodeID != nil { placed += 1 }
        }
        return placed
    }
}

extension Cluster {
    /// Commits `vm` placed on `node` (a new epoch, the `Scheduled` condition with `reason`) with
    /// the store's capacity check on the node; the event says `message(epoch)`.
    func commitPlacement(
        _ vm: inout VirtualMachine, expected: Int64, on node: Node, reason: String, summary: String,
        message: (Int64) -> String
    ) async throws(LQXError) {
        vm.status.nodeID = node.meta.id
        vm.status.epoch += 1
        vm.status.conditions.set(
            Condition(
                type: "Scheduled", status: true, reason: reason, message: summary, lastTransitionUnixMs: now()))
        let room = node.allocatable
        try await store.commit(
            [
                .update(try Repository.stored(vm), expected: expected),
                .capacity(node: node.meta.id, cpus: room.cpus, memoryMiB: room.memoryMiB),
            ],
            events: [event(.vm, vm.meta, reason, message(vm.status.epoch))], audit: [])
    }
}
