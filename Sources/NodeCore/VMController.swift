import HostBroker
import LQXModel

/// The node's operations on its VMs, as typed commands: the API layer decodes a request into one
/// of these calls and encodes what it returns; every decision (checks, waits, graceful or forced)
/// is made here.
public struct VMController: Sendable {
    /// The event-fed view of the VMs and their agents.
    public let manager: VMManager
    /// The backend.
    public var hypervisor: any Hypervisor { manager.hypervisor }
    /// Waits and defaults.
    public var policy: LifecyclePolicy { manager.policy }

    /// Directories the operator declared shared with other hosts (`lqx-node --shared-storage`).
    public let sharedStorage: [SharedStorage]

    /// Creates a controller over a manager.
    public init(manager: VMManager, sharedStorage: [SharedStorage] = []) {
        self.manager = manager
        self.sharedStorage = sharedStorage
    }

    /// How to stop a VM.
    public enum StopMode: Sendable, Equatable {
        /// Through the agent, else ACPI; stopped at once after `timeout` (nil: the policy's).
        case graceful(timeout: Duration?)
        /// At once.
        case force
    }

    /// How a stop ended and the VM's status after it.
    public struct StopOutcome: Sendable {
        /// How the VM was stopped.
        public var method: VMManager.StopMethod
        /// Its status afterwards.
        public var status: VMStatus
    }

    /// Creates (defines, stopped) a VM.
    public func create(_ spec: VMSpec) async throws(LQXError) -> VMStatus {
        try spec.validate()
        return try await hypervisor.create(spec)
    }

    /// Starts a VM and waits (up to the policy's settle time) until the node sees it running.
    public func start(_ name: String) async throws(LQXError) -> VMStatus {
        _ = try await status(name)
        try await hypervisor.start(name)
        _ = await manager.waitForState(name, timeout: policy.settle) { $0.isActive }
        return try await status(name)
    }

    /// Stops a VM (see `StopMode`).
    public func stop(_ name: String, mode: StopMode) async throws(LQXError) -> StopOutcome {
        let current = try await status(name)
        let method: VMManager.StopMethod
        switch mode {
        case .force:
            if current.state.isActive {
                try await hypervisor.forceStop(name)
                method = .forced
            } else {
                method = .alreadyStopped
            }
        case .graceful(let timeout):
            let timeout = timeout ?? policy.stopTimeout
            guard timeout > .zero, timeout <= policy.maximumStopTimeout else {
                throw LQXError(
                    .invalidSpec, "stop timeout must be more than 0 and at most \(policy.maximumStopTimeout)")
            }
            method = try await manager.stop(name, timeout: timeout)
        }
        _ = await manager.waitForState(name, timeout: policy.settle) { !$0.isActive }
        return StopOutcome(method: method, status: try await status(name))
    }

    /// Reboots a running VM (through its agent when connected, else ACPI).
    public func reboot(_ name: String) async throws(LQXError) -> VMStatus {
        _ = try await status(name)
        _ = try await manager.reboot(name)
        return try await status(name)
    }

    /// Pauses a VM's vCPUs.
    public func pause(_ name: String) async throws(LQXError) -> VMStatus {
        _ = try await status(name)
        try await hypervisor.pause(name)
        return try await status(name)
    }

    /// Resumes a paused VM.
    public func resume(_ name: String) async throws(LQXError) -> VMStatus {
        _ = try await status(name)
        try await hypervisor.resume(name)
        return try await status(name)
    }

    /// Deletes a VM (a running one only with `force`), and its node-created disks unless kept.
    public func delete(_ name: String, force: Bool, keepDisks: Bool) async throws(LQXError) {
        _ = try await status(name)
        try await hypervisor.delete(name, force: force, deleteDisks: !keepDisks)
    }

    /// The status of a VM this node manages (`not_found` otherwise).
    public func status(_ name: String) async throws(LQXError) -> VMStatus {
        guard let status = try await hypervisor.managedStatus(name) else {
            throw LQXError(.notFound, "no VM named \(name) on this node")
        }
        return status
    }

    /// Every VM of this node.
    public func list() async throws(LQXError) -> [VMStatus] { try await hypervisor.list() }

    /// Takes a snapshot.
    public func createSnapshot(_ vm: String, name: String?, description: String) async throws(LQXError)
        -> SnapshotInfo
    {
        _ = try await status(vm)
        return try await hypervisor.createSnapshot(vm, name: name, description: description)
    }

    /// Reverts to a snapshot.
    public func revertSnapshot(_ vm: String, name: String) async throws(LQXError) -> VMStatus {
        _ = try await status(vm)
        try await hypervisor.revertSnapshot(vm, name: name)
        return try await status(vm)
    }

    /// Deletes a snapshot.
    public func deleteSnapshot(_ vm: String, name: String) async throws(LQXError) {
        _ = try await status(vm)
        try await hypervisor.deleteSnapshot(vm, name: name)
    }

    /// The VM's snapshots.
    public func snapshots(_ vm: String) async throws(LQXError) -> [SnapshotInfo] {
        _ = try await status(vm)
        return try await hypervisor.snapshots(vm)
    }

    /// Adds a disk.
    public func attachDisk(_ vm: String, _ disk: DiskSpec) async throws(LQXError) -> VMStatus {
        try disk.validate(field: "disk")
        _ = try await status(vm)
        _ = try await hypervisor.attachDisk(vm, disk)
        return try await status(vm)
    }

    /// Removes a disk (a running guest gets the policy's detach time to release it).
    public func detachDisk(_ vm: String, target: String, deleteImage: Bool) async throws(LQXError) -> VMStatus {
        _ = try await status(vm)
        try await hypervisor.detachDisk(vm, target: target, deleteImage: deleteImage, timeout: policy.detachTimeout)
        return try await status(vm)
    }

    /// Where the VM's console can be read.
    public func console(_ vm: String) async throws(LQXError) -> ConsoleInfo {
        _ = try await status(vm)
        return try await hypervisor.console(vm)
    }

    /// Live-migrates a running VM; cancelling the caller aborts the migration.
    public func migrate(
        _ vm: String, _ request: MigrationRequest, progress: @escaping @Sendable (JobProgress) -> Void
    ) async throws(LQXError) {
        let status = try await status(vm)
        var request = request
        // Writable disks all on declared shared storage: the destination opens the same files,
        // whatever libvirt concludes from the file-system type (it knows NFS or GFS2, not a
        // bind mount or a volume the operator mounts on every host).
        if let spec = status.spec, let storages = spec.liveMigrationStorages(on: sharedStorage), !storages.isEmpty {
            request.disksShared = true
        }
        try await hypervisor.migrate(vm, request, progress: progress)
    }

    /// Makes this node ready to receive a live migration of `spec`'s VM.
    public func prepareIncoming(_ spec: VMSpec) async throws(LQXError) {
        try spec.validate()
        try await hypervisor.prepareIncoming(spec)
    }

    /// A live session with the VM's agent, waiting up to the policy's agent time for it.
    public func session(_ vm: String) async throws(LQXError) -> AgentSession {
        _ = try await status(vm)
        return try await manager.agentSession(vm, timeout: policy.agentWait)
    }

    /// The VM's latest in-guest telemetry sample.
    public func telemetry(_ vm: String) async throws(LQXError) -> VMTelemetry {
        let status = try await status(vm)
        guard let telemetry = manager.latestTelemetry(vm) else {
            throw LQXError(
                .failedPrecondition,
                status.state.isActive
                    ? "no telemetry from VM \(vm) yet: its agent has not answered" : "VM \(vm) is not running")
        }
        return telemetry
    }

    /// The latest sample (if any) and then every new one, until the consumer stops.
    public func watchTelemetry(_ vm: String) async throws(LQXError) -> (
        latest: VMTelemetry?, updates: AsyncStream<VMTelemetry>
    ) {
        _ = try await status(vm)
        let updates = manager.watchTelemetry(vm)
        return (manager.latestTelemetry(vm), updates)
    }
}
