import LQXModel
import NodeCore
import Synchronization

/// A hypervisor in memory for unit tests of the node core and its API layer: VMs are records,
/// lifecycle calls change their state and emit the events libvirt would, and every call is
/// recorded so a test can check what the core asked for. Not for production use.
public final class FakeHypervisor: Hypervisor {
    /// One recorded call: the method name and its arguments as text.
    public struct Call: Sendable, Equatable, CustomStringConvertible {
        /// The method (`start`, `migrate`, …).
        public var method: String
        /// Its arguments, in order.
        public var arguments: [String]
        /// `method(arg, …)`.
        public var description: String { "\(method)(\(arguments.joined(separator: ", ")))" }
    }

    /// What a VM does when it gets the ACPI power button.
    public enum ACPIBehaviour: Sendable {
        /// Powers off at once.
        case powerOff
        /// Ignores it (a hung or misconfigured guest).
        case ignore
    }

    private struct VM {
        var status: VMStatus
        var snapshots: [SnapshotInfo] = []
        var acpi: ACPIBehaviour = .powerOff
    }

    private struct State {
        var vms: [String: VM] = [:]
        var calls: [Call] = []
        var subscribers: [Int: AsyncStream<DomainEvent>.Continuation] = [:]
        var nextSubscriber = 0
        var failures: [String: LQXError] = [:]
        var migrationHangs = false
        var alive = true
    }

    private let state = Mutex(State())
    /// Where the VMs' files would be.
    public let layout: NodeLayout

    /// An empty hypervisor.
    public init(layout: NodeLayout = NodeLayout(stateDirectory: "/fake/state", runDirectory: "/fake/run")) {
        self.layout = layout
    }

    // MARK: test controls

    /// Every call so far, in order.
    public var calls: [Call] { state.withLock { $0.calls } }

    /// Makes the next calls of `method` fail with `error` (until `clearFailure`).
    public func fail(_ method: String, with error: LQXError) { state.withLock { $0.failures[method] = error } }

    /// Lets `method` succeed again.
    public func clearFailure(_ method: String) { _ = state.withLock { $0.failures.removeValue(forKey: method) } }

    /// How a VM reacts to the ACPI power button.
    public func setACPI(_ vm: String, _ behaviour: ACPIBehaviour) { state.withLock { $0.vms[vm]?.acpi = behaviour } }

    /// Makes migrations run until cancelled (to test that cancelling aborts them).
    public func setMigrationHangs(_ hangs: Bool) { state.withLock { $0.migrationHangs = hangs } }

    /// Whether `isAlive` reports a working connection.
    public func setAlive(_ alive: Bool) { state.withLock { $0.alive = alive } }

    /// Changes a VM's state as if the guest did it (e.g. powered itself off), with its event.
    public func guestChanged(_ vm: String, to newState: DomainState) {
        transition(vm, to: newState, event: newState.isActive ? .started : .stopped)
    }

    // MARK: Hypervisor

    /// Records the VM, stopped (validating the spec like libvirt's backend).
    public func create(_ spec: VMSpec) async throws(LQXError) -> VMStatus {
        try record("create", spec.name)
        try spec.validate()
        let status = try state.withLock { state throws(LQXError) -> VMStatus in
            guard state.vms[spec.name] == nil else {
                throw LQXError(.alreadyExists, "a VM named \(spec.name) exists already")
            }
            let status = VMStatus(
                name: spec.name, uuid: VMID.random().rawValue, state: .shutOff,
                agentSocket: "\(layout.vmRun(spec.name))/agent.sock",
                consoleLog: "\(layout.vmState(spec.name))/console.log", spec: spec)
            state.vms[spec.name] = VM(status: status)
            return status
        }
        emit(DomainEvent(name: spec.name, kind: .defined))
        return status
    }

    /// Records that an incoming migration of the VM was prepared.
    public func prepareIncoming(_ spec: VMSpec) async throws(LQXError) {
        try record("prepareIncoming", spec.name)
        try spec.validate()
    }

    /// Starts a stopped VM and emits `started`.
    public func start(_ name: String) async throws(LQXError) {
        try record("start", name)
        guard try vm(name).status.state.isActive == false else {
            throw LQXError(.failedPrecondition, "VM \(name) is already running")
        }
        transition(name, to: .running, event: .started)
    }

    /// Powers the VM off, or does nothing when it ignores ACPI (`setACPI`).
    public func requestShutdown(_ name: String) async throws(LQXError) {
        try record("requestShutdown", name)
        if try vm(name).acpi == .powerOff { transition(name, to: .shutOff, event: .stopped) }
    }

    /// Stops a running VM at once and emits `stopped`.
    public func forceStop(_ name: String) async throws(LQXError) {
        try record("forceStop", name)
        if try vm(name).status.state.isActive { transition(name, to: .shutOff, event: .stopped) }
    }

    /// Records the request (the VM stays running).
    public func reboot(_ name: String) async throws(LQXError) {
        try record("reboot", name)
        _ = try vm(name)
    }

    /// Pauses a running VM.
    public func pause(_ name: String) async throws(LQXError) {
        try record("pause", name)
        guard try vm(name).status.state == .running else {
            throw LQXError(.failedPrecondition, "VM \(name) is not running")
        }
        transition(name, to: .paused, event: .suspended)
    }

    /// Resumes a paused VM.
    public func resume(_ name: String) async throws(LQXError) {
        try record("resume", name)
        guard try vm(name).status.state == .paused else {
            throw LQXError(.failedPrecondition, "VM \(name) is not paused")
        }
        transition(name, to: .running, event: .resumed)
    }

    /// Forgets the VM (a running one only with `force`) and emits `undefined`.
    public func delete(_ name: String, force: Bool, deleteDisks: Bool) async throws(LQXError) {
        try record("delete", name, "force=\(force)", "deleteDisks=\(deleteDisks)")
        if try vm(name).status.state.isActive {
            guard force else {
                throw LQXError(.failedPrecondition, "VM \(name) is running; stop it first or delete with --force")
            }
        }
        _ = state.withLock { $0.vms.removeValue(forKey: name) }
        emit(DomainEvent(name: name, kind: .undefined))
    }

    /// The VM's record.
    public func status(_ name: String) async throws(LQXError) -> VMStatus { try vm(name).status }

    /// The VM's record, or nil.
    public func managedStatus(_ name: String) async throws(LQXError) -> VMStatus? {
        state.withLock { $0.vms[name]?.status }
    }

    /// Every VM, by name.
    public func list() async throws(LQXError) -> [VMStatus] {
        try record("list")
        return state.withLock { $0.vms.values.map(\.status) }.sorted { $0.name < $1.name }
    }

    /// Records a snapshot.
    public func createSnapshot(_ vm: String, name: String?, description: String) async throws(LQXError)
        -> SnapshotInfo
    {
        try record("createSnapshot", vm, name ?? "", description)
        let snapshot = SnapshotInfo(
            name: name ?? "snap-1", description: description, createdUnix: 0,
            state: try self.vm(vm).status.state.rawValue, current: true, parent: nil)
        state.withLock { $0.vms[vm]?.snapshots.append(snapshot) }
        return snapshot
    }

    /// Checks that the snapshot exists.
    public func revertSnapshot(_ vm: String, name: String) async throws(LQXError) {
        try record("revertSnapshot", vm, name)
        guard try self.vm(vm).snapshots.contains(where: { $0.name == name }) else {
            throw LQXError(.notFound, "VM \(vm) has no snapshot \(name)")
        }
    }

    /// Forgets a snapshot.
    public func deleteSnapshot(_ vm: String, name: String) async throws(LQXError) {
        try record("deleteSnapshot", vm, name)
        guard try self.vm(vm).snapshots.contains(where: { $0.name == name }) else {
            throw LQXError(.notFound, "VM \(vm) has no snapshot \(name)")
        }
        state.withLock { $0.vms[vm]?.snapshots.removeAll { $0.name == name } }
    }

    /// The VM's snapshots.
    public func snapshots(_ vm: String) async throws(LQXError) -> [SnapshotInfo] { try self.vm(vm).snapshots }

    /// Appends the disk to the VM's spec and returns the next vdX name.
    public func attachDisk(_ vm: String, _ disk: DiskSpec) async throws(LQXError) -> String {
        try record("attachDisk", vm, "\(disk.source)")
        let count = try self.vm(vm).status.spec?.disks.count ?? 0
        state.withLock { $0.vms[vm]?.status.spec?.disks.append(disk) }
        return "vd" + String(UnicodeScalar(UInt8(97 + count)))
    }

    /// Records the request.
    public func detachDisk(_ vm: String, target: String, deleteImage: Bool, timeout: Duration) async throws(LQXError) {
        try record("detachDisk", vm, target, "deleteImage=\(deleteImage)", "timeout=\(timeout)")
        _ = try self.vm(vm)
    }

    /// The VM's console log path.
    public func console(_ vm: String) async throws(LQXError) -> ConsoleInfo {
        try record("console", vm)
        return ConsoleInfo(serialLog: try self.vm(vm).status.consoleLog)
    }

    /// Reports progress once and removes the VM, or (`setMigrationHangs`) reports until cancelled and records `abortJob`.
    public func migrate(
        _ vm: String, _ request: MigrationRequest, progress: @escaping @Sendable (JobProgress) -> Void
    ) async throws(LQXError) {
        try record(
            "migrate", vm, request.destinationURI, request.migrationAddress ?? "-",
            "downtime=\(request.maxDowntimeMilliseconds)", "bandwidth=\(request.bandwidthMiBps)")
        guard try self.vm(vm).status.state == .running else {
            throw LQXError(.failedPrecondition, "VM \(vm) is not running; only a running VM migrates live")
        }
        progress(JobProgress(dataTotal: 100, dataProcessed: 50, dataRemaining: 50, elapsedMilliseconds: 1))
        if state.withLock({ $0.migrationHangs }) {
            // Reports progress like libvirt's job does, until cancelled.
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(20))
                progress(JobProgress(dataTotal: 100, dataProcessed: 60, dataRemaining: 40, elapsedMilliseconds: 2))
            }
            try? record("abortJob", vm)
            throw LQXError(.cancelled, "migration of \(vm) cancelled; the VM keeps running here")
        }
        _ = state.withLock { $0.vms.removeValue(forKey: vm) }
        emit(DomainEvent(name: vm, kind: .stopped))
        emit(DomainEvent(name: vm, kind: .undefined))
    }

    /// A fixed description of a TCG hypervisor.
    public func hypervisorInfo() async throws(LQXError) -> HypervisorInfo {
        try record("hypervisorInfo")
        return HypervisorInfo(
            uri: "fake:///", libvirtVersion: "0", hypervisorVersion: "0", domainType: "qemu", uefi: false,
            vhostVsock: false, machineTypes: ["pc"], capabilitiesXML: "<capabilities/>")
    }

    /// Whether the fake connection is up (`setAlive`).
    public var isAlive: Bool { state.withLock { $0.alive } }

    /// Events from now on.
    public func events() throws(LQXError) -> AsyncStream<DomainEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: DomainEvent.self, bufferingPolicy: .unbounded)
        let id = state.withLock { state -> Int in
            state.nextSubscriber += 1
            state.subscribers[state.nextSubscriber] = continuation
            return state.nextSubscriber
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    // MARK: helpers

    private func record(_ method: String, _ arguments: String...) throws(LQXError) {
        let failure = state.withLock { state -> LQXError? in
            state.calls.append(Call(method: method, arguments: arguments))
            return state.failures[method]
        }
        if let failure { throw failure }
    }

    private func vm(_ name: String) throws(LQXError) -> VM {
        guard let vm = state.withLock({ $0.vms[name] }) else { throw LQXError(.notFound, "no VM named \(name)") }
        return vm
    }

    private func transition(_ name: String, to newState: DomainState, event: DomainEvent.Kind) {
        let changed = state.withLock { state -> Bool in
            guard state.vms[name] != nil else { return false }
            state.vms[name]?.status.state = newState
            return true
        }
        if changed { emit(DomainEvent(name: name, kind: event)) }
    }

    private func emit(_ event: DomainEvent) {
        for subscriber in state.withLock({ Array($0.subscribers.values) }) { subscriber.yield(event) }
    }
}
