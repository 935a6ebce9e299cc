import LQXModel

/// The node's hypervisor: everything the node core asks of libvirt (the production backend,
/// module NodeLibvirt) or of a fake (module NodeCoreTesting) in unit tests.
///
/// Names are VM names (`VMSpec.name`). Every method reports failures as `LQXError` with a code
/// (`not_found`, `failed_precondition`, `invalid_spec`, `hypervisor`, `io`, `timeout`).
public protocol Hypervisor: Sendable {
    /// Validates the spec, checks what it refers to, prepares the VM's files and defines it
    /// (stopped). Nothing is left behind when any step fails.
    func create(_ spec: VMSpec) async throws(LQXError) -> VMStatus
    /// Starts a defined VM (`failed_precondition` when it runs already).
    func start(_ name: String) async throws(LQXError)
    /// Presses the ACPI power button; the guest decides whether and when to power off.
    func requestShutdown(_ name: String) async throws(LQXError)
    /// Stops the VM at once (pulls the plug); nothing happens when it is not running.
    func forceStop(_ name: String) async throws(LQXError)
    /// Asks the guest to reboot through ACPI.
    func reboot(_ name: String) async throws(LQXError)
    /// Pauses the VM's vCPUs.
    func pause(_ name: String) async throws(LQXError)
    /// Resumes a paused VM.
    func resume(_ name: String) async throws(LQXError)
    /// Deletes a stopped VM (a running one only with `force`) and, with `deleteDisks`, the disk
    /// images the node created for it. Disks given by path are never deleted.
    func delete(_ name: String, force: Bool, deleteDisks: Bool) async throws(LQXError)
    /// The status of a VM of this node (`not_found` otherwise).
    func status(_ name: String) async throws(LQXError) -> VMStatus
    /// The status of a VM this node manages, or nil for an unknown name or another tool's VM.
    func managedStatus(_ name: String) async throws(LQXError) -> VMStatus?
    /// Every VM of this node, by name.
    func list() async throws(LQXError) -> [VMStatus]

    /// Takes a snapshot (disks, and memory while the VM runs); a nil name gets a generated one.
    func createSnapshot(_ vm: String, name: String?, description: String) async throws(LQXError) -> SnapshotInfo
    /// Reverts the VM to a snapshot.
    func revertSnapshot(_ vm: String, name: String) async throws(LQXError)
    /// Deletes a snapshot.
    func deleteSnapshot(_ vm: String, name: String) async throws(LQXError)
    /// The VM's snapshots.
    func snapshots(_ vm: String) async throws(LQXError) -> [SnapshotInfo]

    /// Adds a disk (to the running VM too, when it runs) and returns its target name (vdb, sda…).
    func attachDisk(_ vm: String, _ disk: DiskSpec) async throws(LQXError) -> String
    /// Removes a disk; with `deleteImage`, deletes its image when the node created it. A running
    /// guest must release the device: waits up to `timeout` for that (`timeout` error after).
    func detachDisk(_ vm: String, target: String, deleteImage: Bool, timeout: Duration) async throws(LQXError)

    /// Where the VM's console can be read.
    func console(_ vm: String) async throws(LQXError) -> ConsoleInfo
    /// Live-migrates a running VM, calling `progress` about once a second. Cancelling the calling
    /// task aborts the hypervisor's migration job; the VM then keeps running here.
    func migrate(_ vm: String, _ request: MigrationRequest, progress: @escaping @Sendable (JobProgress) -> Void)
        async throws(LQXError)
    /// Makes this node ready to receive a live migration of the VM `spec` describes (its files
    /// here; the migration defines the domain). Only disks given by path can follow a VM.
    func prepareIncoming(_ spec: VMSpec) async throws(LQXError)
    /// What the hypervisor is and can do.
    func hypervisorInfo() async throws(LQXError) -> HypervisorInfo
    /// Whether the connection to the hypervisor works (for `/health`).
    var isAlive: Bool { get }

    /// Lifecycle events of every VM from now on, in order, until the stream's consumer stops.
    func events() throws(LQXError) -> AsyncStream<DomainEvent>
}

/// What the node reports about one VM.
public struct VMStatus: Sendable, Equatable, Codable {
    /// The VM's name.
    public var name: String
    /// The hypervisor's UUID of the VM (its stable id).
    public var uuid: String
    /// The hypervisor's state.
    public var state: DomainState
    /// Host end of the agent's virtio-serial port.
    public var agentSocket: String
    /// Everything the guest wrote to its serial console.
    public var consoleLog: String
    /// The spec the VM was created from, with attached and detached disks applied (nil for a VM
    /// whose spec file is missing or unreadable).
    public var spec: VMSpec?

    /// Creates a status.
    public init(
        name: String, uuid: String, state: DomainState, agentSocket: String, consoleLog: String, spec: VMSpec?
    ) {
        self.name = name
        self.uuid = uuid
        self.state = state
        self.agentSocket = agentSocket
        self.consoleLog = consoleLog
        self.spec = spec
    }
}

/// The state of a VM as the hypervisor reports it.
public enum DomainState: String, Sendable, Equatable, Codable {
    /// vCPUs run.
    case running
    /// Paused by the node.
    case paused
    /// The guest is shutting down.
    case shuttingDown = "shutting_down"
    /// No QEMU process.
    case shutOff = "shut_off"
    /// QEMU crashed.
    case crashed
    /// The guest suspended itself (S3/S4).
    case suspended
    /// Blocked on a resource.
    case blocked
    /// The hypervisor reported something else.
    case unknown

    /// Whether a QEMU process exists for the domain.
    public var isActive: Bool {
        switch self {
        case .running, .paused, .shuttingDown, .blocked, .suspended: true
        case .shutOff, .crashed, .unknown: false
        }
    }
}

/// A lifecycle change of a VM, as the hypervisor reports it.
public struct DomainEvent: Sendable, Equatable {
    /// What happened (libvirt's lifecycle event numbering).
    public enum Kind: Int32, Sendable, Equatable {
        /// Defined or redefined.
        case defined = 0
        /// The definition was removed.
        case undefined
        /// Started (also: migrated in, restored).
        case started
        /// Paused.
        case suspended
        /// Resumed.
        case resumed
        /// Stopped (also: migrated away, destroyed).
        case stopped
        /// The guest shut down.
        case shutdown
        /// The guest suspended itself.
        case pmSuspended
        /// QEMU crashed.
        case crashed
    }
    /// The VM's name.
    public var name: String
    /// What happened.
    public var kind: Kind
    /// The hypervisor's detail code for the kind (e.g. why it stopped).
    public var detail: Int32

    /// Creates an event.
    public init(name: String, kind: Kind, detail: Int32 = 0) {
        self.name = name
        self.kind = kind
        self.detail = detail
    }
}

/// Where a node keeps each VM's files.
public struct NodeLayout: Sendable, Equatable {
    /// Disk images, NVRAM and console logs: `<state>/vms/<name>/`.
    public var stateDirectory: String
    /// Sockets: `<run>/vms/<name>/agent.sock`.
    public var runDirectory: String

    /// Creates a layout.
    public init(stateDirectory: String, runDirectory: String) {
        self.stateDirectory = stateDirectory
        self.runDirectory = runDirectory
    }

    /// The VM's state directory.
    public func vmState(_ name: String) -> String { "\(stateDirectory)/vms/\(name)" }
    /// The VM's run directory (sockets).
    public func vmRun(_ name: String) -> String { "\(runDirectory)/vms/\(name)" }
}

/// A snapshot as the hypervisor reports it.
public struct SnapshotInfo: Sendable, Equatable, Codable {
    /// The snapshot's name.
    public var name: String
    /// Free text given at creation.
    public var description: String
    /// When it was taken, Unix seconds.
    public var createdUnix: Int64
    /// The domain's state when the snapshot was taken (`running` snapshots include memory).
    public var state: String
    /// Whether the VM runs from this snapshot now.
    public var current: Bool
    /// The snapshot it was taken from, if any.
    public var parent: String?

    /// Creates a snapshot description.
    public init(
        name: String, description: String, createdUnix: Int64, state: String, current: Bool, parent: String?
    ) {
        self.name = name
        self.description = description
        self.createdUnix = createdUnix
        self.state = state
        self.current = current
        self.parent = parent
    }
}

/// Progress of a running migration job.
public struct JobProgress: Sendable, Equatable {
    /// Bytes to transfer in all (grows while the guest dirties memory).
    public var dataTotal: UInt64
    /// Bytes transferred.
    public var dataProcessed: UInt64
    /// Bytes left.
    public var dataRemaining: UInt64
    /// Time since the job started.
    public var elapsedMilliseconds: UInt64

    /// Creates a progress report.
    public init(dataTotal: UInt64, dataProcessed: UInt64, dataRemaining: UInt64, elapsedMilliseconds: UInt64) {
        self.dataTotal = dataTotal
        self.dataProcessed = dataProcessed
        self.dataRemaining = dataRemaining
        self.elapsedMilliseconds = elapsedMilliseconds
    }
}

/// A live migration to another host, checked when created.
public struct MigrationRequest: Sendable, Equatable {
    /// The destination's hypervisor URI (e.g. `qemu+ssh://host/system`, `qemu+tcp://host/system`).
    public var destinationURI: String
    /// Host or IP where the destination takes the migration stream (nil: its host name).
    public var migrationAddress: String?
    /// Longest pause at switch-over (0: the hypervisor's default).
    public var maxDowntimeMilliseconds: UInt32
    /// Bandwidth limit in MiB/s (0: none).
    public var bandwidthMiBps: UInt32
    /// Every writable disk lies on storage this host declared shared (`--shared-storage`): the
    /// migration goes on where libvirt cannot tell from the file system that the destination
    /// sees the same files (set by the node from its declaration, never from a request).
    public var disksShared = false

    /// Checks the URI and the address (a host name or IP address, no scheme or port).
    public init(
        destinationURI: String, migrationAddress: String? = nil, maxDowntimeMilliseconds: UInt32 = 0,
        bandwidthMiBps: UInt32 = 0
    ) throws(LQXError) {
        guard !destinationURI.isEmpty else { throw LQXError(.invalidSpec, "destination URI is empty") }
        guard destinationURI.contains("://"), !destinationURI.contains(where: { $0.isWhitespace || $0 == "\0" })
        else {
            throw LQXError(
                .invalidSpec,
                "destination URI \(destinationURI.debugDescription) is not a libvirt URI (e.g. qemu+ssh://host/system)")
        }
        if let migrationAddress {
            guard !migrationAddress.isEmpty, migrationAddress.utf8.count <= 253,
                migrationAddress.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-:[]".contains($0)) })
            else {
                throw LQXError(
                    .invalidSpec, "migration address \(migrationAddress.debugDescription) is not a host name or IP")
            }
        }
        self.destinationURI = destinationURI
        self.migrationAddress = migrationAddress
        self.maxDowntimeMilliseconds = maxDowntimeMilliseconds
        self.bandwidthMiBps = bandwidthMiBps
    }

    /// Where the destination QEMU listens, as a migration URI (`tcp://ADDRESS`), or nil.
    public var migrationURI: String? { migrationAddress.map { "tcp://\($0)" } }
}

/// Where a VM's console can be read.
public struct ConsoleInfo: Sendable, Equatable, Codable {
    /// Everything the guest wrote to its serial port (appended across boots).
    public var serialLog: String
    /// A pseudo-terminal for an interactive console, when the domain has one.
    public var pty: String?
    /// host:port of a VNC display, when the domain has one.
    public var vnc: String?

    /// Creates console information.
    public init(serialLog: String, pty: String? = nil, vnc: String? = nil) {
        self.serialLog = serialLog
        self.pty = pty
        self.vnc = vnc
    }
}

/// What the node's hypervisor is and can do.
public struct HypervisorInfo: Sendable, Equatable, Codable {
    /// The connection URI.
    public var uri: String
    /// The library's version.
    public var libvirtVersion: String
    /// QEMU's version.
    public var hypervisorVersion: String
    /// `kvm` or `qemu` (TCG).
    public var domainType: String
    /// Whether UEFI firmware (OVMF) is installed.
    public var uefi: Bool
    /// Whether /dev/vhost-vsock exists.
    public var vhostVsock: Bool
    /// Machine types QEMU offers.
    public var machineTypes: [String]
    /// libvirt's capabilities document.
    public var capabilitiesXML: String

    /// Creates hypervisor information.
    public init(
        uri: String, libvirtVersion: String, hypervisorVersion: String, domainType: String, uefi: Bool,
        vhostVsock: Bool, machineTypes: [String], capabilitiesXML: String
    ) {
        self.uri = uri
        self.libvirtVersion = libvirtVersion
        self.hypervisorVersion = hypervisorVersion
        self.domainType = domainType
        self.uefi = uefi
        self.vhostVsock = vhostVsock
        self.machineTypes = machineTypes
        self.capabilitiesXML = capabilitiesXML
    }
}
