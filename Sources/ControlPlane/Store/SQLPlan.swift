import LQXModel

/// A value bound to a statement.
enum SQLValue: Sendable, Equatable {
    case text(String)
    case integer(Int64)
    /// The revision this commit writes (known after its first step).
    case revision
}

/// One statement of a commit and what it must return. Every statement yields one integer column:
/// the revision, `1` per row a `RETURNING 1` touched, or a `CASE` test's 0/1.
struct SQLStep: Sendable {
    enum Expectation: Sendable, Equatable {
        /// The new revision (the first step).
        case revision
        /// Exactly one row, else the commit fails with this reason.
        case oneRow(SQLPlan.Failure)
        /// A single 1, else the commit fails with this reason.
        case isTrue(SQLPlan.Failure)
        /// Anything.
        case nothing
    }

    var sql: String
    var arguments: [SQLValue]
    var expect: Expectation
}

/// The statements of one commit, the same for SQLite and PostgreSQL (`?` placeholders; the
/// PostgreSQL store numbers them). Each store runs the steps in one transaction and rolls back at
/// the first step whose result is not the expected one; the failure becomes a specific error.
struct SQLPlan: Sendable {
    /// Why a commit was refused.
    enum Failure: Sendable, Equatable, Error {
        case exists(ObjectKind, id: String, project: String, name: String)
        case stale(ObjectKind, id: String, name: String, expected: Int64)
        case missingNode(String)
        case noCapacity(node: String, cpus: Int, memoryMiB: Int)
        case missingProject(String)
        case overQuota(String)
    }

    var steps: [SQLStep] = []

    static let objectColumns = "kind, id, project, name, version, node, cpus, memory_mib, body"

    init(writes: [StoreWrite], events: [EventRecord], audit: [AuditRecord]) {
        steps.append(
            SQLStep(sql: "UPDATE lqx_revision SET value = value + 1 RETURNING value", arguments: [], expect: .revision))
        var capacity: [(node: String, cpus: Int, memoryMiB: Int)] = []
        var quotas: [(id: String, project: String, vcpus: Int, memoryMiB: Int, vms: Int)] = []
        for write in writes {
            switch write {
            case .create(let o):
                steps.append(
                    SQLStep(
                        sql: "INSERT INTO lqx_objects (\(Self.objectColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                            + "ON CONFLICT DO NOTHING RETURNING 1",
                        arguments: [.text(o.kind.rawValue), .text(o.id)] + Self.columns(of: o),
                        expect: .oneRow(.exists(o.kind, id: o.id, project: o.project, name: o.name))))
            case .update(let o, let expected):
                steps.append(
                    SQLStep(
                        sql: "UPDATE lqx_objects SET project = ?, name = ?, version = ?, node = ?, cpus = ?, "
                            + "memory_mib = ?, body = ? WHERE kind = ? AND id = ? AND version = ? RETURNING 1",
                        arguments: Self.columns(of: o) + [.text(o.kind.rawValue), .text(o.id), .integer(expected)],
                        expect: .oneRow(.stale(o.kind, id: o.id, name: o.name, expected: expected))))
            case .delete(let kind, let id, let expected):
                steps.append(
                    SQLStep(
                        sql: "DELETE FROM lqx_objects WHERE kind = ? AND id = ? AND version = ? RETURNING 1",
                        arguments: [.text(kind.rawValue), .text(id), .integer(expected)],
                        expect: .oneRow(.stale(kind, id: id, name: id, expected: expected))))
            case .require(let kind, let id, let expected):
                // A write of nothing: it takes the row's lock until the commit (PostgreSQL).
                steps.append(
                    SQLStep(
                        sql: "UPDATE lqx_objects SET version = version WHERE kind = ? AND id = ? AND version = ? "
                            + "RETURNING 1",
                        arguments: [.text(kind.rawValue), .text(id), .integer(expected)],
                        expect: .oneRow(.stale(kind, id: id, name: id, expected: expected))))
            case .capacity(let node, let cpus, let memory):
                capacity.append((node, cpus, memory))
            case .quota(let id, let project, let vcpus, let memory, let vms):
                quotas.append((id, project, vcpus, memory, vms))
            }
        }
        // After the writes, so their placements count; nodes in one order, so two commits cannot
        // each hold one node's lock while waiting for the other's.
        for check in capacity.sorted(by: { $0.node < $1.node }) {
            steps.append(
                SQLStep(
                    sql: "UPDATE lqx_objects SET version = version WHERE kind = 'node' AND id = ? RETURNING 1",
                    arguments: [.text(check.node)], expect: .oneRow(.missingNode(check.node))))
            steps.append(
                SQLStep(
                    sql: "SELECT CASE WHEN COALESCE(SUM(cpus), 0) <= ? AND COALESCE(SUM(memory_mib), 0) <= ? "
                        + "THEN 1 ELSE 0 END FROM lqx_objects WHERE kind = 'vm' AND node = ?",
                    arguments: [.integer(Int64(check.cpus)), .integer(Int64(check.memoryMiB)), .text(check.node)],
                    expect: .isTrue(.noCapacity(node: check.node, cpus: check.cpus, memoryMiB: check.memoryMiB))))
        }
        for quota in quotas.sorted(by: { $0.id < $1.id }) {
            steps.append(
                SQLStep(
                    sql: "UPDATE lqx_objects SET version = version WHERE kind = 'project' AND id = ? RETURNING 1",
                    arguments: [.text(quota.id)], expect: .oneRow(.missingProject(quota.project))))
            // A project without limits (each at least Int32.max) needs no sum over its VMs.
            let unlimited = Int(Int32.max)
            if quota.vms >= unlimited && quota.vcpus >= unlimited && quota.memoryMiB >= unlimited { continue }
            steps.append(
                SQLStep(
                    sql: "SELECT CASE WHEN COUNT(*) <= ? AND COALESCE(SUM(cpus), 0) <= ? "
                        + "AND COALESCE(SUM(memory_mib), 0) <= ? THEN 1 ELSE 0 END FROM lqx_objects "
                        + "WHERE kind = 'vm' AND project = ?",
                    arguments: [
                        .integer(Int64(quota.vms)), .integer(Int64(quota.vcpus)), .integer(Int64(quota.memoryMiB)),
                        .text(quota.project),
                    ],
                    expect: .isTrue(.overQuota(quota.project))))
        }
        for e in events {
            steps.append(
                SQLStep(
                    sql: "INSERT INTO lqx_events (revision, time_ms, kind, object_id, object_name, project, type, "
                        + "reason, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    arguments: [
                        .revision, .integer(e.timeUnixMs), .text(e.kind), .text(e.objectID), .text(e.objectName),
                        .text(e.project), .text(e.type), .text(e.reason), .text(e.message),
                    ], expect: .nothing))
        }
        for a in audit {
            steps.append(
                SQLStep(
                    sql: "INSERT INTO lqx_audit (revision, time_ms, user_name, project, vm, action, detail, result) "
                        + "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    arguments: [
                        .revision, .integer(a.timeUnixMs), .text(a.user), .text(a.project), .text(a.vm),
                        .text(a.action), .text(a.detail), .text(a.result),
                    ], expect: .nothing))
        }
    }

    private static func columns(of o: StoredObject) -> [SQLValue] {
        [
            .text(o.project), .text(o.name), .revision, .text(o.node), .integer(Int64(o.cpus)),
            .integer(Int64(o.memoryMiB)), .text(o.body),
        ]
    }

    /// Checks a step's result; returns the revision for the first step.
    static func check(_ step: SQLStep, _ values: [Int64]) throws(Failure) -> Int64? {
        switch step.expect {
        case .revision: return values.first
        case .oneRow(let failure): guard values.count == 1 else { throw failure }
        case .isTrue(let failure): guard values == [1] else { throw failure }
        case .nothing: break
        }
        return nil
    }

    /// The error for a refused commit; `current` is the object's version now (nil: gone).
    static func error(for failure: Failure, current: Int64?) -> LQXError {
        switch failure {
        case .exists(let kind, let id, let project, let name):
            let scope = project.isEmpty ? "" : " in project \(project)"
            return LQXError(.alreadyExists, "\(kind) \(name)\(scope) exists already (or id \(id) is taken)")
        case .stale(let kind, _, let name, let expected):
            return LQXError(
                .conflict, "\(kind) \(name) was changed since resource_version \(expected); read it again",
                cause: StaleVersion(current: current ?? 0))
        case .missingNode(let node):
            return LQXError(.notFound, "node \(node) does not exist")
        case .missingProject(let project):
            return LQXError(.notFound, "project \(project) does not exist")
        case .overQuota(let project):
            return LQXError(.resourceExhausted, "project \(project) would be over its quota")
        case .noCapacity(let node, let cpus, let memory):
            return LQXError(
                .resourceExhausted,
                "node \(node) has no room: its VMs would take more than \(cpus) vCPUs or \(memory) MiB")
        }
    }

    /// The object the failure is about, whose current version the error reports.
    static func staleObject(_ failure: Failure) -> (ObjectKind, String)? {
        if case .stale(let kind, let id, _, _) = failure { return (kind, id) }
        return nil
    }

    /// The read statements both stores use.
    enum Reads {
        static let revision = "SELECT value FROM lqx_revision WHERE id = 1"
        static let byID = "SELECT \(SQLPlan.objectColumns) FROM lqx_objects WHERE kind = ? AND id = ?"
        static let byName =
            "SELECT \(SQLPlan.objectColumns) FROM lqx_objects WHERE kind = ? AND project = ? AND name = ?"
        static let all = "SELECT \(SQLPlan.objectColumns) FROM lqx_objects WHERE kind = ? ORDER BY project, name"
        static let inProject =
            "SELECT \(SQLPlan.objectColumns) FROM lqx_objects WHERE kind = ? AND project = ? ORDER BY name"

        /// Events after a sequence, of one object and/or project when given.
        static func events(_ query: LogQuery) -> (String, [SQLValue]) {
            log(
                "SELECT seq, time_ms, kind, object_id, object_name, project, type, reason, message FROM lqx_events",
                query, objectColumn: "object_id")
        }

        /// Audit records after a sequence, of one VM and/or project when given.
        static func audit(_ query: LogQuery) -> (String, [SQLValue]) {
            log(
                "SELECT seq, time_ms, user_name, project, vm, action, detail, result FROM lqx_audit", query,
                objectColumn: "vm")
        }

        private static func log(_ select: String, _ query: LogQuery, objectColumn: String) -> (String, [SQLValue]) {
            var sql = select + " WHERE seq > ?"
            var arguments: [SQLValue] = [.integer(query.after)]
            if let object = query.object {
                sql += " AND \(objectColumn) = ?"
                arguments.append(.text(object))
            }
            if let project = query.project {
                sql += " AND project = ?"
                arguments.append(.text(project))
            }
            sql += " ORDER BY seq LIMIT ?"
            arguments.append(.integer(Int64(max(1, min(query.limit, 10_000)))))
            return (sql, arguments)
        }
    }
}
