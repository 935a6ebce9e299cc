import LQXModel
import Logging
import NIOSSL
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// The store on a PostgreSQL server (postgres-nio), for several control-plane replicas later.
/// Same contract as `SQLiteStore`: commits run at READ COMMITTED, every conditional write is a
/// single `UPDATE … WHERE version = …` (the row lock makes it atomic), and all commits are
/// ordered by the revision row they increment.
///
/// A `Service`: `run()` keeps the connection pool and applies migrations first; calls made before
/// that wait for it.
public final class PostgresStore: SQLStore {
    private let client: PostgresClient
    private let logger: Logger
    private let gate = OneShot<Void>()
    /// Where it connects.
    public let settings: StoreLocation.Postgres

    /// A store on that server (nothing is connected until `run()`).
    public init(_ settings: StoreLocation.Postgres, logger: Logger) {
        let configuration: PostgresClient.Configuration
        if let host = settings.host {
            configuration = PostgresClient.Configuration(
                host: host, port: settings.port, username: settings.user, password: settings.password,
                database: settings.database,
                tls: settings.requireTLS ? .require(.makeClientConfiguration()) : .disable)
        } else {
            configuration = PostgresClient.Configuration(
                unixSocketPath: "\(settings.socketDirectory ?? "/run/postgresql")/.s.PGSQL.\(settings.port)",
                username: settings.user, password: settings.password, database: settings.database)
        }
        self.settings = settings
        self.logger = logger
        client = PostgresClient(configuration: configuration, backgroundLogger: logger)
    }

    /// Runs the connection pool, applies migrations, serves until graceful shutdown.
    public func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await self.client.run() }
            do {
                try await migrate()
                gate.set(.success(()))
            } catch {
                let failure = LQXError(.unavailable, "cannot prepare the PostgreSQL store", cause: error)
                gate.set(.failure(failure))
                group.cancelAll()
                throw failure
            }
            try? await gracefulShutdown()
            gate.set(.failure(LQXError(.unavailable, "the store has shut down")))
            group.cancelAll()
        }
    }

    private func migrate() async throws {
        try await client.query("CREATE TABLE IF NOT EXISTS lqx_schema (name TEXT PRIMARY KEY)", logger: logger)
        try await client.withTransaction(logger: logger) { connection in
            // One replica migrates at a time; the others wait here and then find nothing to do.
            try await connection.query("LOCK TABLE lqx_schema IN EXCLUSIVE MODE", logger: logger)
            var applied = Set<String>()
            for try await name in try await connection.query("SELECT name FROM lqx_schema", logger: logger)
                .decode(String.self)
            {
                applied.insert(name)
            }
            for migration in Schema.migrations(integer: "BIGINT", serial: "BIGSERIAL PRIMARY KEY")
            where !applied.contains(migration.name) {
                for statement in migration.statements {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await connection.query("INSERT INTO lqx_schema (name) VALUES (\(migration.name))", logger: logger)
            }
        }
    }

    /// See `Store.commit`.
    public func commit(_ writes: [StoreWrite], events: [EventRecord], audit: [AuditRecord]) async throws(LQXError)
        -> Int64
    {
        try await gate.wait()
        let plan = SQLPlan(writes: writes, events: events, audit: audit)
        let logger = self.logger
        do {
            return try await client.withTransaction(logger: logger) { connection in
                var revision: Int64 = 0
                for step in plan.steps {
                    let rows = try await connection.query(
                        Self.query(step.sql, step.arguments, revision: revision), logger: logger)
                    var values: [Int64] = []
                    for try await value in rows.decode(Int64.self) { values.append(value) }
                    if let value = try SQLPlan.check(step, values) { revision = value }
                }
                return revision
            }
        } catch {
            // postgres-nio wraps what the transaction's body threw (and what COMMIT threw).
            var underlying: any Error = error
            if let wrapped = error as? PostgresTransactionError {
                underlying = wrapped.closureError ?? wrapped.commitError ?? wrapped.beginError ?? error
            }
            switch underlying {
            case let failure as SQLPlan.Failure:
                throw try await refusal(failure)
            case let database as PSQLError where database.serverInfo?[.sqlState] == "23505":
                throw LQXError(.alreadyExists, "an object of that name exists already in its project", cause: database)
            case let error as LQXError:
                throw error
            default:
                throw LQXError(.unavailable, "the PostgreSQL store could not commit", cause: underlying)
            }
        }
    }

    /// See `SQLStore.rows`.
    func rows(_ sql: String, _ arguments: [SQLValue], columns: [SQLColumn]) async throws(LQXError) -> [[SQLValue]] {
        try await gate.wait()
        do {
            var result: [[SQLValue]] = []
            for try await row in try await client.query(Self.query(sql, arguments, revision: 0), logger: logger) {
                var values: [SQLValue] = []
                for (cell, column) in zip(row, columns) {
                    switch column {
                    case .text: values.append(.text(try cell.decode(String.self)))
                    case .integer: values.append(.integer(try cell.decode(Int64.self)))
                    }
                }
                result.append(values)
            }
            return result
        } catch {
            throw LQXError(.unavailable, "the PostgreSQL store could not be read", cause: error)
        }
    }

    /// The statement with `?` numbered as `$1`, `$2`, … and its values bound.
    static func query(_ sql: String, _ arguments: [SQLValue], revision: Int64) -> PostgresQuery {
        var text = ""
        var index = 0
        for character in sql {
            if character == "?" {
                index += 1
                text += "$\(index)"
            } else {
                text.append(character)
            }
        }
        var binds = PostgresBindings(capacity: arguments.count)
        for argument in arguments {
            switch argument {
            case .text(let value): binds.append(value)
            case .integer(let value): binds.append(value)
            case .revision: binds.append(revision)
            }
        }
        return PostgresQuery(unsafeSQL: text, binds: binds)
    }
}
