import LQXModel

/// A host as the cluster stores it: its spec (labels, taints, schedulable, overcommit, reserved,
/// roles) and what it reported.
public struct Node: Sendable, Equatable, Codable {
    /// Identity (name is the host's name; project is empty), labels live in `spec`.
    public var meta: ObjectMeta
    /// Owned by admins.
    public var spec: NodeSpec
    /// Reported by the node and judged by the control plane.
    public var status: Status

    /// Creates a node record.
    public init(meta: ObjectMeta, spec: NodeSpec = NodeSpec(), status: Status = Status()) {
        self.meta = meta
        self.spec = spec
        self.status = status
    }

    /// A node's phase (MODEL.md): PENDING → READY ↔ NOT_READY; MAINTENANCE → DRAINING → OFFLINE.
    public enum Phase: String, Sendable, Equatable, Codable, CaseIterable {
        /// Joined, no heartbeat yet.
        case pending = "PENDING"
        /// Heartbeats arrive; VMs may be placed.
        case ready = "READY"
        /// No heartbeat within the grace period.
        case notReady = "NOT_READY"
        /// Its VMs are being moved away.
        case draining = "DRAINING"
        /// Drained; nothing is placed on it.
        case maintenance = "MAINTENANCE"
        /// Removed from service.
        case offline = "OFFLINE"
    }

    /// Whole resources of the host.
    public struct Resources: Sendable, Equatable, Codable {
        /// Logical CPUs.
        public var cpus: Int
        /// Memory in MiB.
        public var memoryMiB: Int

        /// Creates a resource amount.
        public init(cpus: Int = 0, memoryMiB: Int = 0) {
            self.cpus = cpus
            self.memoryMiB = memoryMiB
        }
    }

    /// What the node reported and the control plane decided about it.
    public struct Status: Sendable, Equatable, Codable {
        /// Its phase.
        public var phase: Phase
        /// Where its node API listens (`HOST:PORT`).
        public var address: String
        /// The host's CPUs and memory.
        public var capacity: Resources
        /// CPU model, topology, hypervisor.
        public var inventory: Inventory
        /// The daemon's version.
        public var version: String
        /// Conditions (`Ready`, …).
        public var conditions: [Condition]
        /// Where other nodes live-migrate VMs to it, as it last reported (nil: it takes none).
        public var migration: MigrationTarget?
        /// The shared storages it declares, as it last reported.
        public var sharedStorage: [SharedStorage] = []

        /// A node that has not reported.
        public init(
            phase: Phase = .pending, address: String = "", capacity: Resources = Resources(),
            inventory: Inventory = Inventory(), version: String = "", conditions: [Condition] = []
        ) {
            self.phase = phase
            self.address = address
            self.capacity = capacity
            self.inventory = inventory
            self.version = version
            self.conditions = conditions
        }

        enum CodingKeys: String, CodingKey {
            case phase, address, capacity, inventory, version, conditions, migration, sharedStorage
        }

        /// Decodes a stored status (`sharedStorage` absent in records written before it existed).
        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            phase = try container.decode(Phase.self, forKey: .phase)
            address = try container.decode(String.self, forKey: .address)
            capacity = try container.decode(Resources.self, forKey: .capacity)
            inventory = try container.decode(Inventory.self, forKey: .inventory)
            version = try container.decode(String.self, forKey: .version)
            conditions = try container.decode([Condition].self, forKey: .conditions)
            migration = try container.decodeIfPresent(MigrationTarget.self, forKey: .migration)
            sharedStorage = try container.decodeIfPresent([SharedStorage].self, forKey: .sharedStorage) ?? []
        }
    }

    /// How other nodes reach a node's libvirt for live migration (`lqx-node --migration-uri`,
    /// `--migration-address`).
    public struct MigrationTarget: Sendable, Equatable, Codable {
        /// The libvirt URI (e.g. `qemu+tls://host-b/system`).
        public var uri: String
        /// The host the migration stream goes to (empty: libvirt's choice).
        public var address: String

        /// A target; `uri` must be a libvirt URI and both are bounded (they come from a node).
        public init(uri: String, address: String) throws(LQXError) {
            guard uri.count <= 1024, uri.contains("://"), !uri.unicodeScalars.contains(where: { $0.value < 0x21 })
            else {
                throw LQXError(.invalidSpec, "migration_uri: a libvirt URI of at most 1024 characters without spaces")
            }
            guard address.count <= 255, !address.unicodeScalars.contains(where: { $0.value < 0x21 || $0 == "/" })
            else {
                throw LQXError(.invalidSpec, "migration_address: a host name or IP address")
            }
            self.uri = uri
            self.address = address
        }
    }

    /// Hardware and hypervisor facts.
    public struct Inventory: Sendable, Equatable, Codable {
        /// CPU model name.
        public var cpuModel: String
        /// Sockets, cores per socket, threads per core.
        public var sockets: Int, cores: Int, threads: Int
        /// `kvm` or `qemu` (TCG).
        public var hypervisor: String
        /// Whether vhost-vsock exists.
        public var vsock: Bool
        /// Whether UEFI firmware (OVMF) is installed.
        public var uefi: Bool

        /// Creates an inventory.
        public init(
            cpuModel: String = "", sockets: Int = 0, cores: Int = 0, threads: Int = 0, hypervisor: String = "",
            vsock: Bool = false, uefi: Bool = false
        ) {
            self.cpuModel = cpuModel
            self.sockets = sockets
            self.cores = cores
            self.threads = threads
            self.hypervisor = hypervisor
            self.vsock = vsock
            self.uefi = uefi
        }
    }

    /// What VMs may use: (capacity − reserved) × overcommit.
    public var allocatable: Resources {
        let cpus = Double(max(0, status.capacity.cpus - spec.reservedCPUs)) * spec.cpuOvercommit
        let memory = Double(max(0, status.capacity.memoryMiB - spec.reservedMemoryMiB)) * spec.memoryOvercommit
        return Resources(cpus: Int(cpus.rounded(.down)), memoryMiB: Int(memory.rounded(.down)))
    }
}

/// A tenant: VMs belong to one; quotas bound what its VMs may ask for in all.
public struct Project: Sendable, Equatable, Codable {
    /// Identity.
    public var meta: ObjectMeta
    /// Limits; nil means unlimited.
    public var quota: Quota

    /// Creates a project.
    public init(meta: ObjectMeta, quota: Quota = Quota()) {
        self.meta = meta
        self.quota = quota
    }

    /// Upper bounds of a project's VMs taken together.
    public struct Quota: Sendable, Equatable, Codable {
        /// vCPUs of all its VMs.
        public var vcpus: Int?
        /// Memory of all its VMs, MiB.
        public var memoryMiB: Int?
        /// Number of VMs.
        public var vms: Int?

        /// Creates a quota (nil: unlimited).
        public init(vcpus: Int? = nil, memoryMiB: Int? = nil, vms: Int? = nil) {
            self.vcpus = vcpus
            self.memoryMiB = memoryMiB
            self.vms = vms
        }
    }
}
