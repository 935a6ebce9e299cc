import NIOCore
import Synchronization

/// Writes a multiplexer's outbound frames from its channel's event loop.
///
/// A task that queues a frame schedules at most one drain on the loop, which writes everything
/// ready while the channel is writable and flushes once. There is no writer task between the
/// multiplexer and the channel, so a frame costs one thread hop to reach the socket instead of
/// two. When the channel stops being writable the drain stops; it resumes when the channel
/// becomes writable again, so frames wait in the multiplexer's bounded queues, not in NIO.
public final class EventLoopWriter: Sendable {
    private let mux: Multiplexer
    private let channel: any Channel
    private let scheduled = Atomic<Bool>(false)
    private let closeGrace: TimeAmount?
    private let graceStarted = Atomic<Bool>(false)
    private let completion = Mutex<Completion>(Completion())

    private struct Completion {
        var done = false
        var result: AgentError?
        var waiter: CheckedContinuation<Void, any Error>?
    }

    private init(mux: Multiplexer, channel: any Channel, closeGrace: TimeAmount?) {
        self.mux = mux
        self.channel = channel
        self.closeGrace = closeGrace
    }

    /// Writes until the session is closed and every queued frame is written. Throws when a write
    /// fails or the channel closes first (the multiplexer is then closed too).
    ///
    /// With `closeGrace`, the last frames of a closed session (GOAWAY and whatever control frames
    /// precede it) get that long to be written; then the channel is closed. A peer that stopped
    /// reading would otherwise keep the connection, and whoever waits for it, forever.
    public static func run(_ mux: Multiplexer, channel: any Channel, closeGrace: TimeAmount? = nil) async throws {
        let writer = EventLoopWriter(mux: mux, channel: channel, closeGrace: closeGrace)
        let handler = WritabilityHandler(writer: writer)
        try await channel.pipeline.addHandler(handler, position: .first).get()
        // One channel can carry several sessions in turn (virtio-serial): remove this one's handler.
        defer { channel.pipeline.removeHandler(handler, promise: nil) }
        let responder = try? await channel.pipeline.handler(type: PingResponder.self).get()
        responder?.attach(mux)
        defer { responder?.attach(nil) }
        channel.closeFuture.whenComplete { _ in
            writer.finish(AgentError(.closed, "connection closed"))
        }
        mux.setOutboundHook { [writer] in writer.kick() }
        defer { mux.setOutboundHook(nil) }
        writer.kick()
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let ready = writer.completion.withLock { state -> Result<Void, any Error>? in
                if state.done { return state.result.map { .failure($0) } ?? .success(()) }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }

    /// Schedules a drain on the event loop unless one is already pending.
    func kick() {
        guard !scheduled.exchange(true, ordering: .acquiringAndReleasing) else { return }
        channel.eventLoop.execute { self.drain() }
    }

    private func drain() {
        scheduled.store(false, ordering: .releasing)
        if let closeGrace, mux.closedError != nil, !graceStarted.exchange(true, ordering: .relaxed) {
            channel.eventLoop.scheduleTask(in: closeGrace) { [self] in
                guard !completion.withLock({ $0.done }) else { return }
                finish(AgentError(.closed, "the peer did not read the session's last frames"))
                channel.close(promise: nil)
            }
        }
        var wrote = false
        defer { if wrote { channel.flush() } }
        while channel.isWritable {
            let (batch, finished) = mux.pollOutbound()
            if batch.isEmpty {
                if finished {
                    if wrote {
                        channel.flush()
                        wrote = false
                    }
                    finish(nil)
                }
                return
            }
            for frame in batch.dropLast() { channel.write(frame, promise: nil) }
            let promise = channel.eventLoop.makePromise(of: Void.self)
            channel.write(batch.last!, promise: promise)
            promise.futureResult.whenFailure { [self] error in
                let failure = AgentError(.closed, "write failed: \(error)")
                mux.close(failure)
                finish(failure)
            }
            wrote = true
        }
    }

    private func finish(_ error: AgentError?) {
        let waiter = completion.withLock { state -> CheckedContinuation<Void, any Error>? in
            guard !state.done else { return nil }
            state.done = true
            state.result = error
            defer { state.waiter = nil }
            return state.waiter
        }
        if let error { waiter?.resume(throwing: error) } else { waiter?.resume() }
    }

    /// Restarts the drain when the channel becomes writable again.
    private final class WritabilityHandler: ChannelInboundHandler, RemovableChannelHandler, Sendable {
        typealias InboundIn = Any
        let writer: EventLoopWriter
        init(writer: EventLoopWriter) { self.writer = writer }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if context.channel.isWritable { writer.kick() }
            context.fireChannelWritabilityChanged()
        }
    }
}

/// Answers the current session's PINGs on the event loop, ahead of the async reader.
///
/// A PING needs nothing from the session but its id, so answering it where it is decoded keeps
/// round-trip measurements and keepalives independent of how busy the session's tasks are. The
/// multiplexer still learns that the peer is alive. PINGs of other sessions, oversized ones and
/// everything else pass through unchanged, and so does every PING while the connection is not
/// writable: a peer that floods PINGs without reading its PONGs then meets the multiplexer's
/// control-queue bound and transport backpressure instead of growing NIO's write buffer.
public final class PingResponder: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    /// Decoder output: frames and notes about skipped input.
    public typealias InboundIn = FrameEvent
    /// Everything but the PINGs answered here, passed on unchanged.
    public typealias InboundOut = FrameEvent
    /// PONG frames.
    public typealias OutboundOut = Frame

    private let current = Mutex<Multiplexer?>(nil)

    /// Creates a responder that answers no session's PINGs until `attach(_:)`.
    public init() {}

    /// The session whose PINGs to answer (nil: none).
    public func attach(_ mux: Multiplexer?) {
        current.withLock { $0 = mux }
    }

    /// Answers a PING of the attached session with a PONG; passes everything else on.
    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .frame(let frame) = unwrapInboundIn(data), frame.type == .ping, frame.payload.readableBytes <= 64,
            context.channel.isWritable, let mux = current.withLock({ $0 }), mux.session == frame.session,
            mux.closedError == nil
        {
            mux.noteReceived()
            let pong = Frame(type: .pong, session: frame.session, payload: frame.payload)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
}
