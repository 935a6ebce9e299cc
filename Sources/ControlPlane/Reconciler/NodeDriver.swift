import LQXModel

/// What the reconciler asks of a node. The API layer implements it over each node's
/// mutual-TLS API; tests of the core use one in memory. On the node a VM is named by its id
/// (unique in the cluster, whatever its project and name). Every call is idempotent where
/// the node allows: starting a running VM or deleting a missing one is not an error. Every
/// command carries the VM's placement epoch: a node refuses one lower than it has seen for the
/// VM (`stale_epoch`), so a decision the cluster moved past cannot act (docs/ha.md).
public protocol NodeDriver: Sendable {
    /// The VM as the node has it now; nil when the node does not have it.
    func get(_ vmID: String, on node: Node) async throws(LQXError) -> ObservedVM?
    /// Defines the VM (`machine.name` is its id) and starts it when `start`.
    func create(_ machine: VMSpec, start: Bool, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM
    /// Starts a stopped VM.
    func start(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM
    /// Stops a VM: the agent shuts the guest down, forced after the node's timeout.
    func stop(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM
    /// Pauses a running VM.
    func pause(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM
    /// Resumes a paused VM.
    func resume(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM
    /// Destroys the VM and removes its definition and disks from the node.
    func delete(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError)
    /// Removes a stopped VM's definition from the node, keeping any disk (a VM moving away).
    func undefine(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError)
    /// Makes `node` ready to receive a live migration of `machine` (named by the VM's id).
    func prepareIncoming(_ machine: VMSpec, epoch: Int64, on node: Node) async throws(LQXError)
    /// Live-migrates the running VM from `source` to `target` (prepared first) and returns
    /// once it runs there; on failure it still runs on `source` (the hypervisor's guarantee).
    func migrate(_ vmID: String, epoch: Int64, from source: Node, to target: Node) async throws(LQXError)
}

/// What the reconciler does for one VM in one pass, decided from its spec and what its node
/// reports (a value, tested on its own).
public enum ReconcileAction: Sendable, Equatable {
    /// Nothing: status matches spec, or nothing can be done now.
    case none
    /// Define it on its node, started or not.
    case create(start: Bool)
    /// Start it.
    case start
    /// Stop it.
    case stop
    /// Pause it.
    case pause
    /// Resume it.
    case resume
    /// Remove it from its node, then from the store.
    case delete
    /// Being moved: remove its definition from this node, then place it again.
    case release
    /// Being moved while it runs: live-migrate it to another node (one copy at every instant).
    case migrate

    /// The operation's name in events and conditions (`Start` → `StartFailed`).
    public var name: String {
        switch self {
        case .none: "None"
        case .create: "Create"
        case .start: "Start"
        case .stop: "Stop"
        case .pause: "Pause"
        case .resume: "Resume"
        case .delete: "Delete"
        case .release: "Release"
        case .migrate: "Migrate"
        }
    }

    /// What to do for `vm` given what its node reports (`observed`, nil: the node does not have
    /// it) and whether the node is READY (nothing is sent to a node that is not). `canMigrate`:
    /// some other READY node can take the VM by live migration (`Cluster.liveMigrationTargets`).
    public static func decide(
        _ vm: VirtualMachine, observed: ObservedVM?, nodeReady: Bool, canMigrate: Bool = false
    ) -> ReconcileAction {
        // A live migration in flight (or to be resolved) owns the VM until it is done.
        guard !vm.status.nodeID.isEmpty, nodeReady, vm.status.migratingFrom.isEmpty else { return .none }
        if vm.meta.deletionRequestedUnixMs != nil { return .delete }
        if vm.status.evicting {
            // Live-migrated when it runs and its disks can follow; else stopped first, removed
            // from the node, and only then placed elsewhere. Never two copies either way.
            if observed?.state == "running", canMigrate, !vm.status.migrationFailed {
                return .migrate
            }
            switch observed?.state {
            case nil: return .release
            case "running", "paused": return .stop
            case "shutting_down": return .none
            default: return .release
            }
        }
        guard let observed else { return .create(start: vm.spec.runState != .stopped) }
        switch (vm.spec.runState, observed.state) {
        case (.running, "shut_off"), (.running, "crashed"), (.paused, "shut_off"), (.paused, "crashed"):
            return .start
        case (.running, "paused"):
            // QEMU starts paused and libvirt resumes it: a VM still starting is left alone.
            return [.scheduled, .starting].contains(vm.status.phase) ? .none : .resume
        case (.paused, "running"): return .pause
        case (.stopped, "running"), (.stopped, "paused"): return .stop
        default: return .none
        }
    }

    /// The phase `vm` is in given what its node reports.
    public static func phase(_ vm: VirtualMachine, observed: ObservedVM?) -> VirtualMachine.Phase {
        guard !vm.status.nodeID.isEmpty else { return vm.status.phase }
        if vm.status.evicting || !vm.status.migratingFrom.isEmpty { return .migrating }
        guard let observed else { return .scheduled }
        switch observed.state {
        case "running": return vm.spec.runState == .stopped ? .stopping : .running
        case "paused":
            return vm.spec.runState == .running && [.scheduled, .starting].contains(vm.status.phase)
                ? .starting : .paused
        case "shutting_down": return .stopping
        case "shut_off": return vm.spec.runState == .stopped ? .stopped : .starting
        case "crashed": return .failed
        default: return .unknown
        }
    }
}
