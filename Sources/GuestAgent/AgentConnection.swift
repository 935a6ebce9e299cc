import AgentProtocol
import Logging
import NIOCore

/// Serves the protocol on one byte stream: answers HELLO, runs one session at a time, and starts
/// a new session whenever a new HELLO arrives (the host restarted or reconnected).
///
/// Frames of any other session are dropped; they are stale bytes from an earlier host
/// connection (virtio-serial keeps them) or from a peer that does not know the current session.
struct AgentConnection {
    let core: AgentCore
    let transport: String

    private final class Current: Sendable {
        let mux: Multiplexer
        let task: Task<Void, Never>
        let requests: AsyncStream<(UInt32, ByteBuffer)>.Continuation
        let welcome: Frame
        init(
            mux: Multiplexer, task: Task<Void, Never>, requests: AsyncStream<(UInt32, ByteBuffer)>.Continuation,
            welcome: Frame
        ) {
            self.mux = mux
            self.task = task
            self.requests = requests
            self.welcome = welcome
        }
    }

    /// Serves until the channel closes; always returns normally.
    func serve(_ channel: FramedChannel) async {
        // Reader, handlers and writer of this connection run on its channel's event loop.
        let executor = EventLoopExecutor(channel.channel.eventLoop)
        await withTaskExecutorPreference(executor) {
            await serve(channel, executor: executor)
        }
    }

    private func serve(_ channel: FramedChannel, executor: EventLoopExecutor) async {
        var logger = core.logger
        logger[metadataKey: "agent.transport"] = "\(transport)"
        do {
            try await channel.executeThenClose { inbound, outbound in
                var current: Current?
                var lastUnknownSessionNotice = NIODeadline.distantPast
                defer {
                    if let current {
                        current.mux.close(AgentError(.closed, "connection closed"))
                        current.requests.finish()
                        current.task.cancel()
                    }
                }
                for try await event in inbound {
                    guard case .frame(let frame) = event else {
                        if case .discarded(let bytes, let reason) = event {
                            core.metrics.discarded(bytes: bytes)
                            logger.debug("discarded input", metadata: ["bytes": "\(bytes)", "reason": "\(reason)"])
                        } else if case .oversized(let header) = event {
                            core.metrics.discarded(bytes: FrameFormat.headerSize)
                            logger.debug("discarded oversized frame", metadata: ["bytes": "\(header.length)"])
                        }
                        continue
                    }
                    if frame.type == .hello {
                        if let session = current, session.mux.session == frame.session, session.mux.closedError == nil {
                            // A retransmitted HELLO of the running session: answer again, change nothing.
                            session.mux.noteReceived()
                            await session.mux.waitForControlSpace()
                            session.mux.enqueueControl(session.welcome)
                            continue
                        }
                        let accepted: (Hello, SessionLimits, UInt32)
                        switch Self.validate(hello: frame) {
                        case .failure(let error):
                            logger.info("refused HELLO", metadata: ["error": "\(error)"])
                            try await outbound.write(
                                Frame(type: .goAway, session: frame.session, payload: error.wire.buffer()))
                            continue
                        case .success(let value):
                            accepted = value
                        }
                        if let old = current {
                            old.mux.close(AgentError(.closed, "superseded by a new session"))
                            old.requests.finish()
                            old.task.cancel()
                            await old.task.value
                            current = nil
                        }
                        current = startSession(
                            frame: frame, hello: accepted.0, remote: accepted.1, version: accepted.2,
                            channel: channel.channel, executor: executor, logger: logger)
                        continue
                    }
                    guard let session = current, frame.session == session.mux.session,
                        session.mux.closedError == nil
                    else {
                        core.metrics.staleFrame()
                        // Tell a host that lost its session (we restarted) to start a new one, at most once a second.
                        if frame.type != .goAway, NIODeadline.now() - lastUnknownSessionNotice > .seconds(1) {
                            lastUnknownSessionNotice = .now()
                            let error = AgentError(.closed, "unknown session; send HELLO")
                            try await outbound.write(
                                Frame(type: .goAway, session: frame.session, payload: error.wire.buffer()))
                        }
                        continue
                    }
                    session.mux.noteReceived()
                    await session.mux.waitForControlSpace()
                    switch session.mux.receive(frame) {
                    case .none:
                        break
                    case .open(let stream, let request):
                        do throws(AgentError) {
                            try session.mux.register(stream: stream)
                            session.requests.yield((stream, request))
                        } catch  where error.code == .tooManyStreams {
                            session.mux.enqueueControl(
                                Frame(
                                    type: .reset, session: frame.session, stream: stream, payload: error.wire.buffer()))
                        } catch {
                            session.mux.close(error, goAway: true)
                        }
                    case .fail(let error):
                        logger.info("session failed", metadata: ["error": "\(error)"])
                        session.mux.close(error, goAway: true)
                    case .goAway(let error):
                        logger.info("host ended the session", metadata: ["reason": "\(error)"])
                        session.mux.close(error)
                    }
                }
            }
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }

    static func validate(hello frame: Frame) -> Result<(Hello, SessionLimits, UInt32), AgentError> {
        do throws(AgentError) {
            guard frame.session != 0 else { throw AgentError(.protocolViolation, "session id 0 is reserved") }
            let hello = try Hello(payload: frame.payload)
            let remote = try Handshake.limits(of: hello)
            guard let version = Handshake.negotiate(min: hello.minVersion, max: hello.maxVersion) else {
                throw AgentError(
                    .unsupportedVersion,
                    "host speaks \(hello.minVersion)...\(hello.maxVersion), agent \(Handshake.supportedVersions)")
            }
            return .success((hello, remote, version))
        } catch {
            return .failure(error)
        }
    }

    private func startSession(
        frame: Frame, hello: Hello, remote: SessionLimits, version: UInt32, channel: any Channel,
        executor: EventLoopExecutor, logger: Logger
    ) -> Current {
        let local = self.core.configuration.session.limits
        let mux = Multiplexer(session: frame.session, local: local, remote: remote)
        var sessionLoggerSetup = logger
        sessionLoggerSetup[metadataKey: "agent.session"] = "\(String(frame.session, radix: 16))"
        let sessionLogger = sessionLoggerSetup
        sessionLogger.info("session started", metadata: ["host.client": "\(hello.client)", "version": "\(version)"])
        let welcome = Welcome.with {
            $0.version = version
            $0.agentVersion = AgentConfiguration.agentVersion
            $0.capabilities = AgentCore.capabilities
            $0.initialWindow = UInt32(local.initialWindow)
            $0.maxFramePayload = UInt32(local.maxFramePayload)
            $0.keepaliveIntervalMs = UInt32(self.core.configuration.session.keepaliveInterval.nanoseconds / 1_000_000)
            $0.maxStreams = UInt32(local.maxStreams)
            $0.agentInstance = self.core.instance
        }
        let welcomeFrame = Frame(type: .welcome, session: frame.session, payload: welcome.buffer())
        mux.enqueueControl(welcomeFrame)
        mux.noteReceived()
        let (requests, continuation) = AsyncStream<(UInt32, ByteBuffer)>.makeStream()
        let core = self.core
        let configuration = core.configuration.session
        let task = Task(executorPreference: executor) {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    do {
                        try await EventLoopWriter.run(mux, channel: channel)
                    } catch {
                        mux.close(AgentError(.closed, "write failed: \(error)"))
                    }
                    continuation.finish()
                }
                group.addTask {
                    await SessionLoops.keepalive(mux, configuration: configuration)
                }
                for await (stream, request) in requests {
                    group.addTask {
                        await core.handle(stream: stream, request: request, mux: mux, logger: sessionLogger)
                    }
                }
                group.cancelAll()
            }
            sessionLogger.info("session ended", metadata: ["reason": "\(mux.closedError.map { "\($0)" } ?? "-")"])
        }
        return Current(mux: mux, task: task, requests: continuation, welcome: welcomeFrame)
    }
}
