import AgentProtocol
import Glibc
import Logging
import NIOCore
import NIOPosix
import POSIXSupport
import Synchronization

/// Counters the agent keeps about its input (visible in logs and tests).
public final class AgentMetrics: Sendable {
    private let counters = Mutex<(discardedBytes: Int, staleFrames: Int, requests: Int, idleReleases: Int)>(
        (0, 0, 0, 0))
    func discarded(bytes: Int) { counters.withLock { $0.discardedBytes += bytes } }
    func staleFrame() { counters.withLock { $0.staleFrames += 1 } }
    func request() { counters.withLock { $0.requests += 1 } }
    func releasedIdleMemory() { counters.withLock { $0.idleReleases += 1 } }
    /// Bytes skipped by the frame decoder.
    public var discardedBytes: Int { counters.withLock { $0.discardedBytes } }
    /// Frames dropped because they belonged to another session.
    public var staleFrames: Int { counters.withLock { $0.staleFrames } }
    /// Requests accepted.
    public var requests: Int { counters.withLock { $0.requests } }
    /// Times the agent released idle memory (see `AgentConfiguration.idleTrim`).
    public var idleReleases: Int { counters.withLock { $0.idleReleases } }
}

/// The agent's shared state and request dispatch; transports hand it streams.
public final class AgentCore: Sendable {
    let configuration: AgentConfiguration
    let logger: Logger
    let audit: AuditLog?
    let sampler: ProcSampler
    let cpuBaseline: Mutex<(total: CPUTimes, perCPU: [CPUTimes], at: NIODeadline)?>
    let threadPool: NIOThreadPool
    /// Readiness of exec pipes and child pidfds (one epoll thread for the agent).
    let reactor = Reactor()
    /// The agent's own user, looked up once per change of /etc/passwd or /etc/group.
    let users = UserCache()
    /// Counters about input and requests.
    public let metrics = AgentMetrics()
    /// Random per process start; lets the host tell an agent restart from a reconnect.
    public let instance = UInt64.random(in: 1...UInt64.max)

    /// Capabilities announced in WELCOME and info.
    public static let capabilities = [
        "info", "ping", "telemetry", "telemetry.subscribe", "exec", "exec.pty", "exec.signal", "files.upload",
        "files.download", "files.stat", "files.list", "shutdown",
    ]

    init(configuration: AgentConfiguration, threadPool: NIOThreadPool) throws {
        self.configuration = configuration
        self.logger = configuration.logger
        self.audit = try configuration.auditLogPath.map { try AuditLog(path: $0) }
        self.sampler = ProcSampler(procRoot: configuration.procRoot, sysRoot: configuration.sysRoot)
        self.cpuBaseline = Mutex(nil)
        self.threadPool = threadPool
    }

    func handle(stream id: UInt32, request payload: ByteBuffer, mux: Multiplexer, logger: Logger) async {
        var logger = logger
        if logger.logLevel <= .debug { logger[metadataKey: "stream.id"] = "\(id)" }
        metrics.request()
        let context = StreamContext(mux: mux, id: id, logger: logger)
        var request: Request?
        do {
            request = try Request(payload: payload)
            try await dispatch(request!, context: context)
        } catch {
            let agentError = (error as? AgentError) ?? AgentError(.internal, "\(error)")
            if let request { auditFailure(request, agentError) }
            if agentError.code != .closed && agentError.code != .cancelled {
                logger.debug("request failed", metadata: ["error": "\(agentError)"])
                try? await context.reply(.with { $0.error = agentError.wire }, end: true)
            }
        }
        mux.finish(stream: id)
    }

    /// Records a failed (or denied, or aborted) exec, file or power operation in the audit log.
    private func auditFailure(_ request: Request, _ error: AgentError) {
        guard let audit else { return }
        let result = "error \(error.code): \(error.message)"
        switch request.kind {
        case .exec(let r): audit.record("exec", ["argv": r.argv, "user": r.user, "cwd": r.cwd, "result": result])
        case .upload(let r): audit.record("upload", ["path": r.path, "size": Int(clamping: r.size), "result": result])
        case .download(let r): audit.record("download", ["path": r.path, "result": result])
        case .stat(let r): audit.record("stat", ["path": r.path, "result": result])
        case .list(let r): audit.record("list", ["path": r.path, "result": result])
        case .shutdown(let r): audit.record("shutdown", ["action": "\(r.action)", "result": result])
        case .info, .telemetry, .none: break
        }
    }

    private func dispatch(_ request: Request, context: StreamContext) async throws {
        switch request.kind {
        case .info:
            try await context.reply(.with { $0.info = info().wire }, end: true)
        case .telemetry(let r):
            try await telemetry(r, context: context)
        case .exec(let r):
            try require(configuration.policy.allowExec, "exec is disabled by the agent policy")
            try await ExecHandler(core: self, request: r, context: context).run()
        case .upload(let r):
            try require(configuration.policy.allowFileWrite, "file writes are disabled by the agent policy")
            try await FileHandlers(core: self, context: context).upload(r)
        case .download(let r):
            try require(configuration.policy.allowFileRead, "file reads are disabled by the agent policy")
            try await FileHandlers(core: self, context: context).download(r)
        case .stat(let r):
            try require(configuration.policy.allowFileRead, "file reads are disabled by the agent policy")
            try await FileHandlers(core: self, context: context).statFile(r)
        case .list(let r):
            try require(configuration.policy.allowFileRead, "file reads are disabled by the agent policy")
            try await FileHandlers(core: self, context: context).list(r)
        case .shutdown(let r):
            try require(configuration.policy.allowShutdown, "shutdown is disabled by the agent policy")
            try await PowerHandler(core: self, context: context).run(r)
        case .none:
            throw AgentError(.unsupported, "unknown request kind (agent \(AgentConfiguration.agentVersion))")
        }
    }

    private func require(_ allowed: Bool, _ message: String) throws(AgentError) {
        guard allowed else { throw AgentError(.denied, message) }
    }

    /// Runs blocking work (file I/O, waitpid-free syscalls) off the cooperative pool.
    func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await threadPool.runIfActive(body)
    }
}

/// One stream as a request handler sees it.
struct StreamContext: Sendable {
    let mux: Multiplexer
    let id: UInt32
    let logger: Logger

    func reply(_ reply: Reply, end: Bool = false) async throws(AgentError) {
        try await mux.send(stream: id, message: reply.buffer(), end: end)
    }

    func send(data: ByteBuffer, channel: UInt8 = 0, endOfChannel: Bool = false) async throws(AgentError) {
        try await mux.send(stream: id, data: data, channel: channel, endOfChannel: endOfChannel)
    }

    func next() async throws(AgentError) -> StreamEvent? {
        try await mux.next(stream: id)
    }
}
