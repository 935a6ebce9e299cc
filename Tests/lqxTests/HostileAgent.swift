import AgentProtocol
import AgentTestSupport
import Foundation
import LQXTestSupport
import NIOCore
import Synchronization

/// A fake agent of our own: it completes the handshake the way the real one does and then plays
/// a hostile script against whatever host connected (`lqx --agent unix:PATH`, which runs the same
/// HostBroker code as the node daemon). Blocking sockets on a thread of its own.
final class HostileAgent: Sendable {
    let path: String
    private let listener: Int32
    private let done = Mutex<[String]>([])
    private let finished = Mutex<Bool>(false)

    /// Listens on `dir/hostile.sock`.
    init(dir: TempDir) throws {
        path = dir.file("hostile.sock")
        listener = try RawSocket.listen(path)
    }

    deinit { close(listener) }

    var address: String { "unix:\(path)" }

    /// Accepts one connection on a thread of its own, answers HELLO with WELCOME (after `welcome`
    /// changed it), then runs `script`. Failures of the script are kept in `failures`.
    func serve(
        welcome: @escaping @Sendable (inout Welcome) -> Void = { _ in },
        _ script: @escaping @Sendable (HostileConnection) throws -> Void
    ) {
        let listener = self.listener
        Thread.detachNewThread { [self] in
            defer { finished.withLock { $0 = true } }
            var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 20_000) > 0 else { return record("no host connected") }
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return record("accept failed") }
            let connection = HostileConnection(fd: fd)
            defer { connection.close() }
            guard connection.handshake(welcome) else { return record("no HELLO from the host") }
            do { try script(connection) } catch { record("script: \(error)") }
        }
    }

    /// Accepts every connection for `seconds`, each handshaken and given to `script` in turn;
    /// returns how many hosts connected.
    func serveEach(for seconds: Double, _ script: @escaping @Sendable (HostileConnection) throws -> Void) async -> Int {
        let listener = self.listener
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                let end = Date().addingTimeInterval(seconds)
                var count = 0
                while Date() < end {
                    var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                    guard poll(&poller, 1, 50) > 0 else { continue }
                    let fd = accept(listener, nil, nil)
                    guard fd >= 0 else { continue }
                    count += 1
                    let connection = HostileConnection(fd: fd)
                    if connection.handshake({ _ in }) { try? script(connection) }
                    connection.close()
                }
                continuation.resume(returning: count)
            }
        }
    }

    private func record(_ failure: String) { done.withLock { $0.append(failure) } }

    /// What went wrong on the agent's side.
    var failures: [String] { done.withLock { $0 } }
}

struct ScriptError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One host connection as the hostile agent sees it.
// @unchecked Sendable: used by the script's thread only.
final class HostileConnection: @unchecked Sendable {
    let fd: Int32
    private var buffer = ByteBuffer()
    private(set) var session: UInt64 = 0
    /// The host's announced window, and the credit the host granted per stream so far.
    private(set) var hostWindow = 0
    private var credit: [UInt32: Int] = [:]
    /// Frames read that the script did not ask for (PINGs, WINDOWs…), by type.
    private(set) var seen: [FrameType: Int] = [:]
    private var closed = false
    /// Whether PINGs read while waiting are answered, as a live agent does (the hostile cases
    /// keep the session alive); off for a guest that never answers one.
    var answersPings = true

    init(fd: Int32) { self.fd = fd }

    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    func handshake(_ edit: (inout Welcome) -> Void) -> Bool {
        guard let hello = next(timeoutMs: 10_000, where: { $0.type == .hello }),
            let body = try? Hello(payload: hello.payload)
        else { return false }
        session = hello.session
        hostWindow = Int(body.initialWindow)
        var welcome = Welcome.with {
            $0.version = 1
            $0.agentVersion = "hostile-0"
            $0.initialWindow = 2 << 20
            $0.maxFramePayload = 256 << 10
            $0.maxStreams = 256
            $0.agentInstance = 42
        }
        edit(&welcome)
        send(Frame(type: .welcome, session: session, payload: welcome.buffer()))
        return true
    }

    // MARK: Writing

    /// Writes bytes with MSG_NOSIGNAL (a host that closed must not kill the test with SIGPIPE).
    @discardableResult
    func send(raw bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    @discardableResult
    func send(_ frame: Frame) -> Bool { send(raw: Array(frame.encoded().readableBytesView)) }

    @discardableResult
    func send(_ frames: [Frame]) -> Bool {
        var bytes: [UInt8] = []
        for frame in frames { bytes += frame.encoded().readableBytesView }
        return send(raw: bytes)
    }

    func replyFrame(_ stream: UInt32, _ reply: Reply, end: Bool = false) -> Frame {
        Frame(type: .message, flags: end ? [.endStream] : [], session: session, stream: stream, payload: reply.buffer())
    }

    func dataFrame(_ stream: UInt32, _ bytes: [UInt8], channel: UInt8 = 0, end: Bool = false) -> Frame {
        var flags = FrameFlags.channel(channel)
        if end { flags.insert(.endStream) }
        return Frame(type: .data, flags: flags, session: session, stream: stream, payload: ByteBuffer(bytes: bytes))
    }

    @discardableResult
    func reply(_ stream: UInt32, _ reply: Reply, end: Bool = false) -> Bool {
        send(replyFrame(stream, reply, end: end))
    }

    /// Sends `frame` once the host's credit on its stream allows it, reading WINDOW frames while
    /// waiting; false when the host never grants it within `timeoutMs`.
    func sendWithinCredit(_ frame: Frame, timeoutMs: Int = 10_000) -> Bool {
        let cost = frame.payload.readableBytes + Multiplexer.frameCharge
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while available(frame.stream) < cost {
            guard Date() < deadline else { return false }
            _ = next(timeoutMs: 50, where: { _ in false })
        }
        credit[frame.stream, default: hostWindow] -= cost
        return send(frame)
    }

    /// Credit the host has granted on `stream` and not yet used.
    func available(_ stream: UInt32) -> Int { credit[stream, default: hostWindow] }

    // MARK: Reading

    /// The next frame of the session that satisfies `match`; others are counted (and WINDOW
    /// credited). Nil on timeout or EOF.
    func next(timeoutMs: Int, where match: (Frame) -> Bool) -> Frame? {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while true {
            while case .frame(let frame) = decodeOne() {
                if session != 0, frame.session != session { continue }
                if match(frame) { return frame }
                note(frame)
            }
            let remaining = Int(deadline.timeIntervalSinceNow * 1000)
            guard remaining > 0 else { return nil }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, Int32(min(remaining, 100))) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return nil }
            buffer.writeBytes(chunk[0..<n])
        }
    }

    private func decodeOne() -> FrameDecoder.Step {
        while true {
            let step = FrameDecoder.next(from: &buffer, maximumPayload: FrameFormat.maximumPayload)
            switch step {
            case .frame, .needMoreData: return step
            default: continue
            }
        }
    }

    private func note(_ frame: Frame) {
        guard let type = frame.type else { return }
        seen[type, default: 0] += 1
        if type == .ping, answersPings { send(Frame(type: .pong, session: session, payload: frame.payload)) }
        if type == .window, let grant = frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt32.self) {
            credit[frame.stream, default: hostWindow] += Int(grant)
        }
    }

    /// Waits for the host's OPEN; its stream and request.
    func open(timeoutMs: Int = 10_000) throws -> (stream: UInt32, request: Request) {
        guard let frame = next(timeoutMs: timeoutMs, where: { $0.type == .open }) else {
            throw ScriptError("no OPEN from the host")
        }
        return (frame.stream, try Request(payload: frame.payload))
    }

    /// Reads (and counts) everything until the host closes the connection or `timeoutMs` passes;
    /// true when the host closed it.
    func drainUntilClosed(timeoutMs: Int) -> Bool {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while Date() < deadline {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return true }
            buffer.writeBytes(chunk[0..<n])
            while case .frame(let frame) = decodeOne() {
                if frame.session == session { note(frame) }
            }
        }
        return false
    }

    /// Waits without reading, as a guest that stopped reading does.
    func stall(seconds: Double) { Thread.sleep(forTimeInterval: seconds) }
}

/// `lqx` started as its own process against the hostile agent: its output, exit status, time and
/// peak memory (VmHWM, read from /proc while it runs).
final class LqxRun: Sendable {
    let child: Child
    let started = ContinuousClock.now
    let stdoutPath: String
    let stderrPath: String
    private let peak = Mutex<Int>(0)

    /// Starts `lqx ARGUMENTS`; stdout goes to `stdoutFD` when given (a pipe nobody reads, say),
    /// else to a file.
    init(_ arguments: [String], dir: TempDir, name: String, stdoutFD: Int32? = nil) throws {
        stdoutPath = dir.file("\(name).out")
        stderrPath = dir.file("\(name).err")
        let out = open(stdoutPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        let err = open(stderrPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer {
            close(out)
            close(err)
        }
        child = try Child.spawn(LqxCLI.binary, arguments, stdout: stdoutFD ?? out, stderr: err)
    }

    /// Samples VmHWM now.
    @discardableResult
    func sampleMemory() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(child.pid)/status", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
            let kib = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return peak.withLock { $0 } }
        return peak.withLock {
            $0 = max($0, kib * 1024)
            return $0
        }
    }

    /// Peak resident memory seen so far, in bytes.
    var peakBytes: Int { peak.withLock { $0 } }

    /// Waits up to `timeout` for the exit, sampling memory meanwhile; the status, or nil.
    func exit(within timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            sampleMemory()
            if let status = child.poll() { return status }
            try? await Task.sleep(for: .milliseconds(25))
        }
        return child.poll()
    }

    /// Kills it if it still runs (end of a test).
    func kill() {
        child.signal(SIGKILL)
        _ = child.wait()
    }

    var elapsed: Duration { ContinuousClock.now - started }
    var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
}
