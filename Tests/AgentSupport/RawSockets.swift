import AgentProtocol
import Foundation
import NIOCore
import Synchronization

/// Blocking unix-socket helpers for tests that must write raw bytes (garbage, stale frames).
public enum RawSocket {
    /// A unix socket address for `path`.
    public static func address(_ path: String) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return addr
    }

    /// A connected, blocking unix socket.
    public static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = address(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        return fd
    }

    /// A listening unix socket at `path`.
    public static func listen(_ path: String) throws -> Int32 {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = address(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0, Glibc.listen(fd, 8) == 0 else {
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        return fd
    }

    /// Writes every byte; false when the peer is gone.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    /// Writes a buffer's readable bytes; false when the peer is gone.
    public static func writeAll(_ fd: Int32, _ buffer: ByteBuffer) -> Bool {
        writeAll(fd, Array(buffer.readableBytesView))
    }

    /// Bounds each blocking read.
    public static func setReceiveTimeout(_ fd: Int32, milliseconds: Int) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: Int((milliseconds % 1000) * 1000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}

// @unchecked Sendable: test helper; each peer is used by one thread at a time.
/// A framed peer over a blocking socket: writes frames or raw bytes, reads and decodes frames.
public final class RawPeer: @unchecked Sendable {
    /// The socket.
    public let fd: Int32
    private var buffer = ByteBuffer()

    /// A peer on a connected socket.
    public init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    /// Writes a frame.
    public func send(_ frame: Frame) { _ = RawSocket.writeAll(fd, frame.encoded()) }

    /// Writes raw bytes.
    public func send(raw bytes: [UInt8]) { _ = RawSocket.writeAll(fd, bytes) }

    /// The next frame whose session is `session` (others are skipped), or nil on timeout / EOF.
    public func next(session: UInt64? = nil, timeoutMs: Int = 5000) -> Frame? {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while Date() < deadline {
            while true {
                switch FrameDecoder.next(from: &buffer, maximumPayload: FrameFormat.maximumPayload) {
                case .frame(let frame):
                    if session == nil || frame.session == session { return frame }
                    continue
                case .skipped, .oversized: continue
                case .needMoreData: break
                }
                break
            }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &chunk, chunk.count)
            if n == 0 { return nil }
            if n > 0 { buffer.writeBytes(chunk[0..<n]) }
        }
        return nil
    }

    /// The session of the last successful handshake.
    public private(set) var lastSession: UInt64 = 0

    /// Sends HELLO and waits for WELCOME of that session.
    public func handshake(session: UInt64, timeoutMs: Int = 5000) -> Welcome? {
        let hello = Hello.with {
            $0.minVersion = 1
            $0.maxVersion = 1
            $0.client = "raw-test-peer"
            $0.initialWindow = 1 << 20
            $0.maxFramePayload = 256 << 10
        }
        send(Frame(type: .hello, session: session, payload: hello.buffer()))
        while let frame = next(session: session, timeoutMs: timeoutMs) {
            if frame.type == .welcome {
                lastSession = session
                return try? Welcome(payload: frame.payload)
            }
        }
        return nil
    }

    /// Opens an exec stream and returns the guest pid once the agent reports it started.
    public func startExec(session: UInt64, stream: UInt32, argv: [String]) -> Int32? {
        send(Frame(type: .open, session: session, stream: stream, payload: execRequest(argv)))
        let started = reply(session: session, stream: stream) {
            if case .execStarted = $0.kind { true } else { false }
        }
        guard case .execStarted(let s)? = started?.kind else { return nil }
        return s.pid
    }

    /// Reads replies on a stream until a message satisfying `match`.
    public func reply(session: UInt64, stream: UInt32, timeoutMs: Int = 5000, _ match: (Reply) -> Bool) -> Reply? {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while Date() < deadline, let frame = next(session: session, timeoutMs: timeoutMs) {
            guard frame.stream == stream, frame.type == .message, let reply = try? Reply(payload: frame.payload)
            else { continue }
            if match(reply) { return reply }
        }
        return nil
    }
}

/// An OPEN payload that starts `argv` in the guest.
public func execRequest(_ argv: [String]) -> ByteBuffer {
    Request.with { $0.exec = .with { $0.argv = argv } }.buffer()
}
