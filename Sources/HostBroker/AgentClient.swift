import AgentProtocol
import LQXModel
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// Broker settings for one agent.
public struct BrokerConfiguration: Sendable {
    /// Session timing and limits.
    public var session: SessionConfiguration
    /// Connection attempt timeout.
    public var connectTimeout: TimeAmount
    /// First and largest pause between reconnection attempts (doubling, with jitter).
    public var reconnectBackoff: ClosedRange<Duration>
    /// Name sent in HELLO.
    public var clientName: String
    /// How long an operation waits for the agent: for a reply (info, a telemetry sample, stat,
    /// shutdown, a ping, an exec's start, an upload's result) and, in a transfer or a listing, for
    /// the next piece of progress. The call then fails with `timeout` and the stream is reset.
    public var operationTimeout: Duration
    /// How long the last frames of a closed session (GOAWAY) may take to be written before the
    /// connection is closed regardless; a guest that stopped reading cannot hold the session.
    public var closeGrace: TimeAmount
    /// A session that lasted at least this long resets the reconnection backoff; one that ended
    /// sooner counts as a failure, so a guest that breaks every session at once is redialled at
    /// the backoff's pace, not as fast as it can answer HELLO.
    public var stableSession: Duration

    /// Creates a configuration with production defaults.
    public init(
        session: SessionConfiguration = SessionConfiguration(),
        connectTimeout: TimeAmount = .seconds(5),
        reconnectBackoff: ClosedRange<Duration> = .milliseconds(100)...(.seconds(5)),
        clientName: String = "lqx-broker/\(LimiquantixVersion.current)",
        operationTimeout: Duration = .seconds(30),
        closeGrace: TimeAmount = .seconds(1),
        stableSession: Duration = .seconds(10)
    ) {
        self.session = session
        self.connectTimeout = connectTimeout
        self.reconnectBackoff = reconnectBackoff
        self.clientName = clientName
        self.operationTimeout = operationTimeout
        self.closeGrace = closeGrace
        self.stableSession = stableSession
    }
}

/// Something that happened to an agent's session.
public enum SessionEvent: Sendable, Equatable {
    /// A session was established.
    case connected(agentVersion: String, agentInstance: UInt64, session: UInt64)
    /// The session ended; the client reconnects on its own.
    case disconnected(reason: String)
}

/// Keeps a session to one agent: dials, handshakes, reconnects with backoff, and hands out the
/// current `AgentSession`. Run it (it is a `Service`) and call `session()` for operations.
public final class AgentClient: Service, Sendable {
    /// The agent's address.
    public let address: AgentAddress
    let configuration: BrokerConfiguration
    let logger: Logger
    let group: any EventLoopGroup
    private let state = Mutex<State>(State())
    private let established = Atomic<Int>(0)
    private let eventContinuation: AsyncStream<SessionEvent>.Continuation
    /// Session events, in order; one consumer.
    public let events: AsyncStream<SessionEvent>

    struct State {
        var current: AgentSession?
        var waiters: [UInt64: CheckedContinuation<AgentSession, any Error>] = [:]
        var nextWaiter: UInt64 = 0
        var stopped = false
        var lastError: String?
    }

    /// Creates a client; nothing happens until `run()`.
    public init(
        address: AgentAddress, configuration: BrokerConfiguration = BrokerConfiguration(),
        logger: Logger = Logger(label: "lqx-broker"), group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.address = address
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "agent.address"] = "\(address)"
        self.logger = logger
        self.group = group
        (events, eventContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(256))
    }

    /// Connects and stays connected until cancelled or graceful shutdown.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var backoff = self.configuration.reconnectBackoff.lowerBound
            while !Task.isCancelled {
                let lasted = await self.connectOnce()
                if Task.isCancelled { break }
                if let lasted, lasted >= self.configuration.stableSession {
                    backoff = self.configuration.reconnectBackoff.lowerBound
                }
                let jitter = Double.random(in: 0.8...1.2)
                try? await Task.sleep(for: backoff * jitter)
                backoff = min(backoff * 2, self.configuration.reconnectBackoff.upperBound)
            }
        }
        let waiters = state.withLock { state in
            state.stopped = true
            let waiters = state.waiters.values
            state.waiters.removeAll()
            return Array(waiters)
        }
        for waiter in waiters { waiter.resume(throwing: AgentError(.closed, "the broker stopped")) }
        eventContinuation.finish()
    }

    /// Sessions established since the client started (each reconnection adds one).
    public var sessionsEstablished: Int { established.load(ordering: .relaxed) }

    /// The open session, if there is one now (never waits).
    public var currentSession: AgentSession? {
        state.withLock { state in state.current.flatMap { $0.mux.closedError == nil ? $0 : nil } }
    }

    /// The current session, waiting up to `timeout` for one to be established.
    public func session(timeout: Duration = .seconds(30)) async throws -> AgentSession {
        let id: UInt64 = state.withLock {
            $0.nextWaiter += 1
            return $0.nextWaiter
        }
        return try await withThrowingTaskGroup(of: AgentSession?.self) { group in
            group.addTask {
                try await withTaskCancellationHandler {
                    try await withCheckedThrowingContinuation { continuation in
                        let immediate: Result<AgentSession, AgentError>? = self.state.withLock { state in
                            if let current = state.current, current.mux.closedError == nil { return .success(current) }
                            if state.stopped { return .failure(AgentError(.closed, "the broker stopped")) }
                            // Cancelled before parking (the timeout won the race): the cancellation
                            // handler has run already and would never resume this waiter.
                            if Task.isCancelled { return .failure(AgentError(.cancelled, "cancelled")) }
                            state.waiters[id] = continuation
                            return nil
                        }
                        if let immediate { continuation.resume(with: immediate) }
                    }
                } onCancel: {
                    let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
                    waiter?.resume(throwing: CancellationError())
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            guard let session = first else {
                let last = self.state.withLock { $0.lastError }
                throw AgentError(
                    .unavailable,
                    "no session with the agent at \(self.address) within \(timeout)" + (last.map { ": \($0)" } ?? ""))
            }
            return session
        }
    }

    /// One connection: dial, handshake, serve until it ends. Returns how long the session lasted,
    /// or nil when none was established.
    private func connectOnce() async -> Duration? {
        var establishedAt: ContinuousClock.Instant?
        do {
            let channel = try await AgentDialer.dial(
                address, group: group, timeout: configuration.connectTimeout,
                maxPayload: configuration.session.limits.maxFramePayload)
            try await channel.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                let (mux, welcome) = try await self.handshake(
                    channel: channel.channel, iterator: &iterator, outbound: outbound)
                establishedAt = .now
                self.established.add(1, ordering: .relaxed)
                let session = AgentSession(
                    mux: mux, welcome: welcome, operationTimeout: self.configuration.operationTimeout,
                    logger: self.logger)
                self.publish(session)
                self.logger.info(
                    "agent session established",
                    metadata: [
                        "agent.session": "\(String(mux.session, radix: 16))",
                        "agent.version": "\(welcome.agentVersion)",
                    ])
                self.eventContinuation.yield(
                    .connected(
                        agentVersion: welcome.agentVersion, agentInstance: welcome.agentInstance, session: mux.session))
                await self.serve(mux: mux, channel: channel.channel, iterator: &iterator, outbound: outbound)
            }
        } catch {
            state.withLock { $0.lastError = "\(error)" }
            logger.debug("agent connection ended", metadata: ["error": "\(error)"])
        }
        let previous = state.withLock { state -> AgentSession? in
            let previous = state.current
            state.current = nil
            return previous
        }
        if let previous {
            let reason = previous.mux.closedError ?? AgentError(.closed, "connection closed")
            previous.mux.close(reason)
            eventContinuation.yield(.disconnected(reason: "\(reason)"))
        }
        return establishedAt.map { ContinuousClock.now - $0 }
    }

    private func publish(_ session: AgentSession) {
        let waiters = state.withLock { state in
            state.current = session
            state.lastError = nil
            let waiters = Array(state.waiters.values)
            state.waiters.removeAll()
            return waiters
        }
        for waiter in waiters { waiter.resume(returning: session) }
    }

    private func handshake(
        channel: any Channel, iterator: inout NIOAsyncChannelInboundStream<FrameEvent>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<Frame>
    ) async throws -> (Multiplexer, Welcome) {
        let session = UInt64.random(in: 1...UInt64.max)
        let limits = configuration.session.limits
        let hello = Hello.with {
            $0.minVersion = Handshake.supportedVersions.lowerBound
            $0.maxVersion = Handshake.supportedVersions.upperBound
            $0.client = configuration.clientName
            $0.initialWindow = UInt32(limits.initialWindow)
            $0.maxFramePayload = UInt32(limits.maxFramePayload)
            $0.keepaliveIntervalMs = UInt32(configuration.session.keepaliveInterval.nanoseconds / 1_000_000)
        }
        let helloFrame = Frame(type: .hello, session: session, payload: hello.buffer())
        let retry = configuration.session.helloRetry
        let timeout = configuration.session.handshakeTimeout
        // Repeat HELLO until WELCOME: on virtio-serial the agent may not be reading yet. Beside the
        // read loop below; cancelled by the `defer` when the handshake ends, however it ends.
        let retransmit = Task {
            let deadline = NIODeadline.now() + timeout
            while !Task.isCancelled {
                if NIODeadline.now() >= deadline {
                    channel.close(promise: nil)
                    return
                }
                try? await outbound.write(helloFrame)
                try? await Task.sleep(nanoseconds: UInt64(retry.nanoseconds))
            }
        }
        defer { retransmit.cancel() }
        while let event = try await iterator.next() {
            guard case .frame(let frame) = event, frame.session == session else { continue }
            switch frame.type {
            case .welcome:
                let welcome = try Welcome(payload: frame.payload)
                guard Handshake.supportedVersions.contains(welcome.version) else {
                    throw AgentError(.unsupportedVersion, "agent chose protocol version \(welcome.version)")
                }
                let remote = try Handshake.limits(of: welcome)
                let mux = Multiplexer(session: session, local: limits, remote: remote)
                mux.noteReceived()
                return (mux, welcome)
            case .goAway:
                let error = (try? WireError(payload: frame.payload)).map(AgentError.init(wire:))
                throw error ?? AgentError(.closed, "agent refused the session")
            default:
                continue
            }
        }
        throw AgentError(.timeout, "no WELCOME from the agent within \(timeout.nanoseconds / 1_000_000) ms")
    }

    private func serve(
        mux: Multiplexer, channel: any Channel, iterator: inout NIOAsyncChannelInboundStream<FrameEvent>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<Frame>
    ) async {
        let configuration = self.configuration.session
        let closeGrace = self.configuration.closeGrace
        let logger = self.logger
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await EventLoopWriter.run(mux, channel: channel, closeGrace: closeGrace)
                } catch {
                    mux.close(AgentError(.closed, "write failed: \(error)"))
                }
                // The session is over: end the connection so the reader below stops.
                try? await channel.close()
            }
            group.addTask { await SessionLoops.keepalive(mux, configuration: configuration) }
            do {
                while let event = try await iterator.next() {
                    // A closed session acts on nothing more (one GOAWAY, whatever was read after).
                    guard mux.closedError == nil else { continue }
                    let frame: Frame
                    switch event {
                    case .frame(let decoded): frame = decoded
                    case .discarded(let bytes, let reason):
                        logger.debug("discarded input", metadata: ["bytes": "\(bytes)", "reason": "\(reason)"])
                        continue
                    case .oversized(let header):
                        Self.failOversized(header, mux: mux, logger: logger)
                        continue
                    }
                    guard frame.session == mux.session else { continue }  // stale: an earlier session's bytes
                    mux.noteReceived()
                    await mux.waitForControlSpace()
                    switch mux.receive(frame) {
                    case .none: break
                    case .open:
                        mux.close(AgentError(.protocolViolation, "the agent opened a stream"), goAway: true)
                    case .fail(let error):
                        logger.warning("agent broke the protocol", metadata: ["error": "\(error)"])
                        mux.close(error, goAway: true)
                    case .goAway(let error):
                        mux.close(error)
                    }
                }
            } catch {
                mux.close(AgentError(.closed, "connection failed: \(error)"))
            }
            mux.close(AgentError(.closed, "the agent closed the connection"))
            group.cancelAll()
        }
    }

    /// A frame too large to accept was meant for a stream of this session: whoever waits on that
    /// stream gets a clear error now instead of waiting for a reply that was thrown away.
    static func failOversized(_ header: OversizedFrame, mux: Multiplexer, logger: Logger) {
        logger.debug(
            "discarded oversized frame",
            metadata: ["stream": "\(header.stream)", "bytes": "\(header.length)", "type": "\(header.rawType)"])
        guard header.session == mux.session, header.stream != 0 else { return }
        let what = FrameType(rawValue: header.rawType).map { "\($0)".uppercased() } ?? "type-\(header.rawType)"
        mux.fail(
            stream: header.stream,
            error: AgentError(
                .protocolViolation,
                "the agent sent a \(what) frame of \(header.length) bytes on stream \(header.stream), over the \(mux.local.maxFramePayload)-byte frame limit"
            ))
    }
}
