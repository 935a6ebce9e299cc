import AgentProtocol
import Foundation
import GuestAgent
import HostBroker
import LQXTestSupport
import Logging

/// Runs an in-process agent on a unix socket and a broker connected to it.
public enum Harness {
    /// Short keepalives and handshakes for tests.
    public static let sessionConfiguration = SessionConfiguration(
        keepaliveInterval: .milliseconds(500), keepaliveTimeout: .seconds(5), handshakeTimeout: .seconds(10),
        helloRetry: .milliseconds(200))

    /// An agent on a unix socket with a dry-run power handler and no idle trimming.
    public static func agentConfiguration(socket: String, policy: AgentPolicy = AgentPolicy(), audit: String? = nil)
        -> AgentConfiguration
    {
        var logger = Logger(label: "test-agent")
        logger.logLevel = .warning
        // Idle memory release is off in tests except where a test turns it on.
        return AgentConfiguration(
            transports: [.unix(path: socket)], policy: policy, auditLogPath: audit, dryRunPower: true,
            session: sessionConfiguration, logger: logger, idleTrim: nil)
    }

    /// A broker that reconnects quickly.
    public static func brokerConfiguration() -> BrokerConfiguration {
        BrokerConfiguration(
            session: sessionConfiguration, connectTimeout: .seconds(5),
            reconnectBackoff: .milliseconds(50)...(.milliseconds(500)))
    }

    /// Starts an agent and a broker; `body` gets a live session.
    public static func withAgent<T: Sendable>(
        policy: AgentPolicy = AgentPolicy(), _ body: @Sendable @escaping (AgentSession) async throws -> T
    ) async throws -> T {
        try await withAgent(policy: policy, audit: false) { session, _ in try await body(session) }
    }

    /// Starts an agent and a broker; `body` gets a live session and the test's temporary directory.
    public static func withAgent<T: Sendable>(
        policy: AgentPolicy = AgentPolicy(), audit: Bool = false,
        _ body: @Sendable @escaping (AgentSession, TempDir) async throws -> T
    ) async throws -> T {
        try await withAgentService(policy: policy, audit: audit) { _, session, dir in try await body(session, dir) }
    }

    /// Like `withAgent`, with the agent service itself (its counters) and a configuration hook.
    public static func withAgentService<T: Sendable>(
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

/// Runs an in-process agent on `socket` while `body` runs (waiting up to 2 s for the socket).
public func withRunningAgent<T: Sendable>(
    socket: String, policy: AgentPolicy = AgentPolicy(), _ body: @Sendable @escaping () async throws -> T
) async throws -> T {
    let agent = try buildAgent(configuration: Harness.agentConfiguration(socket: socket, policy: policy))
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            try await agent.run()
            return nil
        }
        group.addTask {
            for _ in 0..<100 where access(socket, F_OK) != 0 { try await Task.sleep(for: .milliseconds(20)) }
            return try await body()
        }
        defer { group.cancelAll() }
        while let result = try await group.next() {
            if let result { return result }
        }
        throw AgentError(.internal, "agent ended")
    }
}
