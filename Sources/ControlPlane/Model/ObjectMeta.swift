import LQXModel

/// What every stored object carries (MODEL.md): a server-assigned id, a name unique per project
/// (per cluster for nodes), its project, labels and the version of its last write.
public struct ObjectMeta: Sendable, Equatable, Codable {
    /// Assigned by the control plane when the object is created; never changes.
    public var id: String
    /// Unique per project and kind.
    public var name: String
    /// The project (empty for cluster-wide objects such as nodes).
    public var project: String
    /// Key/value labels.
    public var labels: Labels
    /// The store revision of the object's last write: a write must carry the one it read.
    public var resourceVersion: Int64
    /// When it was created, Unix milliseconds.
    public var createdUnixMs: Int64
    /// When its deletion was asked for (it is removed once its node let it go), or nil.
    public var deletionRequestedUnixMs: Int64?

    /// Metadata of an object not yet stored (id, version and creation time are assigned then).
    public init(
        id: String = "", name: String, project: String = "", labels: Labels = [:], resourceVersion: Int64 = 0,
        createdUnixMs: Int64 = 0
    ) {
        self.id = id
        self.name = name
        self.project = project
        self.labels = labels
        self.resourceVersion = resourceVersion
        self.createdUnixMs = createdUnixMs
    }
}

/// A condition on a VM or node: a named fact with its reason and a message for people
/// (`Unschedulable`, `AgentConnected`, …).
public struct Condition: Sendable, Equatable, Codable {
    /// The condition's name, e.g. `Scheduled`.
    public var type: String
    /// Whether it holds.
    public var status: Bool
    /// A CamelCase reason, e.g. `InsufficientMemory`.
    public var reason: String
    /// A sentence for people.
    public var message: String
    /// When `status` last changed, Unix milliseconds.
    public var lastTransitionUnixMs: Int64

    /// Creates a condition.
    public init(type: String, status: Bool, reason: String, message: String, lastTransitionUnixMs: Int64) {
        self.type = type
        self.status = status
        self.reason = reason
        self.message = message
        self.lastTransitionUnixMs = lastTransitionUnixMs
    }
}

extension [Condition] {
    /// Sets a condition, keeping its transition time when its status did not change.
    public mutating func set(_ condition: Condition) {
        if let index = firstIndex(where: { $0.type == condition.type }) {
            var updated = condition
            if self[index].status == condition.status {
                updated.lastTransitionUnixMs = self[index].lastTransitionUnixMs
            }
            self[index] = updated
        } else {
            append(condition)
        }
    }

    /// The condition of that type, if present.
    public subscript(type: String) -> Condition? { first { $0.type == type } }
}
