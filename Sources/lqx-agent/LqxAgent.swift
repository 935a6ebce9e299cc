import AgentProtocol
import ArgumentParser
import CLQXSupport
import Glibc
import GuestAgent
import Logging
import NIOCore
import ServiceLifecycle

@main
struct LqxAgent: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lqx-agent",
        abstract: "limiquantix guest agent: lets the host run commands, move files and read telemetry in this VM.",
        discussion: """
            Serves every configured transport at once. With no transport flag the agent uses the \
            virtio-serial port \(AgentConfiguration.defaultVirtioSerialPath) and AF_VSOCK port \
            \(AgentConfiguration.defaultVsockPort). What the host may do is set by the policy file \
            (\(AgentConfiguration.defaultPolicyPath)): sections [exec], [files] and [power] with \
            enabled, read, write and shutdown = true|false; anything else is an error. The \
            package installs it with every switch on, commented. SIGTERM or SIGINT stop the agent \
            and kill the commands it started.
            """,
        version: AgentConfiguration.agentVersion)

    @Option(name: .customLong("virtio-serial"), help: "virtio-serial port device (repeatable).")
    var virtioSerial: [String] = []

    @Flag(name: .customLong("no-virtio-serial"), help: "Do not use the default virtio-serial port.")
    var noVirtioSerial = false

    @Option(name: .customLong("vsock-port"), help: "AF_VSOCK port to listen on (default 5170).")
    var vsockPort: UInt32?

    @Flag(name: .customLong("no-vsock"), help: "Do not listen on AF_VSOCK.")
    var noVsock = false

    @Flag(
        name: .customLong("vsock-allow-local"),
        help: "Also admit vsock connections from CID 1 (tests with vsock_loopback).")
    var vsockAllowLocal = false

    @Option(name: .customLong("listen"), help: "Extra listener, unix:PATH (development and tests; repeatable).")
    var listen: [String] = []

    @Option(
        name: .customLong("policy"),
        help: "Policy file (default \(AgentConfiguration.defaultPolicyPath); missing default = allow all).")
    var policy: String?

    @Option(
        name: .customLong("audit-log"),
        help: "Audit log file (JSON lines). Default /var/log/limiquantix/agent-audit.log when writable.")
    var auditLog: String?

    @Flag(name: .customLong("dry-run-power"), help: "Acknowledge shutdown/reboot requests without acting (tests).")
    var dryRunPower = false

    @Option(
        name: .customLong("keepalive-timeout"), help: "Seconds of host silence before a session is dropped (default 5)."
    )
    var keepaliveTimeout: Double = 5

    @Option(
        name: .customLong("idle-trim"),
        help: ArgumentHelp(
            "Seconds without a new request after which the agent gives back idle memory (default 10; 0 never).",
            discussion: "Unmaps resident code pages, which come back from the page cache when used, and trims the heap."
        ))
    var idleTrim: Double = 10

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() async throws {
        lqx_tune_malloc()
        guard idleTrim >= 0, idleTrim.isFinite else { throw ValidationError("--idle-trim takes seconds >= 0") }
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level \(logLevel)")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var transports: [AgentTransport] = []
        let explicitListen = !listen.isEmpty || !virtioSerial.isEmpty || vsockPort != nil
        for spec in listen {
            guard spec.hasPrefix("unix:"), spec.count > 5 else {
                throw ValidationError("--listen takes unix:PATH, got \(spec)")
            }
            transports.append(.unix(path: String(spec.dropFirst(5))))
        }
        if !noVirtioSerial {
            if !virtioSerial.isEmpty {
                transports += virtioSerial.map { .virtioSerial(path: $0) }
            } else if !explicitListen {
                transports.append(.virtioSerial(path: AgentConfiguration.defaultVirtioSerialPath))
            }
        }
        if !noVsock, vsockPort != nil || !explicitListen {
            transports.append(
                .vsock(port: vsockPort ?? AgentConfiguration.defaultVsockPort, allowLocal: vsockAllowLocal))
        }
        guard !transports.isEmpty else { throw ValidationError("every transport is disabled") }
        let policyValue = try AgentPolicy.load(
            path: policy ?? AgentConfiguration.defaultPolicyPath, required: policy != nil)
        let logger = Logger(label: "lqx-agent")
        let configuration = AgentConfiguration(
            transports: transports, policy: policyValue, auditLogPath: auditLog ?? Self.defaultAuditLog(),
            dryRunPower: dryRunPower,
            session: SessionConfiguration(keepaliveTimeout: .milliseconds(Int64(keepaliveTimeout * 1000))),
            logger: logger, idleTrim: idleTrim > 0 ? .milliseconds(Int64(idleTrim * 1000)) : nil)
        let agent = try buildAgent(configuration: configuration)
        // SIGTERM/SIGINT end the agent cleanly: its service is cancelled, which closes every
        // session and kills the process groups of running commands.
        let group = ServiceGroup(
            configuration: .init(services: [agent], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("stopped")
    }

    static func defaultAuditLog() -> String? {
        let directory = "/var/log/limiquantix"
        _ = mkdir(directory, 0o750)
        return access(directory, W_OK) == 0 ? directory + "/agent-audit.log" : nil
    }
}
