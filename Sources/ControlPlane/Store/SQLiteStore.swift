import GRDB
import LQXModel
import ServiceLifecycle

/// The default store: one SQLite file (WAL, `synchronous = FULL`, so a commit that returned
/// survives a crash of the process or the machine). Nothing to set up.
public final class SQLiteStore: SQLStore {
    private let pool: DatabasePool
    /// The database file.
    public let path: String

    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    public init(path: String) throws(LQXError) {
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            // 32 MiB of pages per connection (SQLite's default is 2 MiB): the capacity and quota
            // checks of a commit read the VM rows of a node or project.
            try db.execute(sql: "PRAGMA cache_size = -32768")
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
            throw try await refusal(failure)
        } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
            throw LQXError(.alreadyExists, "an object of that name exists already in its project", cause: error)
        } catch {
            throw LQXError(.io, "the store could not commit", cause: error)
        }
    }

    /// See `SQLStore.rows`.
    func rows(_ sql: String, _ arguments: [SQLValue], columns: [SQLColumn]) async throws(LQXError) -> [[SQLValue]] {
        do {
            return try await pool.read { db in
                try Row.fetchAll(db, sql: sql, arguments: Self.arguments(arguments, revision: 0)).map { row in
                    columns.enumerated().map { index, column in
                        switch column {
                        case .text: .text(row[index])
                        case .integer: .integer(row[index])
                        }
                    }
                }
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
