import AgentProtocol
import Logging
import NIOCore

/// Telemetry sample as sent by the agent.
public typealias TelemetrySample = Limiquantix_Agent_V1_TelemetrySample
/// Agent and guest OS information.
public typealias AgentInfo = Limiquantix_Agent_V1_Info
/// A file's metadata in the guest.
public typealias GuestFileStat = Limiquantix_Agent_V1_FileStat
/// What a power request will do.
public typealias PowerAction = Limiquantix_Agent_V1_PowerAction
/// The agent's acknowledgement of a power request.
public typealias ShutdownAccepted = Limiquantix_Agent_V1_ShutdownAccepted

/// One established session with an agent. Operations fail with `AgentError` (code `closed`)
/// once the session ends; `AgentClient` then establishes a new one.
public final class AgentSession: Sendable {
    let mux: Multiplexer
    /// What the agent announced.
    public let welcome: Welcome
    let logger: Logger

    init(mux: Multiplexer, welcome: Welcome, logger: Logger) {
        self.mux = mux
        self.welcome = welcome
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

    /// Runs a request whose answer is a single reply.
    func unary(_ request: Request) async throws(AgentError) -> Reply {
        let stream = try open(request)
        do throws(AgentError) {
            guard let (reply, _) = try await nextReply(stream) else {
                throw AgentError(.protocolViolation, "the agent ended the stream without a reply")
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
        let reply = try await unary(.with { $0.info = .init() })
        guard case .info(let info) = reply.kind else { throw unexpected(reply) }
        return info
    }

    /// Round trip of a PING through the agent; returns the time it took.
    public func ping() async throws(AgentError) -> Duration {
        let start = ContinuousClock.now
        try await mux.ping()
        return ContinuousClock.now - start
    }

    /// One telemetry sample.
    public func telemetry() async throws(AgentError) -> TelemetrySample {
        let reply = try await unary(.with { $0.telemetry = .with { $0.intervalMs = 0 } })
        guard case .telemetry(let sample) = reply.kind else { throw unexpected(reply) }
        return sample
    }

    /// A telemetry sample every `interval` until the consumer stops iterating.
    public func telemetry(every interval: Duration) -> AsyncThrowingStream<TelemetrySample, any Error> {
        let ms = UInt32(
            clamping: interval.components.seconds * 1000 + interval.components.attoseconds / 1_000_000_000_000_000)
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    let stream = try open(.with { $0.telemetry = .with { $0.intervalMs = max(ms, 100) } })
                    defer { mux.reset(stream: stream, error: AgentError(.cancelled, "subscription ended")) }
                    while let (reply, end) = try await nextReply(stream) {
                        guard case .telemetry(let sample) = reply.kind else { throw unexpected(reply) }
                        continuation.yield(sample)
                        if end { break }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Metadata of a guest path.
    public func stat(_ path: String, followSymlinks: Bool = true) async throws(AgentError) -> GuestFileStat {
        let reply = try await unary(
            .with {
                $0.stat = .with {
                    $0.path = path; $0.noFollow = !followSymlinks
                }
            })
        guard case .stat(let stat) = reply.kind else { throw unexpected(reply) }
        return stat
    }

    /// Entries of a guest directory, sorted by name.
    public func list(_ path: String) async throws(AgentError) -> [GuestFileStat] {
        let stream = try open(.with { $0.list = .with { $0.path = path } })
        var entries: [GuestFileStat] = []
        do throws(AgentError) {
            while let (reply, end) = try await nextReply(stream) {
                guard case .listing(let listing) = reply.kind else { throw unexpected(reply) }
                entries += listing.entries
                if end { break }
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
                    $0.action = action; $0.delaySeconds = delay
                }
            })
        guard case .shutdown(let accepted) = reply.kind else { throw unexpected(reply) }
        return accepted
    }

    /// Gives up on a stream the agent may still be working on: RESET makes it stop (kill the
    /// process, drop the temp file) instead of waiting for data that never comes.
    func abandon(_ stream: UInt32) {
        mux.reset(stream: stream, error: AgentError(.cancelled, "abandoned by the host"))
        mux.release(stream: stream)
    }

    func unexpected(_ reply: Reply) -> AgentError {
        AgentError(.protocolViolation, "unexpected reply \(String(describing: reply.kind))")
    }
}
