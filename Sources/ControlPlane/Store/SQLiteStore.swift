import GRDB
import LQXModel
import ServiceLifecycle

/// The default store: one SQLite file (WAL, `synchronous = FULL`, so a commit that returned
/// survives a crash of the process or the machine). Nothing to set up.
public final class SQLiteStore: Store {
    private let pool: DatabasePool
    /// The database file.
    public let path: String

    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    public init(path: String) throws(LQXError) {
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        configuration.busyMode = .timeout(10)
        self.path = path
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            var migrator = DatabaseMigrator()
            for migration in Schema.migrations(integer: "INTEGER", serial: "INTEGER PRIMARY KEY AUTOINCREMENT") {
                migrator.registerMigration(migration.name) { db in
                    for statement in migration.statements { try db.execute(sql: statement) }
                }
            }
            try migrator.migrate(pool)
        } catch {
            throw LQXError(.io, "cannot open the store at \(path)", cause: error)
        }
    }

    /// Serves until graceful shutdown, then closes the database.
    public func run() async throws {
        try? await gracefulShutdown()
        try? pool.close()
    }

    /// See `Store.commit`.
    public func commit(_ writes: [StoreWrite], events: [EventRecord], audit: [AuditRecord]) async throws(LQXError)
        -> Int64
    {
        let plan = SQLPlan(writes: writes, events: events, audit: audit)
        do {
            return try await pool.write { db in
                var revision: Int64 = 0
                for step in plan.steps {
                    let values = try Int64.fetchAll(
                        db, sql: step.sql, arguments: Self.arguments(step.arguments, revision: revision))
                    if let value = try SQLPlan.check(step, values) { revision = value }
                }
                return revision
            }
        } catch let failure as SQLPlan.Failure {
            var current: Int64?
            if let (kind, id) = SQLPlan.staleObject(failure) { current = try await object(kind, id: id)?.version }
            throw SQLPlan.error(for: failure, current: current)
        } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
            throw LQXError(.alreadyExists, "an object of that name exists already in its project", cause: error)
        } catch {
            throw LQXError(.io, "the store could not commit", cause: error)
        }
    }

    /// See `Store.object(_:id:)`.
    public func object(_ kind: ObjectKind, id: String) async throws(LQXError) -> StoredObject? {
        try await objects(SQLPlan.Reads.byID, [.text(kind.rawValue), .text(id)]).first
    }

    /// See `Store.object(_:project:name:)`.
    public func object(_ kind: ObjectKind, project: String, name: String) async throws(LQXError) -> StoredObject? {
        try await objects(SQLPlan.Reads.byName, [.text(kind.rawValue), .text(project), .text(name)]).first
    }

    /// See `Store.objects(_:project:)`.
    public func objects(_ kind: ObjectKind, project: String?) async throws(LQXError) -> [StoredObject] {
        if let project {
            return try await objects(SQLPlan.Reads.inProject, [.text(kind.rawValue), .text(project)])
        }
        return try await objects(SQLPlan.Reads.all, [.text(kind.rawValue)])
    }

    /// See `Store.events(_:)`.
    public func events(_ query: LogQuery) async throws(LQXError) -> [EventRecord] {
        let (sql, arguments) = SQLPlan.Reads.events(query)
        return try await read(sql, arguments) { row in
            EventRecord(
                sequence: row[0], timeUnixMs: row[1], kind: ObjectKind(rawValue: row[2]), objectID: row[3],
                objectName: row[4], project: row[5], type: row[6], reason: row[7], message: row[8])
        }
    }

    /// See `Store.audit(_:)`.
    public func audit(_ query: LogQuery) async throws(LQXError) -> [AuditRecord] {
        let (sql, arguments) = SQLPlan.Reads.audit(query)
        return try await read(sql, arguments) { row in
            AuditRecord(
                sequence: row[0], timeUnixMs: row[1], user: row[2], project: row[3], vm: row[4], action: row[5],
                detail: row[6], result: row[7])
        }
    }

    private func objects(_ sql: String, _ arguments: [SQLValue]) async throws(LQXError) -> [StoredObject] {
        try await read(sql, arguments) { row in
            StoredObject(
                kind: ObjectKind(rawValue: row[0]), id: row[1], project: row[2], name: row[3], version: row[4],
                node: row[5], cpus: row[6], memoryMiB: row[7], body: row[8])
        }
    }

    private func read<T: Sendable>(
        _ sql: String, _ arguments: [SQLValue], _ decode: @escaping @Sendable (Row) -> T
    ) async throws(LQXError) -> [T] {
        do {
            return try await pool.read { db in
                try Row.fetchAll(db, sql: sql, arguments: Self.arguments(arguments, revision: 0)).map(decode)
            }
        } catch {
            throw LQXError(.io, "the store could not be read", cause: error)
        }
    }

    private static func arguments(_ values: [SQLValue], revision: Int64) -> StatementArguments {
        StatementArguments(
            values.map { value -> any DatabaseValueConvertible in
                switch value {
                case .text(let text): text
                case .integer(let number): number
                case .revision: revision
                }
            })
    }
}
