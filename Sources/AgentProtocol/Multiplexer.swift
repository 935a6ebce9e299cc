import DequeModule
import NIOCore
import Synchronization

/// An event delivered on a stream.
public enum StreamEvent: Sendable {
    /// A protobuf message (MESSAGE frame payload).
    case message(ByteBuffer, end: Bool)
    /// Raw bytes on a channel; `endOfChannel` marks the channel's last frame.
    case data(ByteBuffer, channel: UInt8, endOfChannel: Bool, end: Bool)

    /// Credit this event consumed: its payload plus the fixed per-frame charge.
    var byteCount: Int {
        switch self {
        case .message(let b, _): b.readableBytes + Multiplexer.frameCharge
        case .data(let b, _, _, _): b.readableBytes + Multiplexer.frameCharge
        }
    }

    /// Whether the peer sends nothing more after this event.
    public var isEnd: Bool {
        switch self {
        case .message(_, let end): end
        case .data(_, _, _, let end): end
        }
    }
}

/// Session parameters one side announces to the other.
public struct SessionLimits: Sendable, Equatable {
    /// Bytes of DATA and MESSAGE payload this side buffers per stream before it grants credit.
    public var initialWindow: Int
    /// Largest frame payload this side accepts.
    public var maxFramePayload: Int
    /// Concurrent streams this side accepts (the agent's value governs).
    public var maxStreams: Int

    /// Creates limits.
    public init(initialWindow: Int = 2 << 20, maxFramePayload: Int = 256 << 10, maxStreams: Int = 256) {
        self.initialWindow = initialWindow
        self.maxFramePayload = maxFramePayload
        self.maxStreams = maxStreams
    }
}

/// Multiplexes streams over one session: stream table, per-stream credit in both directions, and
/// the outbound scheduler (control frames first, then data round-robin across streams).
///
/// Thread-safe. The connection feeds received frames to `receive(_:)`; one writer drains the
/// outbound frames, either an `EventLoopWriter` on the channel's event loop (`pollOutbound()`
/// after the outbound hook fires) or a task awaiting `nextOutbound()`. Memory is bounded: inbound bytes per stream never exceed the window this side
/// granted, outbound data per stream never exceeds the window the peer granted, and control
/// frames are bounded by `maxQueuedControlFrames` (the reader waits when it is full).
public final class Multiplexer: Sendable {
    /// The session id (frame header).
    public let session: UInt64
    /// What this side announced.
    public let local: SessionLimits
    /// What the peer announced.
    public let remote: SessionLimits
    /// Largest DATA payload this side sends.
    public let dataChunkSize: Int
    /// Bound on queued control frames.
    public let maxQueuedControlFrames = 4096
    /// Credit every DATA / MESSAGE frame costs on top of its payload, so that empty frames are
    /// bounded by the window too.
    public static let frameCharge = 64
    /// Bytes of outbound data queued per stream at most, whatever window the peer grants.
    public static let maxQueuedBytesPerStream = 4 << 20

    private let state: Mutex<State>
    private let lastReceived = Atomic<UInt64>(NIODeadline.now().uptimeNanoseconds)

    struct StreamState {
        var sendWindow: Int
        var sendWaiters: [CheckedContinuation<Void, any Error>] = []
        var inbox: Deque<StreamEvent> = []
        var inboxWaiter: CheckedContinuation<StreamEvent?, any Error>?
        var receiveRemaining: Int
        var consumedUnacknowledged = 0
        var remoteEnded = false
        var localEnded = false
        var queuedFrames = 0
        var queuedBytes = 0
        /// The local side is done with the stream; late frames from the peer are dropped.
        var finished = false
        var failure: AgentError?
    }

    struct State {
        var streams: [UInt32: StreamState] = [:]
        var control: Deque<Frame> = []
        var data: [UInt32: Deque<Frame>] = [:]
        var ready: Deque<UInt32> = []
        var writerWaiter: CheckedContinuation<Void, Never>?
        var outboundHook: (@Sendable () -> Void)?
        var controlSpaceWaiters: [CheckedContinuation<Void, Never>] = []
        var closed: AgentError?
        var drained = false
        var highestStream: UInt32 = 0
        var pings: [UInt64: CheckedContinuation<Void, any Error>] = [:]
    }

    /// Creates the multiplexer of an established session.
    public init(session: UInt64, local: SessionLimits, remote: SessionLimits) {
        self.session = session
        self.local = local
        self.remote = remote
        self.dataChunkSize = max(
            1024, min(256 << 10, remote.maxFramePayload, (remote.initialWindow - Self.frameCharge) / 2))
        self.state = Mutex(State())
    }

    // MARK: Streams

    /// Registers a stream. The host calls it before sending OPEN; the agent when it accepts OPEN.
    /// Throws when the id is not above every earlier id or the stream limit is reached.
    public func register(stream id: UInt32) throws(AgentError) {
        try state.withLock { (state) throws(AgentError) -> Void in
            if let closed = state.closed { throw closed }
            guard id != 0, id > state.highestStream else {
                throw AgentError(.protocolViolation, "stream id \(id) is not above \(state.highestStream)")
            }
            guard state.streams.count < local.maxStreams, state.streams.count < remote.maxStreams else {
                state.highestStream = id
                throw AgentError(.tooManyStreams, "at most \(min(local.maxStreams, remote.maxStreams)) streams")
            }
            state.highestStream = id
            state.streams[id] = StreamState(sendWindow: remote.initialWindow, receiveRemaining: local.initialWindow)
        }
    }

    /// Allocates and registers the next stream id (host side).
    public func allocateStream() throws(AgentError) -> UInt32 {
        try state.withLock { (state) throws(AgentError) -> UInt32 in
            if let closed = state.closed { throw closed }
            guard state.streams.count < remote.maxStreams else {
                throw AgentError(.tooManyStreams, "the agent accepts at most \(remote.maxStreams) streams")
            }
            let id = state.highestStream + 1
            state.highestStream = id
            state.streams[id] = StreamState(sendWindow: remote.initialWindow, receiveRemaining: local.initialWindow)
            return id
        }
    }

    /// Records that a valid frame of this session arrived (keepalive).
    public func noteReceived() {
        lastReceived.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed)
    }

    /// Time since the last valid frame of this session arrived.
    public var idleTime: TimeAmount {
        let last = lastReceived.load(ordering: .relaxed)
        return .nanoseconds(Int64(NIODeadline.now().uptimeNanoseconds &- last))
    }

    /// Sends a MESSAGE or DATA frame on a stream, waiting for credit first.
    public func send(
        stream id: UInt32, type: FrameType, flags: FrameFlags = [], payload: ByteBuffer
    ) async throws(AgentError) {
        let size = payload.readableBytes + Self.frameCharge
        precondition(type == .message || type == .data)
        if payload.readableBytes > remote.maxFramePayload || size > remote.initialWindow {
            throw AgentError(.invalidArgument, "frame payload of \(size) bytes exceeds the peer's limit")
        }
        let frame = Frame(type: type, flags: flags, session: session, stream: id, payload: payload)
        while true {
            if Task.isCancelled { throw AgentError(.cancelled, "cancelled") }
            let result: Result<Bool, AgentError> = state.withLock { state in
                if let closed = state.closed { return .failure(closed) }
                guard var stream = state.streams[id] else {
                    return .failure(AgentError(.closed, "stream \(id) is closed"))
                }
                if let failure = stream.failure { return .failure(failure) }
                if stream.localEnded { return .failure(AgentError(.closed, "stream \(id) already ended")) }
                guard stream.sendWindow >= size, stream.queuedBytes + size <= Self.maxQueuedBytesPerStream else {
                    return .success(false)
                }
                stream.sendWindow -= size
                if flags.contains(.endStream) { stream.localEnded = true }
                stream.queuedFrames += 1
                stream.queuedBytes += size
                state.streams[id] = stream
                if state.data[id, default: []].isEmpty { state.ready.append(id) }
                state.data[id, default: []].append(frame)
                return .success(true)
            }
            switch result {
            case .failure(let error): throw error
            case .success(true):
                wakeWriter()
                return
            case .success(false):
                do {
                    try await withTaskCancellationHandler {
                        try await withCheckedThrowingContinuation {
                            (continuation: CheckedContinuation<Void, any Error>) in
                            let resumeNow: AgentError?? = state.withLock { state in
                                if Task.isCancelled { return .some(AgentError(.cancelled, "cancelled")) }
                                if let closed = state.closed { return .some(closed) }
                                guard var stream = state.streams[id] else {
                                    return .some(AgentError(.closed, "closed"))
                                }
                                if let failure = stream.failure { return .some(failure) }
                                if stream.sendWindow >= size, stream.queuedBytes + size <= Self.maxQueuedBytesPerStream
                                {
                                    return .some(nil)
                                }
                                stream.sendWaiters.append(continuation)
                                state.streams[id] = stream
                                return nil
                            }
                            switch resumeNow {
                            case .none: break
                            case .some(.none): continuation.resume()
                            case .some(.some(let error)): continuation.resume(throwing: error)
                            }
                        }
                    } onCancel: {
                        let waiters = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
                            let waiters = state.streams[id]?.sendWaiters ?? []
                            state.streams[id]?.sendWaiters = []
                            return waiters
                        }
                        // Every sender on the stream wakes and re-checks; only the cancelled one stops.
                        for waiter in waiters { waiter.resume() }
                    }
                } catch {
                    throw (error as? AgentError) ?? AgentError(.cancelled, "\(error)")
                }
            }
        }
    }

    /// Sends a protobuf message on a stream.
    public func send(stream id: UInt32, message: ByteBuffer, end: Bool = false) async throws(AgentError) {
        try await send(stream: id, type: .message, flags: end ? [.endStream] : [], payload: message)
    }

    /// Sends bytes on a stream's channel, split into frames no larger than `dataChunkSize`.
    public func send(
        stream id: UInt32, data: ByteBuffer, channel: UInt8 = 0, endOfChannel: Bool = false, end: Bool = false
    ) async throws(AgentError) {
        var remaining = data
        repeat {
            let count = min(remaining.readableBytes, dataChunkSize)
            let chunk = remaining.readSlice(length: count)!
            var flags = FrameFlags.channel(channel)
            if remaining.readableBytes == 0 {
                if endOfChannel { flags.insert(.endOfChannel) }
                if end { flags.insert(.endStream) }
            }
            try await send(stream: id, type: .data, flags: flags, payload: chunk)
        } while remaining.readableBytes > 0
    }

    /// Waits for the next event on a stream; nil after the peer's END_STREAM was delivered.
    /// Consuming an event returns its bytes to the peer as credit.
    public func next(stream id: UInt32) async throws(AgentError) -> StreamEvent? {
        let event: StreamEvent?
        do {
            event = try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation {
                    (continuation: CheckedContinuation<StreamEvent?, any Error>) in
                    let outcome: Result<StreamEvent?, AgentError>? = state.withLock { state in
                        guard var stream = state.streams[id] else {
                            return .failure(state.closed ?? AgentError(.closed, "stream \(id) is closed"))
                        }
                        if let event = stream.inbox.popFirst() {
                            state.streams[id] = stream
                            return .success(event)
                        }
                        if let failure = stream.failure { return .failure(failure) }
                        if stream.remoteEnded { return .success(nil) }
                        if let closed = state.closed { return .failure(closed) }
                        if Task.isCancelled { return .failure(AgentError(.cancelled, "cancelled")) }
                        precondition(stream.inboxWaiter == nil, "one reader per stream")
                        stream.inboxWaiter = continuation
                        state.streams[id] = stream
                        return nil
                    }
                    if let outcome { continuation.resume(with: outcome) }
                }
            } onCancel: {
                let waiter = state.withLock { state -> CheckedContinuation<StreamEvent?, any Error>? in
                    let waiter = state.streams[id]?.inboxWaiter
                    state.streams[id]?.inboxWaiter = nil
                    return waiter
                }
                waiter?.resume(throwing: AgentError(.cancelled, "cancelled"))
            }
        } catch {
            throw (error as? AgentError) ?? AgentError(.cancelled, "\(error)")
        }
        if let event { consumed(stream: id, bytes: event.byteCount) }
        return event
    }

    private func consumed(stream id: UInt32, bytes: Int) {
        guard bytes > 0 else { return }
        let credit: Int? = state.withLock { state in
            // No credit for a stream the peer has ended or that has failed (it was reset).
            guard var stream = state.streams[id], !stream.remoteEnded, stream.failure == nil else { return nil }
            stream.consumedUnacknowledged += bytes
            var grant: Int?
            if stream.consumedUnacknowledged >= local.initialWindow / 4 {
                grant = stream.consumedUnacknowledged
                stream.receiveRemaining += stream.consumedUnacknowledged
                stream.consumedUnacknowledged = 0
            }
            state.streams[id] = stream
            return grant
        }
        if let credit {
            var payload = ByteBuffer()
            payload.writeInteger(UInt32(credit))
            enqueueControl(Frame(type: .window, session: session, stream: id, payload: payload))
        }
    }

    /// Aborts a stream: sends RESET to the peer and fails local waiters. A stream that had
    /// failed already (the peer's RESET, or `fail`) is forgotten without sending another RESET.
    public func reset(stream id: UInt32, error: AgentError) {
        let live = failStream(id, error: error, remove: true)
        if live {
            var payload = ByteBuffer()
            payload.writeBytes((try? error.wire.serializedBytes() as [UInt8]) ?? [])
            enqueueControl(Frame(type: .reset, session: session, stream: id, payload: payload))
        }
    }

    /// Fails a stream locally and sends RESET, keeping it (failed) until the local side releases
    /// it: events that arrived before stay readable, then the reader gets `error`; writers get it
    /// at once. Used for the local side's own verdicts (a stream error of the peer, a deadline, an
    /// oversized frame meant for the stream). Returns whether the stream existed and was not
    /// failed already.
    @discardableResult
    public func fail(stream id: UInt32, error: AgentError) -> Bool {
        let (fresh, sendWaiters, inboxWaiter) = state.withLock {
            state -> (Bool, [CheckedContinuation<Void, any Error>], CheckedContinuation<StreamEvent?, any Error>?) in
            guard var stream = state.streams[id], stream.failure == nil else { return (false, [], nil) }
            let waiters = stream.sendWaiters
            let reader = stream.inboxWaiter
            stream.sendWaiters = []
            stream.inboxWaiter = nil
            stream.failure = error
            stream.queuedFrames = 0
            stream.queuedBytes = 0
            state.streams[id] = stream
            if state.data.removeValue(forKey: id) != nil { state.ready.removeAll { $0 == id } }
            return (true, waiters, reader)
        }
        guard fresh else { return false }
        for waiter in sendWaiters { waiter.resume(throwing: error) }
        inboxWaiter?.resume(throwing: error)
        var payload = ByteBuffer()
        payload.writeBytes((try? error.wire.serializedBytes() as [UInt8]) ?? [])
        enqueueControl(Frame(type: .reset, session: session, stream: id, payload: payload))
        return true
    }

    /// Forgets a stream whose peer has ended it (host side, after reading the last event).
    public func release(stream id: UInt32) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            guard let stream = state.streams[id] else { return [] }
            state.streams[id] = nil
            if let queued = state.data.removeValue(forKey: id), !queued.isEmpty {
                state.ready.removeAll { $0 == id }
            }
            return stream.sendWaiters
        }
        for waiter in waiters { waiter.resume(throwing: AgentError(.closed, "stream \(id) released")) }
    }

    /// Number of live streams.
    public var streamCount: Int { state.withLock { $0.streams.count } }

    /// Fails a stream's waiters; returns whether it existed and had not failed before.
    @discardableResult
    private func failStream(_ id: UInt32, error: AgentError, remove: Bool) -> Bool {
        let (live, sendWaiters, inboxWaiter) = state.withLock {
            state -> (Bool, [CheckedContinuation<Void, any Error>], CheckedContinuation<StreamEvent?, any Error>?) in
            guard var stream = state.streams[id] else { return (false, [], nil) }
            let live = stream.failure == nil
            let waiters = stream.sendWaiters
            let reader = stream.inboxWaiter
            stream.sendWaiters = []
            stream.inboxWaiter = nil
            stream.failure = error
            stream.inbox.removeAll()
            if remove {
                state.streams[id] = nil
                if state.data.removeValue(forKey: id) != nil { state.ready.removeAll { $0 == id } }
            } else {
                state.streams[id] = stream
            }
            return (live, waiters, reader)
        }
        for waiter in sendWaiters { waiter.resume(throwing: error) }
        inboxWaiter?.resume(throwing: error)
        return live
    }

    // MARK: Inbound

    /// What the connection must do after `receive(_:)`.
    public enum ReceiveAction: Sendable, Equatable {
        case none
        /// A new stream was requested (agent side): payload is the `Request`.
        case open(stream: UInt32, request: ByteBuffer)
        /// The peer violated the protocol at session level; end the session.
        case fail(AgentError)
        /// The peer ended the session (GOAWAY).
        case goAway(AgentError)
    }

    /// Routes one received frame of this session.
    public func receive(_ frame: Frame) -> ReceiveAction {
        guard let type = frame.type else { return .none }  // unknown types are ignored
        switch type {
        case .welcome:
            return .none  // a repeated WELCOME answers a retransmitted HELLO
        case .hello:
            return .fail(AgentError(.protocolViolation, "unexpected HELLO inside a session"))
        case .ping:
            guard frame.payload.readableBytes <= 64 else {
                return .fail(AgentError(.protocolViolation, "ping payload over 64 bytes"))
            }
            enqueueControl(Frame(type: .pong, session: session, payload: frame.payload))
            return .none
        case .pong:
            guard frame.payload.readableBytes == 8,
                let id = frame.payload.getInteger(
                    at: frame.payload.readerIndex, as: UInt64.self)
            else { return .none }
            let waiter = state.withLock { $0.pings.removeValue(forKey: id) }
            waiter?.resume()
            return .none
        case .goAway:
            let error = decodeError(frame.payload) ?? AgentError(.closed, "peer ended the session")
            return .goAway(error)
        case .open:
            guard frame.stream != 0 else { return .fail(AgentError(.protocolViolation, "OPEN on stream 0")) }
            return .open(stream: frame.stream, request: frame.payload)
        case .window:
            guard frame.payload.readableBytes == 4,
                let credit = frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt32.self), credit > 0
            else { return .fail(AgentError(.protocolViolation, "malformed WINDOW frame")) }
            let waiters: [CheckedContinuation<Void, any Error>]? = state.withLock { state in
                guard var stream = state.streams[frame.stream] else { return [] }
                let updated = stream.sendWindow + Int(credit)
                guard updated <= Int(Int32.max) else { return nil }
                stream.sendWindow = updated
                let waiters = stream.sendWaiters
                stream.sendWaiters = []
                state.streams[frame.stream] = stream
                return waiters
            }
            guard let waiters else { return .fail(AgentError(.protocolViolation, "window overflow")) }
            for waiter in waiters { waiter.resume() }
            return .none
        case .reset:
            let error = decodeError(frame.payload) ?? AgentError(.cancelled, "stream reset by peer")
            // The stream stays (failed) so its reader gets the peer's error; queued output is dropped.
            failStream(frame.stream, error: error, remove: false)
            state.withLock { state in
                if state.data.removeValue(forKey: frame.stream) != nil {
                    state.ready.removeAll { $0 == frame.stream }
                }
                if var stream = state.streams[frame.stream] {
                    stream.queuedFrames = 0
                    stream.queuedBytes = 0
                    if stream.finished {
                        state.streams[frame.stream] = nil
                    } else {
                        state.streams[frame.stream] = stream
                    }
                }
            }
            return .none
        case .message, .data:
            let size = frame.payload.readableBytes + Self.frameCharge
            let end = frame.flags.contains(.endStream)
            let payload = Self.detached(frame.payload)
            let event: StreamEvent =
                type == .message
                ? .message(payload, end: end)
                : .data(
                    payload, channel: frame.flags.channel, endOfChannel: frame.flags.contains(.endOfChannel),
                    end: end)
            enum Outcome {
                case delivered(CheckedContinuation<StreamEvent?, any Error>?)
                case ignored
                case violation(String)
            }
            let outcome: Outcome = state.withLock { state in
                guard var stream = state.streams[frame.stream] else {
                    // Late frames for a stream that was reset or released are dropped.
                    return frame.stream <= state.highestStream ? .ignored : .violation("frame for unknown stream")
                }
                if stream.failure != nil || stream.finished { return .ignored }
                if stream.remoteEnded { return .violation("frame after END_STREAM on stream \(frame.stream)") }
                guard size <= stream.receiveRemaining else {
                    return .violation("stream \(frame.stream) exceeded its flow-control window")
                }
                stream.receiveRemaining -= size
                if end { stream.remoteEnded = true }
                if let waiter = stream.inboxWaiter {
                    stream.inboxWaiter = nil
                    state.streams[frame.stream] = stream
                    return .delivered(waiter)
                }
                stream.inbox.append(event)
                state.streams[frame.stream] = stream
                return .delivered(nil)
            }
            switch outcome {
            case .ignored: return .none
            case .violation(let message):
                if frame.stream <= state.withLock({ $0.highestStream }) {
                    // The reader still gets what arrived before the violation, then this error.
                    fail(stream: frame.stream, error: AgentError(.protocolViolation, message))
                    return .none
                }
                return .fail(AgentError(.protocolViolation, message))
            case .delivered(let waiter):
                waiter?.resume(returning: event)
                return .none
            }
        }
    }

    /// A payload that owns its memory when it is a small part of a larger receive buffer.
    ///
    /// A frame's payload is a slice of the buffer it was decoded from, and a queued slice keeps
    /// that whole buffer alive. A peer that puts each tiny frame next to a large one (a discarded
    /// oversized frame, say) would make every queued frame hold a large buffer, so memory would
    /// grow with what the peer sends instead of with the window. Copied when the storage is more
    /// than twice the frame's window cost, a queued payload holds at most twice what it is charged.
    static func detached(_ payload: ByteBuffer) -> ByteBuffer {
        guard payload.storageCapacity > 2 * (payload.readableBytes + frameCharge) else { return payload }
        var copy = ByteBufferAllocator().buffer(capacity: payload.readableBytes)
        var source = payload
        copy.writeBuffer(&source)
        return copy
    }

    private func decodeError(_ payload: ByteBuffer) -> AgentError? {
        guard let wire = try? Limiquantix_Agent_V1_Error(serializedBytes: Array(payload.readableBytesView)) else {
            return nil
        }
        return AgentError(wire: wire)
    }

    // MARK: Session level

    /// Sends a PING and waits for its PONG.
    ///
    /// Ids are random and non-zero, so a peer cannot answer a PING before it has read it (a PONG
    /// sent ahead with a guessed id would forge the round trip). Cancelling the task ends the wait.
    public func ping() async throws(AgentError) {
        let id = UInt64.random(in: 1...UInt64.max)
        do {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                    let failure: AgentError? = state.withLock { state in
                        if let closed = state.closed { return closed }
                        if Task.isCancelled { return AgentError(.cancelled, "cancelled") }
                        state.pings[id] = continuation
                        return nil
                    }
                    if let failure {
                        continuation.resume(throwing: failure)
                        return
                    }
                    var payload = ByteBuffer()
                    payload.writeInteger(id)
                    enqueueControl(Frame(type: .ping, session: session, payload: payload))
                }
            } onCancel: {
                let waiter = state.withLock { $0.pings.removeValue(forKey: id) }
                waiter?.resume(throwing: AgentError(.cancelled, "cancelled"))
            }
        } catch {
            throw (error as? AgentError) ?? AgentError(.cancelled, "\(error)")
        }
    }

    /// Sends a keepalive PING without waiting for the answer.
    public func sendKeepalive() {
        var payload = ByteBuffer()
        payload.writeInteger(UInt64(0))
        enqueueControl(Frame(type: .ping, session: session, payload: payload))
    }

    /// Queues a control frame ahead of all data.
    public func enqueueControl(_ frame: Frame) {
        let wake = state.withLock { state -> Bool in
            guard state.closed == nil || frame.type == .goAway else { return false }
            state.control.append(frame)
            return true
        }
        if wake { wakeWriter() }
    }

    /// Waits until the control queue has room; the reader calls it before `receive(_:)` so a peer
    /// that floods pings while not reading pongs is slowed down instead of growing the queue.
    public func waitForControlSpace() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state -> Bool in
                if state.control.count < maxQueuedControlFrames || state.closed != nil { return true }
                state.controlSpaceWaiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Ends the session: fails every stream and pending ping with `error`. When `goAway` is true a
    /// GOAWAY frame is queued first and the writer drains the control queue before finishing.
    /// Only the first close of a session sends GOAWAY; later ones change nothing on the wire.
    public func close(_ error: AgentError, goAway: Bool = false) {
        let (streams, pings, writer, spaceWaiters) = state.withLock { state in
            let first = state.closed == nil
            if first {
                state.closed = error
                if goAway {
                    var payload = ByteBuffer()
                    payload.writeBytes((try? error.wire.serializedBytes() as [UInt8]) ?? [])
                    state.control.append(Frame(type: .goAway, session: session, payload: payload))
                } else {
                    state.control.removeAll()
                }
            }
            state.data.removeAll()
            state.ready.removeAll()
            let ids = Array(state.streams.keys)
            let pings = Array(state.pings.values)
            state.pings.removeAll()
            let writer = state.writerWaiter
            state.writerWaiter = nil
            let space = state.controlSpaceWaiters
            state.controlSpaceWaiters = []
            return (ids, pings, writer, space)
        }
        for id in streams { failStream(id, error: error, remove: true) }
        for ping in pings { ping.resume(throwing: error) }
        for waiter in spaceWaiters { waiter.resume() }
        writer?.resume()
        state.withLock { $0.outboundHook }?()
    }

    /// The error that closed the session, if it is closed.
    public var closedError: AgentError? { state.withLock { $0.closed } }

    // MARK: Outbound

    private func wakeWriter() {
        let (waiter, hook) = state.withLock { state in
            let waiter = state.writerWaiter
            state.writerWaiter = nil
            return (waiter, state.outboundHook)
        }
        waiter?.resume()
        hook?()
    }

    /// True while frames are queued and not yet taken by the writer.
    public var hasQueuedOutbound: Bool {
        state.withLock { !$0.control.isEmpty || !$0.ready.isEmpty }
    }

    /// Installs a function called whenever frames become ready to write or the session closes
    /// (used by `EventLoopWriter`, which then calls `pollOutbound`). It may be called on any thread.
    public func setOutboundHook(_ hook: (@Sendable () -> Void)?) {
        state.withLock { $0.outboundHook = hook }
    }

    /// The next frames to write, control frames first, then up to `maxDataBytes` of data taken
    /// round-robin from the streams. Returns nil once the session is closed and drained.
    public func nextOutbound(maxDataBytes: Int = 1 << 20) async -> [Frame]? {
        while true {
            let (batch, finished) = pollOutbound(maxDataBytes: maxDataBytes)
            if !batch.isEmpty { return batch }
            if finished { return nil }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if !state.control.isEmpty || !state.ready.isEmpty || state.closed != nil { return true }
                    state.writerWaiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        }
    }

    /// Takes the frames that are ready to write without waiting: control frames first, then up to
    /// `maxDataBytes` of data round-robin. `finished` is true once the session is closed and
    /// nothing is left to write.
    public func pollOutbound(maxDataBytes: Int = 1 << 20) -> (batch: [Frame], finished: Bool) {
        let (batch, spaceWaiters, finished, senders) = state.withLock {
            state -> ([Frame], [CheckedContinuation<Void, Never>], Bool, [CheckedContinuation<Void, any Error>]) in
            var batch: [Frame] = []
            var senders: [CheckedContinuation<Void, any Error>] = []
            while let frame = state.control.popFirst() { batch.append(frame) }
            var budget = maxDataBytes
            while budget > 0, let id = state.ready.popFirst() {
                guard var queue = state.data[id], let frame = queue.popFirst() else { continue }
                budget -= frame.payload.readableBytes
                batch.append(frame)
                if queue.isEmpty {
                    state.data[id] = nil
                } else {
                    state.data[id] = queue
                    state.ready.append(id)
                }
                if var stream = state.streams[id] {
                    stream.queuedFrames -= 1
                    stream.queuedBytes -= frame.payload.readableBytes + Self.frameCharge
                    senders += stream.sendWaiters
                    stream.sendWaiters = []
                    // A finished stream whose frames are all written is forgotten.
                    if stream.finished && stream.queuedFrames == 0 {
                        state.streams[id] = nil
                    } else {
                        state.streams[id] = stream
                    }
                }
            }
            let waiters = state.controlSpaceWaiters
            state.controlSpaceWaiters = []
            return (batch, waiters, batch.isEmpty && state.closed != nil, senders)
        }
        for waiter in spaceWaiters { waiter.resume() }
        for sender in senders { sender.resume() }
        return (batch, finished)
    }

    /// Marks the agent's side of a finished stream; the stream is forgotten once its queued
    /// frames are written (agent side, after the handler returned).
    public func finish(stream id: UInt32) {
        state.withLock { state in
            guard var stream = state.streams[id] else { return }
            stream.finished = true
            stream.localEnded = true
            stream.inbox.removeAll()
            if stream.queuedFrames == 0 {
                state.streams[id] = nil
            } else {
                state.streams[id] = stream
            }
        }
    }
}
