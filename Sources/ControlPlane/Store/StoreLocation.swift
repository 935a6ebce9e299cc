import LQXModel
import Logging

/// Where the store lives, as given to `--db`: `sqlite:PATH` or a PostgreSQL URL
/// (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|require]`, or a local server's
/// socket directory: `postgres://USER@/DATABASE?host=/run/postgresql[&port=5432]`).
public enum StoreLocation: Sendable, Equatable, CustomStringConvertible {
    /// A SQLite file.
    case sqlite(path: String)
    /// A PostgreSQL server.
    case postgres(Postgres)

    /// How to reach a PostgreSQL server.
    public struct Postgres: Sendable, Equatable {
        /// TCP host, or nil for a unix socket.
        public var host: String?
        /// The port (also names the socket file).
        public var port: Int
        /// The socket directory when `host` is nil.
        public var socketDirectory: String?
        /// The role.
        public var user: String
        /// Its password, if any.
        public var password: String?
        /// The database.
        public var database: String
        /// Whether TLS is required (`sslmode=require`).
        public var requireTLS: Bool
    }

    /// The default location: `sqlite:<state-dir>/controlplane.db`.
    public static func `default`(stateDirectory: String) -> StoreLocation {
        .sqlite(path: stateDirectory + "/controlplane.db")
    }

    /// Parses a `--db` value.
    public init(parsing text: String) throws(LQXError) {
        if text.hasPrefix("sqlite:") {
            let path = String(text.dropFirst("sqlite:".count))
            guard !path.isEmpty, !path.contains("\0") else {
                throw LQXError(.invalidSpec, "--db sqlite:PATH needs a path (got \(text.debugDescription))")
            }
            self = .sqlite(path: path)
            return
        }
        guard let scheme = ["postgres://", "postgresql://"].first(where: { text.hasPrefix($0) }) else {
            throw LQXError(
                .invalidSpec, "--db must be sqlite:PATH or postgres://USER@HOST/DATABASE (got \(text.debugDescription))"
            )
        }
        var rest = Substring(text.dropFirst(scheme.count))
        var query: [String: String] = [:]
        if let mark = rest.firstIndex(of: "?") {
            for pair in rest[rest.index(after: mark)...].split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                query[String(parts[0])] = parts.count > 1 ? Self.percentDecoded(parts[1]) : ""
            }
            rest = rest[..<mark]
        }
        guard let slash = rest.firstIndex(of: "/"), let at = rest[..<slash].lastIndex(of: "@") else {
            throw LQXError(.invalidSpec, "--db \(Self.redacted(text)): expected postgres://USER@HOST/DATABASE")
        }
        let userInfo = rest[..<at].split(separator: ":", maxSplits: 1)
        let database = Self.percentDecoded(rest[rest.index(after: slash)...])
        guard let user = userInfo.first.map({ Self.percentDecoded($0) }), !user.isEmpty, !database.isEmpty else {
            throw LQXError(.invalidSpec, "--db \(Self.redacted(text)): a user and a database are required")
        }
        let hostPort = rest[rest.index(after: at)..<slash]
        var settings = Postgres(
            host: nil, port: 5432, socketDirectory: nil, user: user,
            password: userInfo.count > 1 ? Self.percentDecoded(userInfo[1]) : nil, database: database,
            requireTLS: query["sslmode"] == "require")
        if let portText = query["port"] {
            guard let port = Int(portText), (1...65535).contains(port) else {
                throw LQXError(.invalidSpec, "--db: port \(portText.debugDescription) is not 1…65535")
            }
            settings.port = port
        }
        if hostPort.isEmpty {
            guard let directory = query["host"], directory.hasPrefix("/") else {
                throw LQXError(
                    .invalidSpec,
                    "--db \(Self.redacted(text)): give a host, or ?host=/SOCKET-DIRECTORY for a local server")
            }
            settings.socketDirectory = directory
        } else {
            let text = String(hostPort)
            let colons = text.filter { $0 == ":" }.count
            let withPort: String
            if text.hasPrefix("[") {
                withPort = text.contains("]:") ? text : text + ":\(settings.port)"
            } else if colons > 1 {
                withPort = "[\(text)]:\(settings.port)"  // a bare IPv6 address
            } else {
                withPort = colons == 1 ? text : text + ":\(settings.port)"
            }
            let address = try HostPort(parsing: withPort, for: .connect, field: "--db")
            settings.host = address.host
            settings.port = address.port
        }
        if let mode = query["sslmode"], !["disable", "require"].contains(mode) {
            throw LQXError(.invalidSpec, "--db: sslmode must be disable or require (got \(mode))")
        }
        self = .postgres(settings)
    }

    /// The location without its password.
    public var description: String {
        switch self {
        case .sqlite(let path): return "sqlite:\(path)"
        case .postgres(let p):
            let place = p.host.map { "\($0):\(p.port)" } ?? "(socket \(p.socketDirectory ?? "")/.s.PGSQL.\(p.port))"
            return "postgres://\(p.user)@\(place)/\(p.database)"
        }
    }

    /// `text` with the password (between `//USER:` and `@`) replaced by `***`.
    private static func redacted(_ text: String) -> String {
        guard let start = text.range(of: "//")?.upperBound, let at = text[start...].lastIndex(of: "@"),
            let colon = text[start..<at].firstIndex(of: ":")
        else { return text }
        return String(text[...colon]) + "***" + String(text[at...])
    }

    private static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%"), let high = iterator.next(), let low = iterator.next(),
                let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Opens the store.
    public func open(logger: Logger) throws(LQXError) -> any Store {
        switch self {
        case .sqlite(let path): return try SQLiteStore(path: path)
        case .postgres(let settings): return PostgresStore(settings, logger: logger)
        }
    }
}
