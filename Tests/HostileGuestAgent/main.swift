// lqx-hostile-agent: a misbehaving agent for the test guest image (never shipped in a package).
//
// The test guest image's initramfs-hostile.cpio runs it instead of lqx-agent.
// It speaks the handshake like the real agent on the virtio-serial port, then plays one hostile
// scenario per session, in turn, until the host gives up on the session; the host reconnects and
// the next session gets the next scenario. Blocking I/O on the port, one thread.

import AgentProtocol
import Glibc
import NIOCore

let portPath = "/dev/virtio-ports/org.limiquantix.agent.0"

/// The port: frames in and out, and whether the host is still there.
final class Port {
    let fd: Int32
    var buffer = ByteBuffer()
    /// The host's window per stream and the credit granted since.
    var hostWindow = 0
    var credit: [UInt32: Int] = [:]

    init() {
        var fd: Int32 = -1
        while fd < 0 {
            fd = open(portPath, O_RDWR | O_NOCTTY | O_CLOEXEC)
            if fd < 0 { usleep(200_000) }
        }
        self.fd = fd
    }

    /// Whether the host end is connected (POLLHUP while it is not).
    var hostConnected: Bool {
        var p = pollfd(fd: fd, events: 0, revents: 0)
        _ = poll(&p, 1, 0)
        return p.revents & Int16(POLLHUP) == 0
    }

    @discardableResult
    func write(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    @discardableResult
    func send(_ frames: [Frame]) -> Bool {
        var bytes: [UInt8] = []
        for frame in frames { bytes += frame.encoded().readableBytesView }
        return write(bytes)
    }

    /// The next frame within `ms`, or nil (timeout, or no host: then it sleeps instead of spinning).
    func next(ms: Int32) -> Frame? {
        var waited: Int32 = 0
        while true {
            while true {
                switch FrameDecoder.next(from: &buffer, maximumPayload: FrameFormat.maximumPayload) {
                case .frame(let frame):
                    if frame.type == .window,
                        let grant = frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt32.self)
                    {
                        credit[frame.stream, default: hostWindow] += Int(grant)
                    }
                    return frame
                case .needMoreData: break
                default: continue
                }
                break
            }
            if waited >= ms { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let step = min(ms - waited, 100)
            _ = poll(&p, 1, step)
            waited += step
            if p.revents & Int16(POLLHUP) != 0 {
                usleep(100_000)
                continue
            }
            guard p.revents & Int16(POLLIN) != 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &chunk, chunk.count)
            if n > 0 { buffer.writeBytes(chunk[0..<n]) } else { usleep(100_000) }
        }
    }

    /// Sends `frame` once the host's credit allows; answers nothing else meanwhile. False when no
    /// credit came within `ms` or the host went away.
    func sendWithinCredit(_ frame: Frame, ms: Int32) -> Bool {
        let cost = frame.payload.readableBytes + Multiplexer.frameCharge
        var waited: Int32 = 0
        while credit[frame.stream, default: hostWindow] < cost {
            guard waited < ms, hostConnected else { return false }
            _ = next(ms: 20)
            waited += 20
        }
        credit[frame.stream, default: hostWindow] -= cost
        return send([frame])
    }
}

func log(_ text: String) {
    let line = "lqx-hostile-agent: \(text)\n"
    _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
}

func reply(_ session: UInt64, _ stream: UInt32, _ reply: Reply, end: Bool = false) -> Frame {
    Frame(type: .message, flags: end ? [.endStream] : [], session: session, stream: stream, payload: reply.buffer())
}

let info = Reply.with {
    $0.info = .with {
        $0.agentVersion = "hostile-0"
        $0.protocolVersion = 1
        $0.hostname = "hostile"
        $0.os.prettyName = "Hostile"
    }
}

func sample(interfaces: Int) -> Reply {
    .with {
        $0.telemetry = .with {
            $0.cpuCount = 1
            $0.memory.totalBytes = 1 << 30
            $0.interfaces = (0..<interfaces).map { i in
                .with {
                    $0.name = "eth\(i)"; $0.rxBytes = UInt64(i)
                }
            }
        }
    }
}

/// Answers a PING like a live agent (so keepalive does not end the session).
func answerPing(_ port: Port, _ frame: Frame, _ session: UInt64) {
    if frame.type == .ping { port.send([Frame(type: .pong, session: session, payload: frame.payload)]) }
}

/// Answers PINGs and requests as an agent would (info for every request but a telemetry
/// subscription), collecting the subscriptions' streams for the scenario to abuse.
func serveLikeAnAgent(_ port: Port, _ frame: Frame, _ session: UInt64, subscriptions: inout [UInt32]) {
    answerPing(port, frame, session)
    guard frame.type == .open, let request = try? Request(payload: frame.payload) else { return }
    if case .telemetry(let t) = request.kind, t.intervalMs > 0 {
        subscriptions.append(frame.stream)
    } else {
        port.send([reply(session, frame.stream, info, end: true)])
    }
}

/// One hostile scenario: runs until the host ends the session (a HELLO of a new session arrives,
/// returned) or `seconds` pass.
typealias Scenario = (name: String, run: (Port, UInt64) -> Frame?)

/// The session being played (a retransmitted HELLO of it is not a new session).
nonisolated(unsafe) var currentSession: UInt64 = 0

func until(_ seconds: Int, _ port: Port, _ step: (Frame?) -> Bool) -> Frame? {
    let end = time(nil) + seconds
    while time(nil) < end {
        let frame = port.next(ms: 100)
        if let frame, frame.type == .hello, frame.session != currentSession { return frame }
        if !step(frame) { break }
    }
    return nil
}

let scenarios: [Scenario] = [
    // Floods PINGs, then stops reading: the host's PONGs fill the channel; the host must close.
    (
        "ping flood, then not reading",
        { port, session in
            let pings = (0..<3000).map { i -> Frame in
                var payload = ByteBuffer()
                payload.writeInteger(UInt64(i))
                return Frame(type: .ping, session: session, payload: payload)
            }
            port.send(pings)
            sleep(8)
            return nil
        }
    ),
    // Info as asked, then telemetry pushed as fast as credit allows (5,000 interfaces a sample).
    (
        "telemetry flood",
        { port, session in
            let big = sample(interfaces: 5000)
            var streams: [UInt32] = []
            return until(15, port) { frame in
                if let frame { serveLikeAnAgent(port, frame, session, subscriptions: &streams) }
                for stream in streams { _ = port.sendWithinCredit(reply(session, stream, big), ms: 50) }
                return port.hostConnected
            }
        }
    ),
    // Each small telemetry reply in the same write as a 256 KiB frame of another session.
    (
        "tiny replies next to large discarded frames",
        { port, session in
            let filler = Array(
                Frame(
                    type: .message, session: session &+ 1, stream: 1,
                    payload: ByteBuffer(repeating: 0, count: 256 << 10)
                )
                .encoded().readableBytesView)
            let small = sample(interfaces: 1)
            var streams: [UInt32] = []
            return until(15, port) { frame in
                if let frame { serveLikeAnAgent(port, frame, session, subscriptions: &streams) }
                for stream in streams {
                    let tiny = reply(session, stream, small)
                    let cost = tiny.payload.readableBytes + Multiplexer.frameCharge
                    guard port.credit[stream, default: port.hostWindow] >= cost else { continue }
                    port.credit[stream, default: port.hostWindow] -= cost
                    port.write(filler + Array(tiny.encoded().readableBytesView))
                }
                return port.hostConnected
            }
        }
    ),
    // Every request answered with a reply over the host's frame limit.
    (
        "oversized replies",
        { port, session in
            let huge = sample(interfaces: 25_000)
            return until(10, port) { frame in
                guard let frame else { return port.hostConnected }
                answerPing(port, frame, session)
                if frame.type == .open { port.send([reply(session, frame.stream, huge, end: true)]) }
                return true
            }
        }
    ),
    // Garbage without a valid frame of the session: keepalive must end it.
    (
        "garbage",
        { port, _ in
            var noise = [UInt8](repeating: 0, count: 1 << 20)
            for i in noise.indices { noise[i] = UInt8(truncatingIfNeeded: (i &* 2_654_435_761) >> 13) }
            let end = time(nil) + 8
            while time(nil) < end, port.hostConnected { port.write(noise) }
            return nil
        }
    ),
    // Protocol violations at once: the agent opens a stream (the host answers GOAWAY).
    (
        "violation",
        { port, session in
            port.send([Frame(type: .open, session: session, stream: 1, payload: ByteBuffer())])
            return until(5, port) { _ in true }
        }
    ),
]

log("starting; \(scenarios.count) scenarios, one per session")
let port = Port()
var round = 0
var pendingHello: Frame?
while true {
    let hello: Frame
    if let pending = pendingHello {
        hello = pending
        pendingHello = nil
    } else {
        guard let frame = port.next(ms: 1000), frame.type == .hello else { continue }
        hello = frame
    }
    guard let body = try? Hello(payload: hello.payload) else { continue }
    port.hostWindow = Int(body.initialWindow)
    port.credit = [:]
    let welcome = Welcome.with {
        $0.version = 1
        $0.agentVersion = "hostile-0"
        $0.initialWindow = 2 << 20
        $0.maxFramePayload = 256 << 10
        $0.maxStreams = 256
        $0.agentInstance = 7
    }
    port.send([Frame(type: .welcome, session: hello.session, payload: welcome.buffer())])
    currentSession = hello.session
    let scenario = scenarios[round % scenarios.count]
    round += 1
    log("session \(String(hello.session, radix: 16)): \(scenario.name)")
    pendingHello = scenario.run(port, hello.session)
}
