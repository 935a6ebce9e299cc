import LQXModel

/// Whether and how a VM is restarted on another node when its node fails (docs/ha.md).
public struct HAPolicy: Sendable, Equatable, Codable {
    /// Restarted elsewhere when its node is fenced; counted by admission control.
    public var enabled: Bool
    /// Restarts go highest first; admission control packs in this order.
    public var priority: Priority
    /// At most this many restarts by HA within `restartWindowSeconds` (then it stays down, with
    /// a condition saying why, until an operator starts it).
    public var maxRestarts: Int
    /// The window `maxRestarts` counts in.
    public var restartWindowSeconds: Int

    /// The most restarts a window may allow.
    public static let maxRestartsLimit = 100
    /// The default restarts per window.
    public static let defaultMaxRestarts = 3
    /// The default window: one hour.
    public static let defaultWindowSeconds = 3600

    /// A policy (by default: HA off, medium priority, 3 restarts per hour).
    public init(
        enabled: Bool = false, priority: Priority = .medium, maxRestarts: Int = HAPolicy.defaultMaxRestarts,
        restartWindowSeconds: Int = HAPolicy.defaultWindowSeconds
    ) {
        self.enabled = enabled
        self.priority = priority
        self.maxRestarts = maxRestarts
        self.restartWindowSeconds = restartWindowSeconds
    }

    /// Restart priority, lowest to highest.
    public enum Priority: String, Sendable, Equatable, Codable, CaseIterable, Comparable {
        /// Restarted last.
        case lowest
        /// Before lowest.
        case low
        /// The default.
        case medium
        /// Before medium.
        case high
        /// Restarted first.
        case highest

        /// 0 (lowest) … 4 (highest).
        public var rank: Int { Self.allCases.firstIndex(of: self) ?? 0 }

        /// Orders by rank.
        public static func < (lhs: Priority, rhs: Priority) -> Bool { lhs.rank < rhs.rank }

        /// Parses `lowest|low|medium|high|highest`.
        public init(parsing text: String) throws(LQXError) {
            guard let priority = Priority(rawValue: text.lowercased()) else {
                throw LQXError(
                    .invalidSpec,
                    "ha.priority: one of \(Priority.allCases.map(\.rawValue).joined(separator: ", ")) (got \(text))")
            }
            self = priority
        }
    }

    /// Checks the bounds (a clear error naming the field).
    public func validate() throws(LQXError) {
        guard (0...Self.maxRestartsLimit).contains(maxRestarts) else {
            throw LQXError(.invalidSpec, "ha.max_restarts: 0 to \(Self.maxRestartsLimit) (got \(maxRestarts))")
        }
        guard (60...604_800).contains(restartWindowSeconds) else {
            throw LQXError(
                .invalidSpec, "ha.restart_window_seconds: 60 to 604800 (one week) (got \(restartWindowSeconds))")
        }
    }
}

/// Cluster-wide settings (`lqx cluster get`, `lqx cluster set KEY VALUE`), one stored record.
public struct ClusterSettings: Sendable, Equatable, Codable {
    /// How many host failures admission control keeps room for (0: it admits every HA VM).
    public var haTolerateFailures: Int
    /// The record's version (0: never written).
    public var resourceVersion: Int64

    /// The most host failures admission control can plan for.
    public static let tolerateFailuresLimit = 8

    /// The defaults: admission control off.
    public init(haTolerateFailures: Int = 0) {
        self.haTolerateFailures = haTolerateFailures
        resourceVersion = 0
    }

    /// Every key `set` takes, with what it means.
    public static let keys: [(key: String, help: String)] = [
        (
            "ha.tolerate-failures",
            "host failures admission control keeps room for: an HA VM is not started when some set of that many node failures would leave an HA VM without room (0: off)"
        )
    ]

    /// The settings with `key` set to `value` (a clear error for an unknown key or a bad value).
    public func setting(_ key: String, to value: String) throws(LQXError) -> ClusterSettings {
        var settings = self
        switch key {
        case "ha.tolerate-failures":
            guard let count = Int(value), (0...Self.tolerateFailuresLimit).contains(count) else {
                throw LQXError(
                    .invalidSpec,
                    "ha.tolerate-failures: a whole number 0 to \(Self.tolerateFailuresLimit) (got \(value))")
            }
            settings.haTolerateFailures = count
        default:
            throw LQXError(
                .invalidSpec,
                "no cluster setting \(key); settings: \(Self.keys.map(\.key).joined(separator: ", "))")
        }
        return settings
    }

    /// Each key with its value, as `get` shows them.
    public var values: [(key: String, value: String)] {
        [("ha.tolerate-failures", String(haTolerateFailures))]
    }

    private enum CodingKeys: String, CodingKey { case haTolerateFailures }

    /// Decodes the stored record (keys added later default when absent).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        haTolerateFailures = try container.decodeIfPresent(Int.self, forKey: .haTolerateFailures) ?? 0
        resourceVersion = 0
    }

    /// Encodes the stored record (without its version, which the store keeps).
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(haTolerateFailures, forKey: .haTolerateFailures)
    }
}
