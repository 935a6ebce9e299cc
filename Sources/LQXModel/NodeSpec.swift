/// What an operator wants of a node (MODEL.md): scheduling labels and taints, whether new VMs may
/// be placed on it, overcommit and the resources kept for the host itself.
public struct NodeSpec: Sendable, Equatable, Codable {
    /// Labels that VM node selectors match.
    public var labels: Labels
    /// Repel VMs that do not tolerate them.
    public var taints: [Taint]
    /// False: cordoned (no new VMs; running ones stay).
    public var schedulable: Bool
    /// vCPUs that may be allocated per host CPU thread (≥ 1).
    public var cpuOvercommit: Double
    /// Memory that may be allocated per byte of host memory (≥ 1).
    public var memoryOvercommit: Double
    /// CPU threads kept for the host.
    public var reservedCPUs: Int
    /// Memory kept for the host, MiB.
    public var reservedMemoryMiB: Int
    /// What the node is for.
    public var roles: Set<Role>

    /// What a node may be used for.
    public enum Role: String, Sendable, Hashable, Codable, CaseIterable {
        /// Runs VMs.
        case compute
        /// Holds shared storage.
        case storage
        /// Runs a control-plane replica.
        case controlPlane = "control-plane"
    }

    /// A mark that repels VMs without a matching toleration.
    public struct Taint: Sendable, Hashable, Codable {
        /// The label-style key.
        public var key: String
        /// The value (may be empty).
        public var value: String
        /// What the taint does to VMs that do not tolerate it.
        public var effect: Effect

        /// What a taint does.
        public enum Effect: String, Sendable, Hashable, Codable, CaseIterable {
            /// New VMs are not placed here.
            case noSchedule = "NO_SCHEDULE"
            /// New VMs go here only when nothing else fits.
            case preferNoSchedule = "PREFER_NO_SCHEDULE"
            /// Running VMs are moved away too.
            case noExecute = "NO_EXECUTE"
        }

        /// Creates a taint.
        public init(key: String, value: String = "", effect: Effect) {
            self.key = key
            self.value = value
            self.effect = effect
        }
    }

    /// Creates a node spec (defaults: schedulable compute node, no overcommit of memory, 4× of CPU).
    public init(
        labels: Labels = [:], taints: [Taint] = [], schedulable: Bool = true, cpuOvercommit: Double = 4,
        memoryOvercommit: Double = 1, reservedCPUs: Int = 0, reservedMemoryMiB: Int = 1024,
        roles: Set<Role> = [.compute]
    ) {
        self.labels = labels
        self.taints = taints
        self.schedulable = schedulable
        self.cpuOvercommit = cpuOvercommit
        self.memoryOvercommit = memoryOvercommit
        self.reservedCPUs = reservedCPUs
        self.reservedMemoryMiB = reservedMemoryMiB
        self.roles = roles
    }

    /// Checks every field: a clear error naming the field.
    public func validate() throws(LQXError) {
        for (index, taint) in taints.enumerated() {
            try Labels.validate(key: taint.key, field: "taints[\(index)]")
            try Labels.validate(value: taint.value, key: taint.key, field: "taints[\(index)]")
        }
        let keys = taints.map { "\($0.key)=\($0.value):\($0.effect.rawValue)" }
        guard Set(keys).count == keys.count else { throw LQXError(.invalidSpec, "taints: a taint is listed twice") }
        for (field, ratio) in [("cpu_overcommit", cpuOvercommit), ("memory_overcommit", memoryOvercommit)] {
            guard ratio.isFinite, ratio >= 1, ratio <= 64 else {
                throw LQXError(.invalidSpec, "\(field) must be between 1 and 64 (got \(ratio))")
            }
        }
        guard reservedCPUs >= 0 else { throw LQXError(.invalidSpec, "reserved_cpus must be 0 or more") }
        guard reservedMemoryMiB >= 0 else { throw LQXError(.invalidSpec, "reserved_memory_mib must be 0 or more") }
        guard !roles.isEmpty else { throw LQXError(.invalidSpec, "roles: a node needs at least one role") }
    }
}

extension NodeSpec.Taint {
    /// Parses `KEY[=VALUE][:EFFECT]` (tolerations, `lqx vm create --toleration`); errors name
    /// `field`.
    public static func parse(_ text: String, field: String) throws(LQXError) -> (
        key: String, value: String?, effect: Effect?
    ) {
        var rest = Substring(text)
        var effect: Effect?
        if let colon = rest.lastIndex(of: ":") {
            effect = try Effect(parsing: String(rest[rest.index(after: colon)...]))
            rest = rest[..<colon]
        }
        var value: String?
        if let eq = rest.firstIndex(of: "=") {
            value = String(rest[rest.index(after: eq)...])
            rest = rest[..<eq]
        }
        try Labels.validate(key: String(rest), field: field)
        if let value { try Labels.validate(value: value, key: String(rest), field: field) }
        return (String(rest), value, effect)
    }
}

extension NodeSpec.Taint.Effect {
    /// Parses `NoSchedule` / `NO_SCHEDULE`, `PreferNoSchedule` / `PREFER_NO_SCHEDULE`,
    /// `NoExecute` / `NO_EXECUTE`.
    public init(parsing text: String) throws(LQXError) {
        switch text {
        case "NoSchedule", "NO_SCHEDULE": self = .noSchedule
        case "PreferNoSchedule", "PREFER_NO_SCHEDULE": self = .preferNoSchedule
        case "NoExecute", "NO_EXECUTE": self = .noExecute
        default:
            throw LQXError(
                .invalidSpec, "taint effect \(text.debugDescription) must be NoSchedule, PreferNoSchedule or NoExecute")
        }
    }

    /// `NoSchedule`, `PreferNoSchedule`, `NoExecute`.
    public var displayName: String {
        switch self {
        case .noSchedule: "NoSchedule"
        case .preferNoSchedule: "PreferNoSchedule"
        case .noExecute: "NoExecute"
        }
    }
}
