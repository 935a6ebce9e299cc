import LQXModel

extension Cluster {
    /// The cluster settings (viewers).
    public func settings(by principal: Principal) async throws(LQXError) -> ClusterSettings {
        try principal.require(.viewer, project: principal.project, to: "read the cluster settings")
        return try await repository.settings()
    }

    /// Sets one cluster setting (admins; audited). Raising `ha.tolerate-failures` is refused when
    /// the HA VMs running now would not keep room for that many failures (the refusal says where).
    public func setSetting(_ key: String, to value: String, by principal: Principal) async throws(LQXError)
        -> ClusterSettings
    {
        try principal.require(.admin, to: "change cluster settings")
        return try await retrying { () async throws(LQXError) -> ClusterSettings in
            let current = try await repository.settings()
            var updated = try current.setting(key, to: value)
            guard updated != current else { return current }
            if updated.haTolerateFailures > current.haTolerateFailures,
                let refusal = admission.check(
                    nodes: try await repository.nodes(), vms: try await repository.vms(),
                    tolerate: updated.haTolerateFailures)
            {
                throw LQXError(.resourceExhausted, "cannot set \(key) to \(value): \(refusal)")
            }
            let object = try Repository.stored(updated)
            let meta = ObjectMeta(id: "cluster", name: "cluster")
            let write: StoreWrite =
                current.resourceVersion == 0 ? .create(object) : .update(object, expected: current.resourceVersion)
            do throws(LQXError) {
                updated.resourceVersion = try await store.commit(
                    [write], events: [event(.settings, meta, "SettingChanged", "\(key) = \(value)")],
                    audit: [
                        AuditRecord(
                            timeUnixMs: now(), user: principal.user, project: "", vm: "", action: "cluster.set",
                            detail: "\(key) = \(value)", result: "ok")
                    ])
            } catch  where error.code == .alreadyExists {
                throw LQXError(.conflict, "another writer set the cluster settings first")
            }
            return updated
        }
    }

    /// Admission control with this cluster's scheduler.
    var admission: HAAdmission { HAAdmission(scheduler: scheduler) }

    /// Refuses (`resource_exhausted`) to run `vm` as an HA VM when some set of
    /// `ha.tolerate-failures` node failures would leave an HA VM without room. A VM on no node
    /// is counted where the scheduler would place it now (nowhere: nothing to check yet; the
    /// check runs again when it is first placed). Restarts after a failure and moves by drain
    /// are not admissions.
    func admit(_ vm: VirtualMachine) async throws(LQXError) {
        guard vm.spec.ha.enabled, vm.spec.runState != .stopped else { return }
        let nodes = try await repository.nodes()
        let vms = try await repository.vms()
        var node = vm.status.nodeID
        if node.isEmpty {
            let others = vms.filter { $0.meta.id != vm.meta.id }
            guard
                let chosen = scheduler.schedule(
                    SchedulingRequest(vm.spec), on: ClusterSnapshot(nodes: nodes, vms: others)
                )
                .nodeID
            else { return }
            node = chosen
        }
        if let refusal = try await admissionRefusal(vm, on: node, nodes: nodes, vms: vms) {
            throw LQXError(.resourceExhausted, "HA VM \(vm.meta.name) not started: \(refusal)")
        }
    }

    /// What admission control says of `vm` placed on `nodeID` among `nodes` and `vms` (which may
    /// hold an older copy of it), or nil when it is admitted (or not an HA VM, or the check is off).
    func admissionRefusal(_ vm: VirtualMachine, on nodeID: String, nodes: [Node], vms: [VirtualMachine])
        async throws(LQXError) -> HAAdmission.Refusal?
    {
        guard vm.spec.ha.enabled, vm.spec.runState != .stopped else { return nil }
        let tolerate = try await repository.settings().haTolerateFailures
        guard tolerate > 0 else { return nil }
        var candidate = vm
        candidate.status.nodeID = nodeID
        let all = vms.filter { $0.meta.id != vm.meta.id } + [candidate]
        return admission.check(nodes: nodes, vms: all, tolerate: tolerate)
    }
}

extension HAAdmission.Refusal: Error {}
