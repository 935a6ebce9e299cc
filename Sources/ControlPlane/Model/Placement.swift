import LQXModel

/// Where a VM may run and how the scheduler should prefer nodes (MODEL.md: placement).
public struct Placement: Sendable, Equatable, Codable {
    /// Only nodes carrying every one of these labels.
    public var nodeSelector: Labels
    /// Taints the VM tolerates.
    public var tolerations: [Toleration]
    /// Groups whose VMs this one should run beside.
    public var affinity: [GroupRule]
    /// Groups whose VMs this one should run apart from.
    public var antiAffinity: [GroupRule]
    /// Spread or pack; nil takes the cluster's strategy.
    public var strategy: Strategy?

    /// No constraints.
    public init(
        nodeSelector: Labels = [:], tolerations: [Toleration] = [], affinity: [GroupRule] = [],
        antiAffinity: [GroupRule] = [], strategy: Strategy? = nil
    ) {
        self.nodeSelector = nodeSelector
        self.tolerations = tolerations
        self.affinity = affinity
        self.antiAffinity = antiAffinity
        self.strategy = strategy
    }

    /// How nodes that fit are ranked.
    public enum Strategy: String, Sendable, Equatable, Codable, CaseIterable {
        /// Prefer the node with the most room left (the default).
        case spread
        /// Prefer the fullest node that fits.
        case pack
    }

    /// Membership of a group, with how strictly it binds.
    public struct GroupRule: Sendable, Hashable, Codable {
        /// The group's name (a label key's syntax).
        public var group: String
        /// A hard rule is a filter; a soft one only moves the score.
        public var hard: Bool

        /// Creates a rule.
        public init(group: String, hard: Bool = true) {
            self.group = group
            self.hard = hard
        }
    }

    /// A taint the VM accepts: `key` with any value when `value` is nil, every effect when
    /// `effect` is nil.
    public struct Toleration: Sendable, Hashable, Codable {
        /// The taint's key.
        public var key: String
        /// The taint's value, or nil for any.
        public var value: String?
        /// The taint's effect, or nil for any.
        public var effect: NodeSpec.Taint.Effect?

        /// Creates a toleration.
        public init(key: String, value: String? = nil, effect: NodeSpec.Taint.Effect? = nil) {
            self.key = key
            self.value = value
            self.effect = effect
        }

        /// Whether it tolerates `taint`.
        public func tolerates(_ taint: NodeSpec.Taint) -> Bool {
            key == taint.key && (value == nil || value == taint.value) && (effect == nil || effect == taint.effect)
        }

        /// Parses `KEY[=VALUE][:EFFECT]` (effect `NoSchedule`, `PreferNoSchedule`, `NoExecute`, or
        /// the API's `NO_SCHEDULE` forms).
        public init(parsing text: String) throws(LQXError) {
            let (key, value, effect) = try NodeSpec.Taint.parse(text, field: "toleration")
            self.init(key: key, value: value, effect: effect)
        }
    }

    /// Checks group names and tolerations; a group may not be both affine and anti-affine.
    public func validate() throws(LQXError) {
        for (field, rules) in [("affinity", affinity), ("anti_affinity", antiAffinity)] {
            for rule in rules { try Labels.validate(key: rule.group, field: field) }
            guard Set(rules.map(\.group)).count == rules.count else {
                throw LQXError(.invalidSpec, "\(field): a group is listed twice")
            }
        }
        let both = Set(affinity.map(\.group)).intersection(antiAffinity.map(\.group))
        if let group = both.sorted().first {
            throw LQXError(.invalidSpec, "placement: group \(group) is in both affinity and anti_affinity")
        }
        for toleration in tolerations { try Labels.validate(key: toleration.key, field: "tolerations") }
    }
}
