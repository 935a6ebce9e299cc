import LQXModel

/// A request to create a VM, decoded by the API layer.
public struct CreateVM: Sendable, Equatable {
    /// Its project.
    public var project: String
    /// Its name (unique in the project).
    public var name: String
    /// Its labels.
    public var labels: Labels
    /// What it should be.
    public var spec: VirtualMachine.Spec

    /// Creates the request.
    public init(project: String = Cluster.defaultProject, name: String, labels: Labels = [:], spec: VirtualMachine.Spec)
    {
        self.project = project
        self.name = name
        self.labels = labels
        self.spec = spec
    }
}

extension Cluster {
    /// Creates a VM (operators of its project): validated, within the project's quota, stored
    /// PENDING with a `Created` event; then placed if a node fits.
    public func createVM(_ request: CreateVM, by principal: Principal) async throws(LQXError) -> VirtualMachine {
        try principal.require(.operator, project: request.project, to: "create VMs in \(request.project)")
        var spec = request.spec
        spec.machine.name = request.name
        try spec.validate()
        let created = try await retrying { () async throws(LQXError) -> VirtualMachine in
            guard let project = try await repository.project(named: request.project) else {
                throw LQXError(.notFound, "project \(request.project) does not exist")
            }
            var vm = VirtualMachine(
                meta: ObjectMeta(
                    id: VMID.random().rawValue, name: request.name, project: request.project, labels: request.labels,
                    createdUnixMs: now()),
                spec: spec)
            try await admit(vm)
            // The store checks the quota under the project's lock, so concurrent creates cannot
            // pass it together; only a refusal reads the project's VMs, for the numbers.
            do throws(LQXError) {
                vm.meta.resourceVersion = try await store.commit(
                    [.create(try Repository.stored(vm)), Self.quotaCheck(project)],
                    events: [
                        event(
                            .vm, vm.meta, "Created",
                            "VM created (\(spec.machine.vcpus) vCPUs, \(spec.machine.memoryMiB) MiB)")
                    ],
                    audit: [])
            } catch  where error.code == .resourceExhausted {
                let existing = try await repository.vms(project: request.project)
                try Self.checkQuota(project, existing: existing, adding: spec.machine)
                throw error
            }
            return vm
        }
        guard spec.runState != .stopped else { return created }
        _ = try? await schedule(vmID: created.meta.id)
        return try await repository.vm(id: created.meta.id) ?? created
    }

    /// The store-side quota check of a project (unlimited figures as the largest value).
    static func quotaCheck(_ project: Project) -> StoreWrite {
        let unlimited = Int(Int32.max)
        return .quota(
            projectID: project.meta.id, project: project.meta.name, vcpus: project.quota.vcpus ?? unlimited,
            memoryMiB: project.quota.memoryMiB ?? unlimited, vms: project.quota.vms ?? unlimited)
    }

    static func checkQuota(_ project: Project, existing: [VirtualMachine], adding machine: VMSpec) throws(LQXError) {
        let quota = project.quota
        let vcpus = existing.reduce(0) { $0 + $1.spec.machine.vcpus } + machine.vcpus
        let memory = existing.reduce(0) { $0 + $1.spec.machine.memoryMiB } + machine.memoryMiB
        let name = project.meta.name
        if let limit = quota.vms, existing.count + 1 > limit {
            throw LQXError(.resourceExhausted, "project \(name) quota: \(limit) VMs allowed, it has \(existing.count)")
        }
        if let limit = quota.vcpus, vcpus > limit {
            throw LQXError(
                .resourceExhausted, "project \(name) quota: \(limit) vCPUs allowed, \(vcpus) would be in use")
        }
        if let limit = quota.memoryMiB, memory > limit {
            throw LQXError(
                .resourceExhausted, "project \(name) quota: \(limit) MiB allowed, \(memory) MiB would be in use")
        }
    }

    /// The VM of that name (viewers of its project).
    public func vm(_ project: String, _ name: String, by principal: Principal) async throws(LQXError)
        -> VirtualMachine
    {
        try principal.require(.viewer, project: project, to: "read VMs in \(project)")
        guard let vm = try await repository.vm(project: project, name: name) else {
            throw LQXError(.notFound, "VM \(name) does not exist in project \(project)")
        }
        return vm
    }

    /// Every VM the principal may see (of one project when given).
    public func vms(project: String?, by principal: Principal) async throws(LQXError) -> [VirtualMachine] {
        let scope = project ?? (principal.project.isEmpty ? nil : principal.project)
        try principal.require(.viewer, project: scope ?? "", to: "list VMs")
        return try await repository.vms(project: scope)
    }

    /// At most `limit` VMs that pass `filter`, ordered by project and name, after the key
    /// `after` (a page of a list; viewers of the project).
    public func vms(
        project: String?, after: (project: String, name: String)?, limit: Int, by principal: Principal,
        where filter: (VirtualMachine) -> Bool
    ) async throws(LQXError) -> [VirtualMachine] {
        let scope = project ?? (principal.project.isEmpty ? nil : principal.project)
        try principal.require(.viewer, project: scope ?? "", to: "list VMs")
        return try await repository.vms(project: scope, after: after, limit: limit, where: filter)
    }

    /// Replaces a VM's spec and labels (operators). The same spec again changes nothing; a write
    /// based on an older `resourceVersion` is refused with the current one; size, boot and disks
    /// change only while the VM is stopped.
    public func updateVM(
        _ project: String, _ name: String, spec: VirtualMachine.Spec, labels: Labels, resourceVersion: Int64,
        by principal: Principal
    ) async throws(LQXError) -> VirtualMachine {
        try principal.require(.operator, project: project, to: "change VMs in \(project)")
        var vm = try await vm(project, name, by: principal)
        var spec = spec
        spec.machine.name = name
        if vm.spec == spec && vm.meta.labels == labels { return vm }
        guard vm.meta.resourceVersion == resourceVersion else {
            throw LQXError(
                .conflict, "VM \(name) was changed since resource_version \(resourceVersion); read it again",
                cause: StaleVersion(current: vm.meta.resourceVersion))
        }
        guard vm.meta.deletionRequestedUnixMs == nil else {
            throw LQXError(.failedPrecondition, "VM \(name) is being deleted")
        }
        try spec.validate()
        var machineBefore = vm.spec.machine
        machineBefore.nics = spec.machine.nics  // NICs may change; the rest of the machine only while stopped
        let stopped = [.pending, .stopped, .failed].contains(vm.status.phase) || vm.status.nodeID.isEmpty
        if machineBefore != spec.machine && !stopped {
            throw LQXError(
                .failedPrecondition,
                "VM \(name) is \(vm.status.phase.rawValue): stop it before changing its vCPUs, memory, boot or disks")
        }
        if vm.spec.machine != spec.machine, let project = try await repository.project(named: project) {
            var others = try await repository.vms(project: project.meta.name)
            others.removeAll { $0.meta.id == vm.meta.id }
            try Self.checkQuota(project, existing: others, adding: spec.machine)
        }
        let changes = Self.describeChange(from: vm.spec, to: spec)
        let before = vm.spec
        vm.spec = spec
        // Becoming an HA VM that runs, or a bigger or differently placed one: admission control.
        if !before.ha.enabled || before.runState == .stopped || before.machine.vcpus < spec.machine.vcpus
            || before.machine.memoryMiB < spec.machine.memoryMiB || before.placement != spec.placement
        {
            try await admit(vm)
        }
        vm.meta.labels = labels
        var writes: [StoreWrite] = [.update(try Repository.stored(vm), expected: resourceVersion)]
        if let project = try await repository.project(named: project) { writes.append(Self.quotaCheck(project)) }
        if !vm.status.nodeID.isEmpty, let node = try await repository.node(id: vm.status.nodeID) {
            let room = node.allocatable
            writes.append(.capacity(node: node.meta.id, cpus: room.cpus, memoryMiB: room.memoryMiB))
        }
        vm.meta.resourceVersion = try await store.commit(
            writes, events: [event(.vm, vm.meta, "SpecChanged", changes)], audit: [])
        if vm.status.nodeID.isEmpty && spec.runState != .stopped { _ = try? await schedule(vmID: vm.meta.id) }
        return try await repository.vm(id: vm.meta.id) ?? vm
    }

    /// Sets the desired power state (start, stop, pause, resume), whatever else changed meanwhile.
    public func setRunState(
        _ project: String, _ name: String, _ state: VirtualMachine.RunState, by principal: Principal
    ) async throws(LQXError) -> VirtualMachine {
        try await retrying { () async throws(LQXError) -> VirtualMachine in
            let vm = try await vm(project, name, by: principal)
            var spec = vm.spec
            spec.runState = state
            return try await updateVM(
                project, name, spec: spec, labels: vm.meta.labels, resourceVersion: vm.meta.resourceVersion,
                by: principal)
        }
    }

    /// Asks for a VM's deletion (operators): one that is on no node goes at once; one on a node
    /// is marked and removed once its node deleted it (the reconciler does that).
    public func deleteVM(_ project: String, _ name: String, by principal: Principal) async throws(LQXError) {
        try principal.require(.operator, project: project, to: "delete VMs in \(project)")
        try await retrying { () async throws(LQXError) in
            var vm = try await vm(project, name, by: principal)
            let expected = vm.meta.resourceVersion
            if vm.status.nodeID.isEmpty {
                try await store.commit(
                    [.delete(.vm, id: vm.meta.id, expected: expected)],
                    events: [event(.vm, vm.meta, "Deleted", "VM deleted")], audit: [])
                return
            }
            guard vm.meta.deletionRequestedUnixMs == nil else { return }
            vm.meta.deletionRequestedUnixMs = now()
            try await store.commit(
                [.update(try Repository.stored(vm), expected: expected)],
                events: [event(.vm, vm.meta, "DeletionRequested", "VM will be deleted from its node")], audit: [])
        }
    }

    /// Removes a VM whose deletion was asked for once its node deleted it (the reconciler).
    func finishDeletion(vmID: String, node: String) async throws(LQXError) {
        try await retrying { () async throws(LQXError) in
            guard let vm = try await repository.vm(id: vmID), vm.meta.deletionRequestedUnixMs != nil else { return }
            try await store.commit(
                [.delete(.vm, id: vm.meta.id, expected: vm.meta.resourceVersion)],
                events: [event(.vm, vm.meta, "Deleted", "VM deleted from node \(node)")], audit: [])
        }
    }

    /// Appends an event about an object (no other write).
    func recordEvent(_ kind: ObjectKind, _ meta: ObjectMeta, _ reason: String, _ message: String) async throws(LQXError)
    {
        try await store.commit([], events: [event(kind, meta, reason, message)], audit: [])
    }

    static func describeChange(from old: VirtualMachine.Spec, to new: VirtualMachine.Spec) -> String {
        var parts: [String] = []
        if old.runState != new.runState {
            parts.append("run state \(old.runState.rawValue) → \(new.runState.rawValue)")
        }
        if old.machine.vcpus != new.machine.vcpus { parts.append("vCPUs \(old.machine.vcpus) → \(new.machine.vcpus)") }
        if old.machine.memoryMiB != new.machine.memoryMiB {
            parts.append("memory \(old.machine.memoryMiB) → \(new.machine.memoryMiB) MiB")
        }
        if old.machine.disks != new.machine.disks { parts.append("disks") }
        if old.machine.nics != new.machine.nics { parts.append("network interfaces") }
        if old.placement != new.placement { parts.append("placement") }
        if old.ha != new.ha {
            parts.append(
                new.ha.enabled
                    ? "HA on (priority \(new.ha.priority.rawValue), at most \(new.ha.maxRestarts) restarts in \(new.ha.restartWindowSeconds) s)"
                    : "HA off")
        }
        return parts.isEmpty ? "labels changed" : "changed: " + parts.joined(separator: ", ")
    }
}
