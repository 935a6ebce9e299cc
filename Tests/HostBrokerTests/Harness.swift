import AgentProtocol
import Foundation
import GuestAgent
import LQXTestSupport
import Logging
import NIOCore
import NIOPosix
import Testing

@testable import HostBroker

/// A temporary directory removed at the end of a test.
struct TempDir {
    let path: String

    init() throws {
        var template = Array("/tmp/lqx-test-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw POSIXError(.EIO) }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// Runs an in-process agent on a unix socket and a broker connected to it.
enum Harness {
    static let sessionConfiguration = SessionConfiguration(
        keepaliveInterval: .milliseconds(500), keepaliveTimeout: .seconds(5), handshakeTimeout: .seconds(10),
        helloRetry: .milliseconds(200))

    static func agentConfiguration(socket: String, policy: AgentPolicy = AgentPolicy(), audit: String? = nil)
        -> AgentConfiguration
    {
        var logger = Logger(label: "test-agent")
        logger.logLevel = .warning
        // Idle memory release is off in tests except where a test turns it on.
        return AgentConfiguration(
            transports: [.unix(path: socket)], policy: policy, auditLogPath: audit, dryRunPower: true,
            session: sessionConfiguration, logger: logger, idleTrim: nil)
    }

    static func brokerConfiguration() -> BrokerConfiguration {
        BrokerConfiguration(
            session: sessionConfiguration, connectTimeout: .seconds(5),
            reconnectBackoff: .milliseconds(50)...(.milliseconds(500)))
    }

    /// Starts an agent and a broker; `body` gets a live session.
    static func withAgent<T: Sendable>(
        policy: AgentPolicy = AgentPolicy(), _ body: @Sendable @escaping (AgentSession) async throws -> T
    ) async throws -> T {
        try await withAgent(policy: policy, audit: false) { session, _ in try await body(session) }
    }

    /// Starts an agent and a broker; `body` gets a live session and the test's temporary directory.
    static func withAgent<T: Sendable>(
        policy: AgentPolicy = AgentPolicy(), audit: Bool = false,
        _ body: @Sendable @escaping (AgentSession, TempDir) async throws -> T
    ) async throws -> T {
        try await withAgentService(policy: policy, audit: audit) { _, session, dir in try await body(session, dir) }
    }

    /// Like `withAgent`, with the agent service itself (its counters) and a configuration hook.
    static func withAgentService<T: Sendable>(
        policy: AgentPolicy = AgentPolicy(), audit: Bool = false,
        configure: (inout AgentConfiguration) -> Void = { _ in },
        _ body: @Sendable @escaping (AgentService, AgentSession, TempDir) async throws -> T
    ) async throws -> T {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        var configuration = agentConfiguration(
            socket: socket, policy: policy, audit: audit ? dir.file("audit.log") : nil)
        configure(&configuration)
        let agent = try buildAgent(configuration: configuration)
        var logger = Logger(label: "test-broker")
        logger.logLevel = .warning
        let client = AgentClient(address: .unix(path: socket), configuration: brokerConfiguration(), logger: logger)
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                try await agent.run()
                return nil
            }
            group.addTask {
                try await client.run()
                return nil
            }
            group.addTask {
                let session = try await client.session(timeout: .seconds(20))
                return try await body(agent, session, dir)
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let result { return result }
            }
            throw AgentError(.internal, "harness ended without a result")
        }
    }
}

/// Resident set size of this process in bytes (from /proc/self/statm).
func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Random bytes from a seeded generator (fast, reproducible).
func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var i = 0
        while i + 8 <= count {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            raw.storeBytes(of: z ^ (z >> 31), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < count {
            raw[i] = UInt8(truncatingIfNeeded: i &* 31)
            i += 1
        }
    }
    return bytes
}

func sha256Hex(ofFile path: String) throws -> String {
    String(try Command.run("/usr/bin/sha256sum", [path]).stdout.prefix(64))
}

/// Whether a process exists and is not a zombie.
func isAlive(_ pid: pid_t) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return false }
    let state = stat[stat.index(close, offsetBy: 2)...].prefix(1)
    return state != "Z" && state != "X"
}
