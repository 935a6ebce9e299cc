import LQXModel
import ServiceLifecycle

/// The kinds of object the store keeps.
public struct ObjectKind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// Its name in the store, e.g. `vm`.
    public var rawValue: String
    /// A kind by name.
    public init(rawValue: String) { self.rawValue = rawValue }
    /// The name.
    public var description: String { rawValue }

    /// `VirtualMachine`.
    public static let vm = ObjectKind(rawValue: "vm")
    /// `Node`.
    public static let node = ObjectKind(rawValue: "node")
    /// `Project`.
    public static let project = ObjectKind(rawValue: "project")
    /// An API token (hashed).
    public static let token = ObjectKind(rawValue: "token")
    /// A single-use node join token (hashed).
    public static let joinToken = ObjectKind(rawValue: "join-token")
    /// `ClusterSettings` (one record, id `cluster`).
    public static let settings = ObjectKind(rawValue: "settings")
}

/// One object as the store holds it: identity columns, what it takes from a node (so the store can
/// check capacity in the same transaction as a placement), and its body (JSON).
public struct StoredObject: Sendable, Equatable {
    /// Its kind.
    public var kind: ObjectKind
    /// Its id (unique per kind).
    public var id: String
    /// Its project ("" for cluster-wide objects).
    public var project: String
    /// Its name (unique per kind and project).
    public var name: String
    /// The revision of its last write (set by the store).
    public var version: Int64
    /// The node it takes resources from, or "".
    public var node: String
    /// vCPUs it takes (from `node` when placed; from its project's quota always).
    public var cpus: Int
    /// Memory it takes, MiB.
    public var memoryMiB: Int
    /// The object, encoded.
    public var body: String

    /// Creates a stored object.
    public init(
        kind: ObjectKind, id: String, project: String = "", name: String, version: Int64 = 0, node: String = "",
        cpus: Int = 0, memoryMiB: Int = 0, body: String
    ) {
        self.kind = kind
        self.id = id
        self.project = project
        self.name = name
        self.version = version
        self.node = node
        self.cpus = cpus
        self.memoryMiB = memoryMiB
        self.body = body
    }
}

/// One step of a transaction. Every step holds or the whole transaction is refused.
public enum StoreWrite: Sendable, Equatable {
    /// Adds an object; refused (`already_exists`) when its id or its (project, name) is taken.
    case create(StoredObject)
    /// Replaces an object written at `expected`; refused (`conflict`) when it changed since.
    case update(StoredObject, expected: Int64)
    /// Removes an object written at `expected`.
    case delete(ObjectKind, id: String, expected: Int64)
    /// Requires an object to be unchanged since `expected` without writing it.
    case require(ObjectKind, id: String, expected: Int64)
    /// Requires that the objects placed on `node` take at most these resources after the other
    /// steps (the node's row is locked, so concurrent placements on it are serialised).
    case capacity(node: String, cpus: Int, memoryMiB: Int)
    /// Requires that the VMs of `project` take at most these resources and count after the other
    /// steps (the project's row, id `projectID`, is locked, so concurrent creates are serialised).
    case quota(projectID: String, project: String, vcpus: Int, memoryMiB: Int, vms: Int)
}

/// An entry of the append-only event log of a VM or node.
public struct EventRecord: Sendable, Equatable, Codable {
    /// Position in the log (assigned by the store; grows).
    public var sequence: Int64
    /// When it happened, Unix milliseconds.
    public var timeUnixMs: Int64
    /// The object's kind.
    public var kind: String
    /// The object's id.
    public var objectID: String
    /// The object's name.
    public var objectName: String
    /// The object's project.
    public var project: String
    /// `Normal` or `Warning`.
    public var type: String
    /// CamelCase, e.g. `Scheduled`.
    public var reason: String
    /// For people.
    public var message: String

    /// Creates an event (its sequence is assigned when it is stored).
    public init(
        sequence: Int64 = 0, timeUnixMs: Int64, kind: ObjectKind, objectID: String, objectName: String,
        project: String, type: String = "Normal", reason: String, message: String
    ) {
        self.sequence = sequence
        self.timeUnixMs = timeUnixMs
        self.kind = kind.rawValue
        self.objectID = objectID
        self.objectName = objectName
        self.project = project
        self.type = type
        self.reason = reason
        self.message = message
    }
}

/// An entry of the audit log: who did what in which VM, and how it ended.
public struct AuditRecord: Sendable, Equatable, Codable {
    /// Position in the log.
    public var sequence: Int64
    /// When, Unix milliseconds.
    public var timeUnixMs: Int64
    /// The token's user.
    public var user: String
    /// The VM's project.
    public var project: String
    /// The VM's name.
    public var vm: String
    /// `exec`, `upload`, `download`, `start`, `stop`, …
    public var action: String
    /// argv, path or options.
    public var detail: String
    /// `ok`, an exit status, or the error.
    public var result: String

    /// Creates a record (its sequence is assigned when it is stored).
    public init(
        sequence: Int64 = 0, timeUnixMs: Int64, user: String, project: String, vm: String, action: String,
        detail: String, result: String
    ) {
        self.sequence = sequence
        self.timeUnixMs = timeUnixMs
        self.user = user
        self.project = project
        self.vm = vm
        self.action = action
        self.detail = detail
        self.result = result
    }
}

/// Which log entries to read: after a sequence, optionally of one object, at most `limit`.
public struct LogQuery: Sendable, Equatable {
    /// Entries with a larger sequence.
    public var after: Int64
    /// Only this object's (event log: its id; audit log: the VM's name).
    public var object: String?
    /// Only this project's.
    public var project: String?
    /// At most this many, oldest first.
    public var limit: Int

    /// Creates a query.
    public init(after: Int64 = 0, object: String? = nil, project: String? = nil, limit: Int = 1000) {
        self.after = after
        self.object = object
        self.project = project
        self.limit = limit
    }
}

/// What the control plane keeps: objects with versions, the event log and the audit log, written
/// in transactions. One contract, two implementations (`SQLiteStore`, `PostgresStore`), one
/// test suite. A commit that returned is durable (it survives `kill -9`).
public protocol Store: Service {
    /// Applies every write, appends the events and audit records, all or nothing; returns the new
    /// revision (the version of every object written).
    @discardableResult
    func commit(_ writes: [StoreWrite], events: [EventRecord], audit: [AuditRecord]) async throws(LQXError) -> Int64
    /// The revision of the last commit (0 for an empty store); it grows by one per commit.
    func revision() async throws(LQXError) -> Int64
    /// The object of that id, or nil.
    func object(_ kind: ObjectKind, id: String) async throws(LQXError) -> StoredObject?
    /// The object of that name in that project, or nil.
    func object(_ kind: ObjectKind, project: String, name: String) async throws(LQXError) -> StoredObject?
    /// Every object of a kind (in one project when given), ordered by project and name.
    func objects(_ kind: ObjectKind, project: String?) async throws(LQXError) -> [StoredObject]
    /// Event log entries.
    func events(_ query: LogQuery) async throws(LQXError) -> [EventRecord]
    /// Audit log entries.
    func audit(_ query: LogQuery) async throws(LQXError) -> [AuditRecord]
}

extension Store {
    /// Applies writes without log entries.
    @discardableResult
    public func commit(_ writes: [StoreWrite]) async throws(LQXError) -> Int64 {
        try await commit(writes, events: [], audit: [])
    }
}

/// The current version of an object a stale write was refused for: the `cause` of a `conflict`.
public struct StaleVersion: Error, Sendable, Equatable, CustomStringConvertible {
    /// The object's current version (0 when it no longer exists).
    public var current: Int64
    /// Creates the cause.
    public init(current: Int64) { self.current = current }
    /// `current resource_version is N`.
    public var description: String { current == 0 ? "it no longer exists" : "current resource_version is \(current)" }
}
