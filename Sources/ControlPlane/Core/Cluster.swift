import Foundation
import LQXModel
import Logging
import Synchronization

/// The control plane's core: typed commands on VMs, nodes, projects and tokens, each checked
/// against the caller's role, validated, and written to the store in one transaction with its
/// event. No transport: the API layer decodes requests into these calls.
public final class Cluster: Sendable {
    /// Typed store access.
    public let repository: Repository
    /// Every commit of this cluster's store, announced.
    public let feed = ChangeFeed()
    /// Every node report that changed what a node runs, announced (the revision is a counter).
    public let observed = ChangeFeed()
    /// The scheduler (with the cluster's strategy).
    public let scheduler: Scheduler
    /// How long a node may go without a heartbeat before it is NOT_READY.
    public let heartbeatGrace: Duration
    let now: @Sendable () -> Int64
    let logger: Logger
    let heartbeats = Mutex<[String: Int64]>([:])
    let observations = Mutex<[String: NodeObservation]>([:])
    /// Placements decided and not yet committed, by VM id: later decisions count them, so
    /// concurrent creates spread over the nodes instead of all racing for the best one.
    let reservations = Mutex<[String: (node: String, request: SchedulingRequest)]>([:])
    /// Which nodes have the paths VMs name.
    let paths = NodePaths()
    /// Failed bearer and join tokens per client address (the API and node layers consult it).
    public let authFailures: FailureLimiter

    /// How often a command retries a commit that lost a race (another writer changed what it read).
    static let attempts = 8
    /// The project every cluster starts with.
    public static let defaultProject = "default"

    /// A cluster over `store`; `now` gives Unix milliseconds (a test clock in tests).
    public init(
        store: any Store, scheduler: Scheduler = Scheduler(), heartbeatGrace: Duration = .seconds(15),
        logger: Logger, now: @escaping @Sendable () -> Int64 = Cluster.wallClock
    ) {
        repository = Repository(store: CachedStore(store, feed: feed))
        self.scheduler = scheduler
        self.heartbeatGrace = heartbeatGrace
        self.logger = logger
        self.now = now
        authFailures = FailureLimiter(now: now)
    }

    /// Unix milliseconds from the system clock.
    @Sendable public static func wallClock() -> Int64 {
        Int64((Date().timeIntervalSince1970 * 1000).rounded())
    }

    /// The store.
    var store: any Store { repository.store }

    /// Creates the default project if the cluster has none (first start).
    public func bootstrap() async throws(LQXError) {
        if try await repository.project(named: Self.defaultProject) == nil {
            do {
                _ = try await createProject(Self.defaultProject, quota: Project.Quota(), by: .system)
            } catch  where error.code == .alreadyExists {
                // Another replica made it first.
            }
        }
    }

    /// An event about an object.
    func event(
        _ kind: ObjectKind, _ meta: ObjectMeta, _ reason: String, _ message: String, warning: Bool = false
    ) -> EventRecord {
        EventRecord(
            timeUnixMs: now(), kind: kind, objectID: meta.id, objectName: meta.name, project: meta.project,
            type: warning ? "Warning" : "Normal", reason: reason, message: message)
    }

    /// Runs `body` again while it fails because another writer won a race.
    func retrying<T>(_ body: () async throws(LQXError) -> T) async throws(LQXError) -> T {
        var attempt = 0
        while true {
            do {
                return try await body()
            } catch  where error.code == .conflict && attempt < Self.attempts {
                attempt += 1
            }
        }
    }

    // MARK: projects

    /// Creates a project (admins).
    public func createProject(_ name: String, quota: Project.Quota, by principal: Principal) async throws(LQXError)
        -> Project
    {
        try principal.require(.admin, to: "create projects")
        try Labels.validate(key: name, field: "project")
        try Self.validate(quota)
        let project = Project(
            meta: ObjectMeta(id: VMID.random().rawValue, name: name, createdUnixMs: now()), quota: quota)
        let version = try await store.commit(
            [.create(try Repository.stored(project))],
            events: [event(.project, project.meta, "Created", "project created")],
            audit: [])
        var stored = project
        stored.meta.resourceVersion = version
        return stored
    }

    /// Sets a project's quota (admins).
    public func setQuota(_ name: String, _ quota: Project.Quota, by principal: Principal) async throws(LQXError)
        -> Project
    {
        try principal.require(.admin, to: "set quotas")
        try Self.validate(quota)
        return try await retrying { () async throws(LQXError) -> Project in
            guard var project = try await repository.project(named: name) else {
                throw LQXError(.notFound, "project \(name) does not exist")
            }
            let expected = project.meta.resourceVersion
            project.quota = quota
            project.meta.resourceVersion = try await store.commit(
                [.update(try Repository.stored(project), expected: expected)],
                events: [event(.project, project.meta, "QuotaChanged", Self.describe(quota))], audit: [])
            return project
        }
    }

    /// Every project the principal may see.
    public func projects(by principal: Principal) async throws(LQXError) -> [Project] {
        try principal.require(.viewer, project: principal.project, to: "list projects")
        return try await repository.projects().filter { principal.project.isEmpty || $0.meta.name == principal.project }
    }

    static func validate(_ quota: Project.Quota) throws(LQXError) {
        for (field, value) in [("vcpus", quota.vcpus), ("memory_mib", quota.memoryMiB), ("vms", quota.vms)] {
            if let value, value < 0 { throw LQXError(.invalidSpec, "quota.\(field) must be 0 or more (got \(value))") }
        }
    }

    static func describe(_ quota: Project.Quota) -> String {
        func text(_ value: Int?) -> String { value.map(String.init) ?? "unlimited" }
        return "quota: vcpus \(text(quota.vcpus)), memory \(text(quota.memoryMiB)) MiB, vms \(text(quota.vms))"
    }

    // MARK: events and audit

    /// Event log entries (of one VM when `vm` is given) the principal may see.
    public func events(_ query: LogQuery, by principal: Principal) async throws(LQXError) -> [EventRecord] {
        try principal.require(.viewer, project: query.project ?? principal.project, to: "read events")
        var query = query
        if !principal.project.isEmpty { query.project = principal.project }
        return try await store.events(query)
    }

    /// Audit log entries (admins, or operators of the project).
    public func audit(_ query: LogQuery, by principal: Principal) async throws(LQXError) -> [AuditRecord] {
        try principal.require(.operator, project: query.project ?? principal.project, to: "read the audit log")
        var query = query
        if !principal.project.isEmpty { query.project = principal.project }
        return try await store.audit(query)
    }

    /// Records an in-guest operation (exec, file transfer, power) with its result.
    public func recordAudit(
        _ principal: Principal, vm: VirtualMachine, action: String, detail: String, result: String
    ) async throws(LQXError) {
        try await recordAudit(
            principal, project: vm.meta.project, vmName: vm.meta.name, action: action, detail: detail, result: result)
    }

    /// Appends an audit record for an operation on the VM `vmName` of `project` (one that may
    /// not exist: a refused call is audited too).
    public func recordAudit(
        _ principal: Principal, project: String, vmName: String, action: String, detail: String, result: String
    ) async throws(LQXError) {
        try await store.commit(
            [], events: [],
            audit: [
                AuditRecord(
                    timeUnixMs: now(), user: principal.user, project: project, vm: vmName, action: action,
                    detail: String(detail.prefix(4096)), result: String(result.prefix(1024)))
            ])
    }
}
