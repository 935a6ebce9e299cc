import LQXTestSupport
import NIOCore
import Synchronization
import Testing

@testable import AgentProtocol

private typealias Action = Multiplexer.ReceiveAction

/// A stream the agent side accepted.
struct Opened: Sendable {
    let stream: UInt32
    let request: ByteBuffer
}

/// What crossed the link between the two multiplexers.
struct FlowLog: Sendable {
    /// DATA and MESSAGE payload bytes per stream, host → agent and agent → host.
    var sentToAgent: [UInt32: Int] = [:]
    var sentToHost: [UInt32: Int] = [:]
    /// The same frames as flow control counts them (payload plus `Multiplexer.frameCharge` each).
    var chargedToAgent: [UInt32: Int] = [:]
    var chargedToHost: [UInt32: Int] = [:]
    /// WINDOW credit per stream granted by the agent (to the host) and by the host (to the agent).
    var creditFromAgent: [UInt32: Int] = [:]
    var creditFromHost: [UInt32: Int] = [:]
    /// Largest amount of charged bytes on a stream that the receiver had not yet returned as credit.
    var maxInFlightToAgent = 0
    var maxInFlightToHost = 0

    mutating func record(_ frame: Frame, toAgent: Bool) {
        let size = frame.payload.readableBytes
        let stream = frame.stream
        switch frame.type {
        case .data?, .message?:
            if toAgent {
                sentToAgent[stream, default: 0] += size
                chargedToAgent[stream, default: 0] += size + Multiplexer.frameCharge
                let inFlight = chargedToAgent[stream, default: 0] - creditFromAgent[stream, default: 0]
                maxInFlightToAgent = max(maxInFlightToAgent, inFlight)
            } else {
                sentToHost[stream, default: 0] += size
                chargedToHost[stream, default: 0] += size + Multiplexer.frameCharge
                let inFlight = chargedToHost[stream, default: 0] - creditFromHost[stream, default: 0]
                maxInFlightToHost = max(maxInFlightToHost, inFlight)
            }
        case .window?:
            let credit = Int(frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt32.self) ?? 0)
            if toAgent {
                creditFromHost[stream, default: 0] += credit
            } else {
                creditFromAgent[stream, default: 0] += credit
            }
        default:
            break
        }
    }
}

/// A host and an agent multiplexer connected by two pumps that carry encoded frames through
/// `FrameDecoder` (no sockets).
struct MuxPair: Sendable {
    let host: Multiplexer
    let agent: Multiplexer
    let opens: AsyncStream<Opened>
    let flow: Locked<FlowLog>

    /// Opens a stream like the host broker does: allocate, then queue OPEN.
    func open(_ request: Request) throws(AgentError) -> UInt32 {
        let id = try host.allocateStream()
        host.enqueueControl(Frame(type: .open, session: host.session, stream: id, payload: request.buffer()))
        return id
    }

    /// Moves frames from `source` to `destination` until `source` is closed and drained. The agent
    /// side registers streams on OPEN as the real agent does.
    static func pump(
        from source: Multiplexer, to destination: Multiplexer, toAgent: Bool,
        opens: AsyncStream<Opened>.Continuation, flow: Locked<FlowLog>
    ) async {
        var wire = ByteBuffer()
        while let batch = await source.nextOutbound() {
            for frame in batch {
                var bytes = frame.encoded()
                wire.writeBuffer(&bytes)
            }
            while true {
                let step = FrameDecoder.next(from: &wire, maximumPayload: FrameFormat.maximumPayload)
                guard case .frame(let frame) = step else {
                    if step != .needMoreData { Issue.record("lossless link produced \(step)") }
                    break
                }
                flow.mutex.withLock { $0.record(frame, toAgent: toAgent) }
                switch destination.receive(frame) {
                case .none:
                    break
                case .open(let stream, let request):
                    guard toAgent else {
                        destination.close(AgentError(.protocolViolation, "the agent opened a stream"), goAway: true)
                        break
                    }
                    do throws(AgentError) {
                        try destination.register(stream: stream)
                        opens.yield(Opened(stream: stream, request: request))
                    } catch {
                        destination.enqueueControl(
                            Frame(
                                type: .reset, session: destination.session, stream: stream, payload: error.wire.buffer()
                            ))
                    }
                case .fail(let error):
                    destination.close(error, goAway: true)
                case .goAway(let error):
                    destination.close(error)
                }
            }
            wire.discardReadBytes()
        }
    }
}

/// Limits used by most tests: 64 KiB windows, 16 KiB frames.
let agentLimits = SessionLimits(initialWindow: 64 << 10, maxFramePayload: 16 << 10, maxStreams: 4)
let hostLimits = SessionLimits(initialWindow: 64 << 10, maxFramePayload: 16 << 10, maxStreams: 16)

/// Runs `body` with a connected host/agent pair and tears it down afterwards.
func withMuxPair<R>(
    host: SessionLimits = hostLimits, agent: SessionLimits = agentLimits, _ body: (MuxPair) async throws -> R
) async throws -> R {
    let hostMux = Multiplexer(session: 42, local: host, remote: agent)
    let agentMux = Multiplexer(session: 42, local: agent, remote: host)
    let (opens, continuation) = AsyncStream.makeStream(of: Opened.self)
    let flow = Locked(FlowLog())
    let pair = MuxPair(host: hostMux, agent: agentMux, opens: opens, flow: flow)
    let toAgent = Task {
        await MuxPair.pump(from: hostMux, to: agentMux, toAgent: true, opens: continuation, flow: flow)
    }
    let toHost = Task {
        await MuxPair.pump(from: agentMux, to: hostMux, toAgent: false, opens: continuation, flow: flow)
    }
    let result: Result<R, any Error>
    do {
        result = .success(try await body(pair))
    } catch {
        result = .failure(error)
    }
    hostMux.close(AgentError(.closed, "test finished"))
    agentMux.close(AgentError(.closed, "test finished"))
    await toAgent.value
    await toHost.value
    continuation.finish()
    return try result.get()
}

/// Everything the multiplexer has queued for writing, without waiting when nothing is queued.
func drainOutbound(_ mux: Multiplexer) async -> [Frame] {
    let marker = Frame(
        rawType: 0xEE, flags: [], session: mux.session, stream: .max, payload: ByteBuffer(string: "drain marker"))
    mux.enqueueControl(marker)
    var frames = await mux.nextOutbound() ?? []
    frames.removeAll { $0 == marker }
    return frames
}

/// The `AgentError` thrown by `body`, nil when it returns.
func caught(_ body: () async throws -> Void) async -> AgentError? {
    do {
        try await body()
        return nil
    } catch let error as AgentError {
        return error
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}

/// Sends DATA until the stream's send window is used up (no peer reads it), returning what is left,
/// which is less than one frame of one byte costs.
@discardableResult
func exhaustSendWindow(_ mux: Multiplexer, stream: UInt32) async throws -> Int {
    var remaining = mux.remote.initialWindow
    while remaining > Multiplexer.frameCharge {
        let size = min(mux.dataChunkSize, remaining - Multiplexer.frameCharge)
        try await mux.send(stream: stream, type: .data, payload: ByteBuffer(repeating: 1, count: size))
        remaining -= size + Multiplexer.frameCharge
    }
    return remaining
}

/// Payload bytes of a MESSAGE or DATA frame that fill `window` exactly.
let fullWindowPayload = agentLimits.initialWindow - Multiplexer.frameCharge

private func dataFrame(stream: UInt32, size: Int, flags: FrameFlags = [], session: UInt64 = 9) -> Frame {
    Frame(
        type: .data, flags: flags, session: session, stream: stream, payload: ByteBuffer(repeating: 0x61, count: size))
}

private func resetFrame(stream: UInt32, error: AgentError, session: UInt64 = 9) -> Frame {
    Frame(type: .reset, session: session, stream: stream, payload: error.wire.buffer())
}

@Suite("Multiplexer", .timeLimit(.minutes(1)))
struct MultiplexerTests {
    // MARK: Streams end to end

    @Test func openMessageAndEndStream() async throws {
        try await withMuxPair { pair in
            let request = Request.with { $0.stat = .with { $0.path = "/etc/hostname" } }
            let id = try pair.open(request)
            #expect(id == 1)
            var opens = pair.opens.makeAsyncIterator()
            let opened = await opens.next()
            #expect(opened?.stream == 1)
            #expect(try opened.map { try Request(payload: $0.request) } == request)

            let control = Control.with { $0.signal = .with { $0.signal = 2 } }
            try await pair.host.send(stream: id, message: control.buffer())
            let first = try await pair.agent.next(stream: id)
            guard case .message(let payload, let end)? = first else {
                Issue.record("expected a message, got \(String(describing: first))")
                return
            }
            #expect(end == false)
            #expect(first?.isEnd == false)
            #expect(try Control(payload: payload) == control)

            let reply = Reply.with {
                $0.stat = .with {
                    $0.name = "/etc/hostname"
                    $0.size = 6
                }
            }
            try await pair.agent.send(stream: id, message: reply.buffer(), end: true)
            let answer = try await pair.host.next(stream: id)
            guard case .message(let replyPayload, let replyEnd)? = answer else {
                Issue.record("expected a message, got \(String(describing: answer))")
                return
            }
            #expect(replyEnd)
            #expect(answer?.isEnd == true)
            #expect(try Reply(payload: replyPayload) == reply)
            // After END_STREAM the stream yields nil, repeatedly.
            #expect(try await pair.host.next(stream: id) == nil)
            #expect(try await pair.host.next(stream: id) == nil)

            // The agent cannot send after its END_STREAM.
            let late = await caught { try await pair.agent.send(stream: id, message: reply.buffer()) }
            #expect(late?.code == .closed)

            #expect(pair.host.streamCount == 1)
            pair.host.release(stream: id)
            #expect(pair.host.streamCount == 0)
            pair.agent.finish(stream: id)
            #expect(await eventually { pair.agent.streamCount == 0 })

            // A second stream gets the next id.
            #expect(try pair.open(request) == 2)
            #expect(await opens.next()?.stream == 2)
        }
    }

    /// 1 MiB through a 64 KiB window, in both directions: complete, in order, in 16 KiB chunks,
    /// and the sender never has more than one window outstanding.
    @Test(arguments: [true, false])
    func dataLargerThanWindow(toAgent: Bool) async throws {
        try await withMuxPair { pair in
            let id = try pair.open(.with { $0.download = .with { $0.path = "/big" } })
            var opens = pair.opens.makeAsyncIterator()
            #expect(await opens.next()?.stream == id)
            let (sender, receiver) = toAgent ? (pair.host, pair.agent) : (pair.agent, pair.host)
            var rng = SplitMix64(seed: 0x1_0000)
            let data = rng.bytes(1 << 20)
            let sendTask = Task {
                try await sender.send(
                    stream: id, data: ByteBuffer(bytes: data), channel: 1, endOfChannel: true, end: true)
            }
            var received: [UInt8] = []
            received.reserveCapacity(data.count)
            var events = 0
            var flagged = 0
            while let event = try await receiver.next(stream: id) {
                guard case .data(let chunk, let channel, let endOfChannel, let end) = event else {
                    Issue.record("expected data, got \(event)")
                    break
                }
                #expect(channel == 1)
                #expect(chunk.readableBytes == 16 << 10)
                received += chunk.readableBytesView
                events += 1
                if end || endOfChannel {
                    flagged += 1
                    #expect(end && endOfChannel)
                    #expect(received.count == data.count)
                }
            }
            try await sendTask.value
            let intact = received == data
            #expect(intact)
            #expect(events == 64)
            #expect(flagged == 1)

            let log = pair.flow.value
            #expect((toAgent ? log.sentToAgent[id] : log.sentToHost[id]) == 1 << 20)
            let charged = (1 << 20) + 64 * Multiplexer.frameCharge
            #expect((toAgent ? log.chargedToAgent[id] : log.chargedToHost[id]) == charged)
            // The sender needed at least this much credit beyond its initial window.
            let credit = (toAgent ? log.creditFromAgent[id] : log.creditFromHost[id]) ?? 0
            #expect(credit >= charged - (64 << 10))
            let inFlight = toAgent ? log.maxInFlightToAgent : log.maxInFlightToHost
            #expect(inFlight <= 64 << 10)
            #expect(inFlight >= 16 << 10)
        }
    }

    @Test func receiverThatDoesNotReadBlocksSender() async throws {
        try await withMuxPair { pair in
            let id = try pair.open(.with { $0.upload = .with { $0.path = "/dst" } })
            var opens = pair.opens.makeAsyncIterator()
            #expect(await opens.next()?.stream == id)
            var rng = SplitMix64(seed: 77)
            let data = rng.bytes(256 << 10)
            let done = Locked(false)
            let sendTask = Task {
                try await pair.host.send(stream: id, data: ByteBuffer(bytes: data), end: true)
                done.mutex.withLock { $0 = true }
            }
            // As many whole chunks as fit in one window cross the link, then the sender waits.
            let chunk = pair.host.dataChunkSize
            #expect(chunk == 16 << 10)
            let fitting = (64 << 10) / (chunk + Multiplexer.frameCharge)
            #expect(await eventually { pair.flow.value.sentToAgent[id] == fitting * chunk })
            try await Task.sleep(for: .milliseconds(200))
            #expect(done.value == false)
            #expect(pair.flow.value.sentToAgent[id] == fitting * chunk)
            #expect(pair.flow.value.chargedToAgent[id] == fitting * (chunk + Multiplexer.frameCharge))
            #expect(pair.flow.value.creditFromAgent[id] == nil)

            var received: [UInt8] = []
            while let event = try await pair.agent.next(stream: id) {
                guard case .data(let chunk, _, _, _) = event else {
                    Issue.record("expected data, got \(event)")
                    break
                }
                received += chunk.readableBytesView
            }
            try await sendTask.value
            #expect(done.value)
            let intact = received == data
            #expect(intact)
            #expect(pair.flow.value.maxInFlightToAgent <= 64 << 10)
            #expect(pair.flow.value.maxInFlightToAgent >= fitting * (chunk + Multiplexer.frameCharge))
        }
    }

    // MARK: Flow control (receive side)

    @Test func frameBeyondWindowResetsStream() async {
        let agent = Multiplexer(session: 9, local: agentLimits, remote: hostLimits)
        try? agent.register(stream: 1)
        // A frame that uses the whole window (payload plus per-frame charge) is fine.
        #expect(agent.receive(dataFrame(stream: 1, size: fullWindowPayload)) == Action.none)
        #expect(await drainOutbound(agent).isEmpty)
        // One byte more is a violation: the stream is reset, the session survives.
        #expect(agent.receive(dataFrame(stream: 1, size: 1)) == Action.none)
        let out = await drainOutbound(agent)
        #expect(out.count == 1)
        #expect(out.first?.type == .reset)
        #expect(out.first?.stream == 1)
        let wire = try? WireError(payload: out.first?.payload ?? ByteBuffer())
        #expect(wire?.code == "protocol")
        #expect(wire?.message == "stream 1 exceeded its flow-control window")
        #expect(agent.closedError == nil)
        // Later frames of the reset stream are dropped without another RESET.
        #expect(agent.receive(dataFrame(stream: 1, size: 10)) == Action.none)
        #expect(await drainOutbound(agent).isEmpty)
        // The stream stays, failed, until its reader is done: what arrived before the violation is
        // still read, then the protocol error (not a generic "closed").
        #expect(agent.streamCount == 1)
        let first = try? await agent.next(stream: 1)
        #expect(first.map { $0.byteCount } == fullWindowPayload + Multiplexer.frameCharge)
        let error = await caught { _ = try await agent.next(stream: 1) }
        #expect(error?.code == .protocolViolation)
        #expect(error?.message == "stream 1 exceeded its flow-control window")
        agent.release(stream: 1)
        #expect(agent.streamCount == 0)

        // A single frame larger than the whole window.
        try? agent.register(stream: 2)
        #expect(agent.receive(dataFrame(stream: 2, size: fullWindowPayload + 1)) == Action.none)
        #expect(await drainOutbound(agent).map(\.stream) == [2])
        // Releasing a stream that failed this way sends no second RESET.
        agent.reset(stream: 2, error: AgentError(.cancelled, "abandoned"))
        #expect(await drainOutbound(agent).isEmpty)
        #expect(agent.streamCount == 0)
    }

    /// Every MESSAGE/DATA frame costs `frameCharge` on top of its payload, so even empty frames
    /// are bounded by the window.
    @Test func emptyFramesAreBoundedByWindow() async {
        let agent = Multiplexer(session: 9, local: agentLimits, remote: hostLimits)
        try? agent.register(stream: 1)
        let fitting = agentLimits.initialWindow / Multiplexer.frameCharge
        for index in 0..<fitting {
            #expect(agent.receive(dataFrame(stream: 1, size: 0)) == Action.none, "frame \(index)")
        }
        #expect(await drainOutbound(agent).isEmpty)
        #expect(agent.receive(dataFrame(stream: 1, size: 0)) == Action.none)
        #expect(await drainOutbound(agent).map(\.type) == [.reset])
    }

    @Test func frameAfterEndStreamResetsStream() async {
        let agent = Multiplexer(session: 9, local: agentLimits, remote: hostLimits)
        try? agent.register(stream: 1)
        #expect(agent.receive(dataFrame(stream: 1, size: 5, flags: .endStream)) == Action.none)
        #expect(agent.receive(dataFrame(stream: 1, size: 5)) == Action.none)
        let out = await drainOutbound(agent)
        #expect(out.map(\.type) == [.reset])
        #expect(
            (try? WireError(payload: out.first?.payload ?? ByteBuffer()))?.message
                == "frame after END_STREAM on stream 1")
    }

    @Test func consumingGrantsCredit() async throws {
        let agent = Multiplexer(session: 9, local: agentLimits, remote: hostLimits)
        try agent.register(stream: 1)
        let charge = Multiplexer.frameCharge
        // Credit is returned once a quarter of the window (16 KiB) has been consumed.
        #expect(agent.receive(dataFrame(stream: 1, size: 10_000)) == Action.none)
        _ = try await agent.next(stream: 1)
        #expect(await drainOutbound(agent).isEmpty)
        #expect(agent.receive(dataFrame(stream: 1, size: 7_000)) == Action.none)
        _ = try await agent.next(stream: 1)
        let credit = UInt32(17_000 + 2 * charge)
        let window = Frame(type: .window, session: 9, stream: 1, payload: ByteBuffer(bytes: bigEndianBytes(credit)))
        #expect(await drainOutbound(agent) == [window])
        // The credit makes room for a full window again.
        #expect(agent.receive(dataFrame(stream: 1, size: fullWindowPayload)) == Action.none)
        #expect(await drainOutbound(agent).isEmpty)
        _ = try await agent.next(stream: 1)
        let full = UInt32(agentLimits.initialWindow)
        #expect(
            await drainOutbound(agent) == [
                Frame(type: .window, session: 9, stream: 1, payload: ByteBuffer(bytes: bigEndianBytes(full)))
            ])
        // No credit is granted once END_STREAM has arrived, even for events read afterwards.
        #expect(agent.receive(dataFrame(stream: 1, size: 20_000)) == Action.none)
        #expect(agent.receive(dataFrame(stream: 1, size: 5, flags: .endStream)) == Action.none)
        let first = try await agent.next(stream: 1)
        #expect(first?.isEnd == false)
        let last = try await agent.next(stream: 1)
        #expect(last?.isEnd == true)
        #expect(try await agent.next(stream: 1) == nil)
        #expect(await drainOutbound(agent).isEmpty)
    }

    @Test func windowCreditWakesSender() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let id = try host.allocateStream()
        let remaining = try await exhaustSendWindow(host, stream: id)
        let needed = 100 + Multiplexer.frameCharge - remaining
        let done = Locked(false)
        let sendTask = Task {
            try await host.send(stream: id, data: ByteBuffer(repeating: 2, count: 100))
            done.mutex.withLock { $0 = true }
        }
        try await Task.sleep(for: .milliseconds(50))
        #expect(done.value == false)
        // One byte of credit short is not enough.
        var credit = ByteBuffer()
        credit.writeInteger(UInt32(needed - 1))
        #expect(host.receive(Frame(type: .window, session: 9, stream: id, payload: credit)) == Action.none)
        try await Task.sleep(for: .milliseconds(50))
        #expect(done.value == false)
        credit.clear()
        credit.writeInteger(UInt32(1))
        #expect(host.receive(Frame(type: .window, session: 9, stream: id, payload: credit)) == Action.none)
        try await sendTask.value
        #expect(done.value)
        let out = await drainOutbound(host)
        #expect(out.last?.payload == ByteBuffer(repeating: 2, count: 100))
        let total = out.map { $0.payload.readableBytes + Multiplexer.frameCharge }.reduce(0, +)
        #expect(total == agentLimits.initialWindow - remaining + 100 + Multiplexer.frameCharge)
    }

    /// However much window the peer grants, at most `maxQueuedBytesPerStream` wait for the writer.
    @Test func queuedBytesPerStreamAreBounded() async throws {
        let big = SessionLimits(initialWindow: 64 << 20, maxFramePayload: 1 << 20, maxStreams: 4)
        let host = Multiplexer(session: 9, local: hostLimits, remote: big)
        let id = try host.allocateStream()
        let frame = ByteBuffer(repeating: 7, count: 1 << 20)
        let fitting = Multiplexer.maxQueuedBytesPerStream / (frame.readableBytes + Multiplexer.frameCharge)
        for _ in 0..<fitting {
            try await host.send(stream: id, type: .data, payload: frame)
        }
        let done = Locked(false)
        let sendTask = Task {
            try await host.send(stream: id, type: .data, payload: frame)
            done.mutex.withLock { $0 = true }
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(done.value == false)
        // Writing one frame makes room.
        let batch = await host.nextOutbound(maxDataBytes: 1)
        #expect(batch?.count == 1)
        try await sendTask.value
        #expect(done.value)
    }

    // MARK: Stream ids

    @Test func unknownStreamAboveHighestFailsSession() async throws {
        let agent = Multiplexer(session: 9, local: agentLimits, remote: hostLimits)
        try agent.register(stream: 3)
        let violation = Action.fail(AgentError(.protocolViolation, "frame for unknown stream"))
        #expect(agent.receive(dataFrame(stream: 4, size: 1)) == violation)
        #expect(agent.receive(Frame(type: .message, session: 9, stream: 1000, payload: ByteBuffer())) == violation)
        // Ids at or below the highest one are late frames of finished streams: ignored.
        #expect(agent.receive(dataFrame(stream: 2, size: 1)) == Action.none)
        #expect(await drainOutbound(agent).isEmpty)
        #expect(agent.streamCount == 1)
    }

    @Test func lateFramesForReleasedStreamAreIgnored() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let id = try host.allocateStream()
        host.release(stream: id)
        #expect(host.streamCount == 0)
        var credit = ByteBuffer()
        credit.writeInteger(UInt32(100))
        for frame in [
            dataFrame(stream: id, size: 10),
            Frame(type: .message, flags: .endStream, session: 9, stream: id, payload: ByteBuffer(string: "x")),
            Frame(type: .window, session: 9, stream: id, payload: credit),
            resetFrame(stream: id, error: AgentError(.cancelled, "late")),
        ] {
            #expect(host.receive(frame) == Action.none, "\(frame)")
        }
        #expect(await drainOutbound(host).isEmpty)
        #expect(host.streamCount == 0)
        #expect(host.closedError == nil)
        let error = await caught { _ = try await host.next(stream: id) }
        #expect(error == AgentError(.closed, "stream 1 is closed"))
    }

    @Test func registerRules() throws {
        let agent = Multiplexer(
            session: 9, local: SessionLimits(initialWindow: 64 << 10, maxFramePayload: 16 << 10, maxStreams: 2),
            remote: hostLimits)
        try agent.register(stream: 1)
        try agent.register(stream: 2)
        do throws(AgentError) {
            try agent.register(stream: 3)
            Issue.record("registered a third stream")
        } catch {
            #expect(error.code == .tooManyStreams)
        }
        #expect(agent.streamCount == 2)
        agent.finish(stream: 1)
        #expect(agent.streamCount == 1)
        // The refused id 3 is used up: ids keep increasing.
        try agent.register(stream: 4)
        #expect(agent.streamCount == 2)
        agent.finish(stream: 2)
        for bad: UInt32 in [0, 4, 3] {
            do throws(AgentError) {
                try agent.register(stream: bad)
                Issue.record("registered stream \(bad)")
            } catch {
                #expect(error.code == .protocolViolation, "stream \(bad)")
            }
        }
        #expect(agent.streamCount == 1)
    }

    @Test func allocateRespectsAgentLimit() throws {
        let host = Multiplexer(
            session: 9, local: hostLimits,
            remote: SessionLimits(initialWindow: 64 << 10, maxFramePayload: 16 << 10, maxStreams: 2))
        #expect(try host.allocateStream() == 1)
        #expect(try host.allocateStream() == 2)
        do throws(AgentError) {
            _ = try host.allocateStream()
            Issue.record("allocated a third stream")
        } catch {
            #expect(error.code == .tooManyStreams)
        }
        host.release(stream: 1)
        #expect(try host.allocateStream() == 3)
    }

    // MARK: RESET

    @Test func resetDeliversErrorToPendingOperations() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let id = try host.allocateStream()
        try await exhaustSendWindow(host, stream: id)
        let reader = Task { try await host.next(stream: id) }
        let sender = Task { try await host.send(stream: id, data: ByteBuffer(repeating: 2, count: 1)) }
        try await Task.sleep(for: .milliseconds(200))  // let both start waiting
        let error = AgentError(.denied, "policy forbids exec")
        #expect(host.receive(resetFrame(stream: id, error: error)) == Action.none)
        #expect(await caught { _ = try await reader.value } == error)
        #expect(await caught { try await sender.value } == error)
        // The queued data of the reset stream is dropped and no RESET is echoed.
        #expect(await drainOutbound(host).isEmpty)
        host.release(stream: id)
        #expect(host.streamCount == 0)
    }

    /// The agent rejects an OPEN with RESET (e.g. too_many_streams), often before the host has
    /// started reading the stream; the host must still see the agent's error.
    @Test func resetBeforeReadIsReported() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let id = try host.allocateStream()
        let error = AgentError(.tooManyStreams, "at most 4 streams")
        #expect(host.receive(resetFrame(stream: id, error: error)) == Action.none)
        #expect(await caught { _ = try await host.next(stream: id) } == error)
        #expect(await caught { try await host.send(stream: id, message: ByteBuffer(string: "x")) } == error)
        // Frames that were in flight are dropped silently.
        #expect(host.receive(dataFrame(stream: id, size: 3)) == Action.none)
        #expect(await drainOutbound(host).isEmpty)
        host.release(stream: id)
        #expect(host.streamCount == 0)
    }

    /// After the agent's handler finished, late host frames are dropped instead of resetting the
    /// stream (which would discard the final reply still queued).
    @Test func framesAfterFinishAreIgnored() async throws {
        let agent = Multiplexer(session: 9, local: agentLimits, remote: hostLimits)
        try agent.register(stream: 1)
        let reply = ByteBuffer(string: "final reply")
        try await agent.send(stream: 1, message: reply, end: true)
        agent.finish(stream: 1)
        #expect(agent.streamCount == 1)  // until the final reply is written
        #expect(agent.receive(dataFrame(stream: 1, size: 10)) == Action.none)
        #expect(agent.receive(dataFrame(stream: 1, size: 10, flags: .endStream)) == Action.none)
        #expect(
            await drainOutbound(agent) == [
                Frame(type: .message, flags: .endStream, session: 9, stream: 1, payload: reply)
            ])
        #expect(agent.streamCount == 0)
        #expect(agent.receive(dataFrame(stream: 1, size: 10)) == Action.none)
        #expect(await drainOutbound(agent).isEmpty)
    }

    @Test func localResetSendsResetFrame() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let id = try host.allocateStream()
        try await host.send(stream: id, message: ByteBuffer(string: "queued"))
        let error = AgentError(.cancelled, "subscription ended")
        host.reset(stream: id, error: error)
        #expect(await drainOutbound(host) == [resetFrame(stream: id, error: error)])
        #expect(host.streamCount == 0)
        #expect(await caught { _ = try await host.next(stream: id) }?.code == .closed)
        // Resetting an unknown stream sends nothing.
        host.reset(stream: 77, error: error)
        #expect(await drainOutbound(host).isEmpty)
    }

    // MARK: Session level

    @Test func pingPongOverPair() async throws {
        try await withMuxPair { pair in
            try await pair.host.ping()
            try await pair.agent.ping()
            try await pair.host.ping()
        }
    }

    @Test func pingWaitsForMatchingPong() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let done = Locked(false)
        let pinger = Task {
            try await host.ping()
            done.mutex.withLock { $0 = true }
        }
        let out = await host.nextOutbound() ?? []
        #expect(out.map(\.type) == [.ping])
        // Ids are random and non-zero: a peer cannot answer before it has read the PING.
        let id = out.first?.payload.getInteger(at: out.first?.payload.readerIndex ?? 0, as: UInt64.self) ?? 0
        #expect(out.first?.payload.readableBytes == 8)
        #expect(id != 0 && id != 1)
        // Pongs with other ids (a keepalive answer, guessed sequential ids) do not complete it.
        for other: UInt64 in [0, 1, 2, id &+ 1] {
            #expect(
                host.receive(Frame(type: .pong, session: 9, payload: ByteBuffer(bytes: bigEndianBytes(other))))
                    == Action.none)
        }
        try await Task.sleep(for: .milliseconds(50))
        #expect(done.value == false)
        #expect(
            host.receive(Frame(type: .pong, session: 9, payload: out.first?.payload ?? ByteBuffer())) == Action.none)
        try await pinger.value
        #expect(done.value)
    }

    @Test func pingIsAnsweredWithSamePayload() async {
        let agent = Multiplexer(session: 9, local: agentLimits, remote: hostLimits)
        let payload = ByteBuffer(bytes: patternBytes(64))
        #expect(agent.receive(Frame(type: .ping, session: 9, payload: payload)) == Action.none)
        #expect(await drainOutbound(agent) == [Frame(type: .pong, session: 9, payload: payload)])
        #expect(
            agent.receive(Frame(type: .ping, session: 9, payload: ByteBuffer(bytes: patternBytes(65))))
                == Action.fail(AgentError(.protocolViolation, "ping payload over 64 bytes")))
        agent.sendKeepalive()
        #expect(
            await drainOutbound(agent) == [Frame(type: .ping, session: 9, payload: ByteBuffer(repeating: 0, count: 8))])
    }

    @Test func sessionLevelViolations() async {
        let agent = Multiplexer(session: 9, local: agentLimits, remote: hostLimits)
        try? agent.register(stream: 1)
        let empty = ByteBuffer()
        // HELLO inside a session is a session error; a repeated WELCOME (the answer to a
        // retransmitted HELLO) is ignored.
        let hello = agent.receive(Frame(type: .hello, session: 9, payload: empty))
        guard case .fail(let helloError) = hello else {
            Issue.record("HELLO inside a session gave \(hello)")
            return
        }
        #expect(helloError.code == .protocolViolation)
        #expect(agent.receive(Frame(type: .welcome, session: 9, payload: empty)) == Action.none)
        #expect(
            agent.receive(Frame(type: .open, session: 9, stream: 0, payload: empty))
                == Action.fail(AgentError(.protocolViolation, "OPEN on stream 0")))
        let malformedWindow = Action.fail(AgentError(.protocolViolation, "malformed WINDOW frame"))
        #expect(
            agent.receive(Frame(type: .window, session: 9, stream: 1, payload: ByteBuffer(bytes: [0, 0, 1])))
                == malformedWindow)
        #expect(
            agent.receive(Frame(type: .window, session: 9, stream: 1, payload: ByteBuffer(bytes: [0, 0, 0, 0])))
                == malformedWindow)
        // The send window may grow up to Int32.max and no further.
        let upToMax = UInt32(Int32.max) - UInt32(hostLimits.initialWindow)
        #expect(
            agent.receive(
                Frame(type: .window, session: 9, stream: 1, payload: ByteBuffer(bytes: bigEndianBytes(upToMax))))
                == Action.none)
        #expect(
            agent.receive(
                Frame(type: .window, session: 9, stream: 1, payload: ByteBuffer(bytes: bigEndianBytes(UInt32(1)))))
                == Action.fail(AgentError(.protocolViolation, "window overflow")))
        // Unknown frame types are ignored; OPEN and GOAWAY are reported.
        #expect(agent.receive(Frame(rawType: 0x7E, flags: [], session: 9, stream: 1, payload: empty)) == Action.none)
        let request = Request.with { $0.info = .init() }.buffer()
        #expect(
            agent.receive(Frame(type: .open, session: 9, stream: 5, payload: request))
                == Action.open(stream: 5, request: request))
        let bye = AgentError(.unavailable, "host shutting down")
        #expect(agent.receive(Frame(type: .goAway, session: 9, payload: bye.wire.buffer())) == Action.goAway(bye))
        #expect(
            agent.receive(Frame(type: .goAway, session: 9, payload: ByteBuffer(bytes: [0xFF])))
                == Action.goAway(AgentError(.closed, "peer ended the session")))
        #expect(agent.closedError == nil)  // receive() only reports; the caller closes
    }

    @Test func closeFailsPendingOperations() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let id = try host.allocateStream()
        try await exhaustSendWindow(host, stream: id)
        let reader = Task { try await host.next(stream: id) }
        let sender = Task { try await host.send(stream: id, data: ByteBuffer(repeating: 2, count: 1)) }
        let pinger = Task { try await host.ping() }
        try await Task.sleep(for: .milliseconds(100))
        let error = AgentError(.unavailable, "vm stopped")
        host.close(error)
        #expect(await caught { _ = try await reader.value } == error)
        #expect(await caught { try await sender.value } == error)
        #expect(await caught { try await pinger.value } == error)
        #expect(host.closedError == error)
        #expect(host.streamCount == 0)
        // Nothing more is written, and nothing new can start.
        #expect(await host.nextOutbound() == nil)
        #expect(await caught { _ = try host.allocateStream() } == error)
        #expect(await caught { try host.register(stream: 10) } == error)
        #expect(await caught { try await host.ping() } == error)
        #expect(await caught { try await host.send(stream: id, message: ByteBuffer()) } == error)
        // The first error stays.
        host.close(AgentError(.closed, "again"))
        #expect(host.closedError == error)
    }

    @Test func closeWithGoAwayDrainsControlFrames() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let id = try host.allocateStream()
        try await host.send(stream: id, message: ByteBuffer(string: "dropped"))
        host.sendKeepalive()
        let error = AgentError(.timeout, "peer silent")
        host.close(error, goAway: true)
        let out = await host.nextOutbound() ?? []
        #expect(out.map(\.type) == [.ping, .goAway])
        #expect(try WireError(payload: out.last?.payload ?? ByteBuffer()) == error.wire)
        #expect(await host.nextOutbound() == nil)
    }

    @Test func cancellationStopsWaiting() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let id = try host.allocateStream()
        try await exhaustSendWindow(host, stream: id)
        let reader = Task { try await host.next(stream: id) }
        let sender = Task { try await host.send(stream: id, data: ByteBuffer(repeating: 2, count: 1)) }
        try await Task.sleep(for: .milliseconds(50))
        reader.cancel()
        sender.cancel()
        #expect(await caught { _ = try await reader.value }?.code == .cancelled)
        #expect(await caught { try await sender.value }?.code == .cancelled)
        #expect(host.streamCount == 1)
        #expect(host.closedError == nil)
    }

    @Test func sendValidatesArguments() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let id = try host.allocateStream()
        let big = await caught {
            try await host.send(stream: id, message: ByteBuffer(repeating: 0, count: (16 << 10) + 1))
        }
        #expect(big?.code == .invalidArgument)
        let unknown = await caught { try await host.send(stream: 99, message: ByteBuffer()) }
        #expect(unknown == AgentError(.closed, "stream 99 is closed"))
        try await host.send(stream: id, message: ByteBuffer(), end: true)
        let ended = await caught { try await host.send(stream: id, message: ByteBuffer()) }
        #expect(ended == AgentError(.closed, "stream 1 already ended"))
        // Data is split into chunks of the peer's frame size; flags go on the last chunk only.
        let second = try host.allocateStream()
        _ = await drainOutbound(host)
        try await host.send(
            stream: second, data: ByteBuffer(repeating: 3, count: 40_000), channel: 1, endOfChannel: true)
        let out = await drainOutbound(host)
        #expect(out.map(\.payload.readableBytes) == [16_384, 16_384, 7_232])
        #expect(out.map(\.flags.rawValue) == [0x0100, 0x0100, 0x0102])
        // Empty data is one empty frame (e.g. to carry END_STREAM).
        try await host.send(stream: second, data: ByteBuffer(), end: true)
        #expect(await drainOutbound(host).map(\.flags) == [FrameFlags.endStream])
    }

    // MARK: Scheduling

    @Test func controlFramesGoBeforeQueuedData() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let id = try host.allocateStream()
        try await host.send(stream: id, message: ByteBuffer(string: "data first"))
        try await host.send(stream: id, data: ByteBuffer(string: "more"))
        host.sendKeepalive()
        let out = await host.nextOutbound()
        #expect(out?.map(\.type) == [.ping, .message, .data])
        #expect(out?.first?.stream == 0)
    }

    @Test func streamsAreServedRoundRobin() async throws {
        let host = Multiplexer(session: 9, local: hostLimits, remote: agentLimits)
        let first = try host.allocateStream()
        let second = try host.allocateStream()
        for index in 0..<3 {
            try await host.send(stream: first, message: ByteBuffer(string: "a\(index)"))
        }
        for index in 0..<3 {
            try await host.send(stream: second, message: ByteBuffer(string: "b\(index)"))
        }
        let batch = await host.nextOutbound()
        #expect(batch?.map(\.stream) == [1, 2, 1, 2, 1, 2])
        #expect(batch?.map { String(buffer: $0.payload) } == ["a0", "b0", "a1", "b1", "a2", "b2"])

        // With a budget of one byte each call returns a single frame, still alternating.
        for index in 0..<3 {
            try await host.send(stream: first, message: ByteBuffer(string: "c\(index)"))
            try await host.send(stream: second, message: ByteBuffer(string: "d\(index)"))
        }
        try await host.send(stream: first, message: ByteBuffer(string: "c3"))
        var order: [String] = []
        for _ in 0..<7 {
            let frames = await host.nextOutbound(maxDataBytes: 1) ?? []
            #expect(frames.count == 1)
            order += frames.map { String(buffer: $0.payload) }
        }
        #expect(order == ["c0", "d0", "c1", "d1", "c2", "d2", "c3"])
    }

    // MARK: Handshake

    @Test func negotiate() {
        #expect(Handshake.negotiate(min: 1, max: 1) == 1)
        #expect(Handshake.negotiate(min: 0, max: 1) == 1)
        #expect(Handshake.negotiate(min: 1, max: 9) == 1)
        #expect(Handshake.negotiate(min: 0, max: .max) == 1)
        #expect(Handshake.negotiate(min: 2, max: 9) == nil)
        #expect(Handshake.negotiate(min: 3, max: 1) == nil)
        #expect(Handshake.negotiate(min: 0, max: 0) == nil)
    }

    @Test func limitsValidation() throws {
        func welcome(window: UInt32, payload: UInt32, streams: UInt32 = 8) -> Welcome {
            .with {
                $0.initialWindow = window
                $0.maxFramePayload = payload
                $0.maxStreams = streams
            }
        }
        #expect(
            try Handshake.limits(of: welcome(window: 65_536, payload: 16_384))
                == SessionLimits(initialWindow: 65_536, maxFramePayload: 16_384, maxStreams: 8))
        #expect(
            try Handshake.limits(of: welcome(window: 4096, payload: 4096, streams: 1))
                == SessionLimits(initialWindow: 4096, maxFramePayload: 4096, maxStreams: 1))
        #expect(
            try Handshake.limits(of: welcome(window: UInt32(Int32.max), payload: 1 << 20)).initialWindow
                == Int(Int32.max))
        let rejected: [(window: UInt32, payload: UInt32, streams: UInt32)] = [
            (16_383, 16_384, 8),  // window below payload
            (4096, 4095, 8),  // payload below 4096
            (1 << 21, (1 << 20) + 1, 8),  // payload above the protocol maximum
            (UInt32(Int32.max) + 1, 4096, 8),  // window above Int32.max
            (65_536, 16_384, 0),  // no streams
        ]
        for values in rejected {
            do throws(AgentError) {
                _ = try Handshake.limits(
                    of: welcome(window: values.window, payload: values.payload, streams: values.streams))
                Issue.record("accepted \(values)")
            } catch {
                #expect(error.code == .protocolViolation, "\(values)")
            }
        }
        let hello = Hello.with {
            $0.initialWindow = 1 << 20
            $0.maxFramePayload = 256 << 10
        }
        #expect(
            try Handshake.limits(of: hello)
                == SessionLimits(initialWindow: 1 << 20, maxFramePayload: 256 << 10, maxStreams: Int(Int32.max)))
        let badHello = Hello.with {
            $0.initialWindow = 1000
            $0.maxFramePayload = 4096
        }
        #expect(throws: AgentError.self) { try Handshake.limits(of: badHello) }
    }

    /// Byte payloads are split into chunks that the peer accepts: no larger than its frame limit,
    /// and small enough that a chunk plus its per-frame charge fits in its window.
    @Test func dataChunkSizeFollowsPeerLimits() async throws {
        for payload in [4096, 16 << 10, 256 << 10, 1 << 20] {
            for window in [payload, payload + 1, 2 * payload, 1 << 20, 64 << 20, Int(Int32.max)] where window >= payload
            {
                let remote = SessionLimits(initialWindow: window, maxFramePayload: payload, maxStreams: 1)
                let host = Multiplexer(session: 1, local: hostLimits, remote: remote)
                let chunk = host.dataChunkSize
                #expect(chunk <= payload, "window \(window) payload \(payload)")
                #expect(chunk + Multiplexer.frameCharge <= window, "window \(window) payload \(payload)")
                #expect(chunk >= 1024, "window \(window) payload \(payload)")
                // A chunk is really accepted by send.
                let id = try host.allocateStream()
                let sent = await caught {
                    try await host.send(stream: id, type: .data, payload: ByteBuffer(repeating: 0, count: chunk))
                }
                #expect(sent == nil, "window \(window) payload \(payload)")
            }
        }
        // With the test limits (64 KiB window, 16 KiB frames) data goes in 16 KiB chunks.
        #expect(Multiplexer(session: 1, local: hostLimits, remote: agentLimits).dataChunkSize == 16 << 10)
    }
}
