import AgentProtocol
import Logging
import NIOCore

/// One established session with an agent. Operations fail with `AgentError` (code `closed`)
/// once the session ends; `AgentClient` then establishes a new one.
public final class AgentSession: Sendable {
    let mux: Multiplexer
    /// What the agent announced (wire form; `info()` gives the agent's details as Swift values).
    let welcome: Welcome
    /// How long an operation waits for a reply or for the next piece of progress
    /// (`BrokerConfiguration.operationTimeout`).
    public let operationTimeout: Duration
    let logger: Logger

    init(mux: Multiplexer, welcome: Welcome, operationTimeout: Duration, logger: Logger) {
        self.mux = mux
        self.welcome = welcome
        self.operationTimeout = operationTimeout
        self.logger = logger
    }

    /// The session id.
    public var id: UInt64 { mux.session }
    /// Whether the session is still usable.
    public var isOpen: Bool { mux.closedError == nil }
    /// Streams currently open on this session.
    public var openStreams: Int { mux.streamCount }

    /// Opens a stream carrying `request`.
    func open(_ request: Request) throws(AgentError) -> UInt32 {
        let payload = request.buffer()
        let limit = min(mux.remote.maxFramePayload, maximumMessagePayload)
        guard payload.readableBytes <= limit else {
            throw AgentError(
                .invalidArgument, "request of \(payload.readableBytes) bytes exceeds the \(limit)-byte limit")
        }
        let id = try mux.allocateStream()
        mux.enqueueControl(Frame(type: .open, session: mux.session, stream: id, payload: payload))
        return id
    }

    /// Reads the next reply message on a stream, skipping nothing; data frames are a protocol error here.
    func nextReply(_ stream: UInt32) async throws(AgentError) -> (Reply, end: Bool)? {
        guard let event = try await mux.next(stream: stream) else { return nil }
        switch event {
        case .message(let payload, let end):
            let reply = try Reply(payload: payload)
            if case .error(let wire) = reply.kind { throw AgentError(wire: wire) }
            return (reply, end)
        case .data:
            throw AgentError(.protocolViolation, "unexpected data on stream \(stream)")
        }
    }

    /// Runs a request whose answer is a single reply, waiting at most `operationTimeout` for it.
    func unary(_ request: Request, _ operation: String) async throws(AgentError) -> Reply {
        let stream = try open(request)
        do throws(AgentError) {
            let reply = try await guarded(stream, operation) { _ throws(AgentError) in
                guard let (reply, _) = try await nextReply(stream) else {
                    throw AgentError(.protocolViolation, "the agent ended the \(operation) stream without a reply")
                }
                return reply
            }
            mux.release(stream: stream)
            return reply
        } catch {
            abandon(stream)
            throw error
        }
    }

    /// Agent and guest information.
    public func info() async throws(AgentError) -> AgentInfo {
        let reply = try await unary(.with { $0.info = .init() }, "info")
        guard case .info(let info) = reply.kind else { throw unexpected(reply, to: "info") }
        return AgentInfo(wire: info)
    }

    /// Round trip of a PING through the agent; returns the time it took. Fails with `timeout`
    /// after `operationTimeout` without the PONG.
    public func ping() async throws(AgentError) -> Duration {
        let start = ContinuousClock.now
        let mux = self.mux
        let timeout = operationTimeout
        do {
            let answered = try await withThrowingTaskGroup(of: Bool.self) { group in
                group.addTask {
                    try await mux.ping()
                    return true
                }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    return false
                }
                defer { group.cancelAll() }
                return try await group.next()!
            }
            guard answered else { throw AgentError(.timeout, "no PONG from the agent within \(timeout)") }
        } catch {
            throw AgentError.from(error)
        }
        return ContinuousClock.now - start
    }

    /// One telemetry sample.
    public func telemetry() async throws(AgentError) -> TelemetrySample {
        let reply = try await unary(.with { $0.telemetry = .with { $0.intervalMs = 0 } }, "telemetry")
        guard case .telemetry(let sample) = reply.kind else { throw unexpected(reply, to: "telemetry") }
        return TelemetrySample(wire: sample)
    }

    /// A telemetry sample every `interval` (at least 100 ms) until the consumer stops iterating.
    /// See `TelemetrySubscription` for the bounds a guest cannot push past.
    public func telemetry(every interval: Duration) -> TelemetrySubscription {
        TelemetrySubscription(session: self, interval: max(interval, .milliseconds(100)))
    }

    /// Metadata of a guest path.
    public func stat(_ path: String, followSymlinks: Bool = true) async throws(AgentError) -> GuestFileStat {
        let reply = try await unary(
            .with {
                $0.stat = .with {
                    $0.path = path; $0.noFollow = !followSymlinks
                }
            }, "stat")
        guard case .stat(let stat) = reply.kind else { throw unexpected(reply, to: "stat") }
        return GuestFileStat(wire: stat)
    }

    /// Entries of a guest directory, sorted by name. Each batch must come within
    /// `operationTimeout` of the previous one.
    public func list(_ path: String) async throws(AgentError) -> [GuestFileStat] {
        let stream = try open(.with { $0.list = .with { $0.path = path } })
        var entries: [GuestFileStat] = []
        do throws(AgentError) {
            try await guarded(stream, "list") { (progress) throws(AgentError) in
                while let (reply, end) = try await nextReply(stream) {
                    guard case .listing(let listing) = reply.kind else { throw unexpected(reply, to: "list") }
                    progress.note()
                    entries += listing.entries.map(GuestFileStat.init(wire:))
                    if end { break }
                }
            }
        } catch {
            abandon(stream)
            throw error
        }
        mux.release(stream: stream)
        return entries
    }

    /// Asks the guest to power off, reboot or halt after `delay` seconds; returns the agent's
    /// acknowledgement, which it sends before acting.
    public func shutdown(_ action: PowerAction = .poweroff, delay: UInt32 = 0) async throws(AgentError)
        -> ShutdownAccepted
    {
        let reply = try await unary(
            .with {
                $0.shutdown = .with {
                    $0.action = action.wire; $0.delaySeconds = delay
                }
            }, "shutdown")
        guard case .shutdown(let accepted) = reply.kind else { throw unexpected(reply, to: "shutdown") }
        return ShutdownAccepted(wire: accepted)
    }

    /// Gives up on a stream the agent may still be working on: RESET makes it stop (kill the
    /// process, drop the temp file) instead of waiting for data that never comes.
    func abandon(_ stream: UInt32) {
        mux.reset(stream: stream, error: AgentError(.cancelled, "abandoned by the host"))
        mux.release(stream: stream)
    }

    /// The error for a reply of the wrong kind, named as the schema names it.
    func unexpected(_ reply: Reply, to operation: String) -> AgentError {
        AgentError(.protocolViolation, "the agent answered \(operation) with \(reply.kindName)")
    }
}

extension Reply {
    /// The reply's kind as the schema names it (`exec_exit`), for error messages.
    var kindName: String {
        switch kind {
        case .info: "info"
        case .telemetry: "telemetry"
        case .execStarted: "exec_started"
        case .execExit: "exec_exit"
        case .uploadResult: "upload_result"
        case .downloadStart: "download_start"
        case .downloadResult: "download_result"
        case .stat: "stat"
        case .listing: "listing"
        case .shutdown: "shutdown"
        case .error: "error"
        case nil: "an empty reply (no kind set)"
        }
    }
}

extension AgentError {
    /// `error` as an `AgentError`: itself, `cancelled` for task cancellation, else `internal`.
    public static func from(_ error: any Error) -> AgentError {
        if let error = error as? AgentError { return error }
        if error is CancellationError { return AgentError(.cancelled, "cancelled") }
        return AgentError(.internal, "\(error)")
    }
}
