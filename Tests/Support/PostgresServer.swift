import Foundation
import Synchronization

/// A PostgreSQL server of Debian's `postgresql` package in a temporary directory, started with
/// `initdb` and `pg_ctl` (no systemd), listening only on a unix socket there. One per test
/// process (`shared`); tests make their own databases in it.
public final class PostgresServer: Sendable {
    /// The data and socket directory.
    public let directory: String
    /// The port (it names the socket file).
    public let port: Int

    private static let binaries = "/usr/lib/postgresql/15/bin"
    private static let server = Mutex<Result<PostgresServer, any Error>?>(nil)

    /// The test run's server, started on first use; nil when PostgreSQL is not installed and
    /// `LQX_REQUIRE_POSTGRES` is not set (CI sets it: there a missing server fails the tests).
    public static func shared() throws -> PostgresServer? {
        guard FileManager.default.isExecutableFile(atPath: binaries + "/initdb") else {
            if ProcessInfo.processInfo.environment["LQX_REQUIRE_POSTGRES"] == "1" {
                throw PostgresServerError("PostgreSQL is required (LQX_REQUIRE_POSTGRES=1) but \(binaries) is missing")
            }
            return nil
        }
        return try server.withLock { state in
            if state == nil { state = Result { try PostgresServer() } }
            return try state!.get()
        }
    }

    private init() throws {
        directory = try TempDir().path
        port = Int.random(in: 20_000...40_000)
        let data = directory + "/data"
        try Self.run("/bin/chown", ["postgres:postgres", directory])
        try Self.asPostgres(Self.binaries + "/initdb", ["-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8"])
        try Self.asPostgres(
            Self.binaries + "/pg_ctl",
            [
                "-D", data, "-o", "-k \(directory) -p \(port) -c listen_addresses='' -c fsync=on", "-l",
                directory + "/log", "-w", "start",
            ])
        if let pid = try? String(contentsOfFile: data + "/postmaster.pid", encoding: .utf8).split(separator: "\n")
            .first,
            let number = Int32(pid)
        {
            TestRun.record(pid: number)
        }
        // The server stops with the test process; a runner that dies is cleaned up by test.sh.
        atexit { PostgresServer.stopShared() }
    }

    private static func stopShared() {
        guard case .success(let server)? = server.withLock({ $0 }) else { return }
        try? asPostgres(binaries + "/pg_ctl", ["-D", server.directory + "/data", "-m", "immediate", "stop"])
        try? FileManager.default.removeItem(atPath: server.directory)
    }

    /// Creates an empty database and returns its `--db` URL.
    public func createDatabase(_ name: String) throws -> String {
        try Self.asPostgres(
            "/usr/bin/psql",
            ["-h", directory, "-p", "\(port)", "-U", "postgres", "-q", "-c", "CREATE DATABASE \(name)"])
        return url(database: name)
    }

    /// The `--db` URL of a database on this server.
    public func url(database: String) -> String {
        "postgres://postgres@/\(database)?host=\(directory)&port=\(port)"
    }

    private static func asPostgres(_ binary: String, _ arguments: [String]) throws {
        try run("/usr/sbin/runuser", ["-u", "postgres", "--", binary] + arguments)
    }

    private static func run(_ binary: String, _ arguments: [String]) throws {
        let result = try Command.run(binary, arguments)
        guard result.status == 0 else {
            throw PostgresServerError("\(binary) \(arguments.joined(separator: " ")) failed: \(result.stderr)")
        }
    }
}

/// Why the test server could not be used.
public struct PostgresServerError: Error, CustomStringConvertible {
    /// What failed.
    public var description: String
    /// An error saying `description`.
    public init(_ description: String) { self.description = description }
}
