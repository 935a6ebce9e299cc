import AgentProtocol
import AgentTestSupport
import Foundation
import GuestAgent
import LQXTestSupport
import NIOCore
import Synchronization
import Testing

@testable import HostBroker

@Suite("hostile input against a live agent")
struct LiveFuzzTests {
    /// One hostile frame: random type, flags, stream, payload, usually of the live session.
    static func hostileFrame(session: UInt64, rng: inout SplitMix64) -> [UInt8] {
        let types: [UInt8] = [0x03, 0x04, 0x05, 0x10, 0x11, 0x12, 0x13, 0x14, 0x01, 0x02, 0x7F, 0x00]
        let type = types[Int(rng.next() % UInt64(types.count))]
        let payloadLength = Int(rng.next() % 3) == 0 ? Int(rng.next() % 2048) : Int(rng.next() % 40)
        var payload = ByteBuffer()
        if type == 0x13 && rng.next() % 2 == 0 {
            payload.writeInteger(UInt32(truncatingIfNeeded: rng.next()))  // WINDOW with a random credit
        } else {
            for _ in 0..<payloadLength { payload.writeInteger(UInt8(truncatingIfNeeded: rng.next())) }
        }
        let frameSession = rng.next() % 8 == 0 ? rng.next() : session
        let stream = UInt32(truncatingIfNeeded: rng.next() % 4 == 0 ? rng.next() : rng.next() % 300)
        let frame = Frame(
            rawType: type, flags: FrameFlags(rawValue: UInt16(truncatingIfNeeded: rng.next())), session: frameSession,
            stream: stream, payload: payload)
        var bytes = Array(frame.encoded().readableBytesView)
        switch rng.next() % 10 {
        case 0:  // flip a bit
            let i = Int(rng.next() % UInt64(bytes.count))
            bytes[i] ^= 1 << UInt8(rng.next() % 8)
        case 1:  // truncate
            bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count))))
        case 2:  // garbage in front
            bytes = (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) } + bytes
        default:
            break
        }
        return bytes
    }

    @Test("100,000 random and mutated frames: the agent survives, memory stays bounded, the next session works")
    func hostileStream() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        // Nothing the fuzzer might assemble can run commands or write files.
        let policy = AgentPolicy(allowExec: false, allowFileRead: true, allowFileWrite: false, allowShutdown: false)
        let seed = UInt64.random(in: 0...UInt64.max)
        print("live fuzz seed \(seed)")
        try await withRunningAgent(socket: socket, policy: policy) {
            let baseline = residentBytes()
            let checks = Checks()
            try await onThread {
                let peer = RawPeer(fd: try RawSocket.connect(socket))
                let session: UInt64 = 0x5EED
                checks.check(peer.handshake(session: session) != nil, "peer.handshake(session: session) != nil")
                // Drain whatever the agent answers so it never blocks on us (one reader per connection).
                let stop = Mutex(false)
                func drain(_ fd: Int32) {
                    Thread.detachNewThread {
                        var chunk = [UInt8](repeating: 0, count: 65536)
                        RawSocket.setReceiveTimeout(fd, milliseconds: 200)
                        while !stop.withLock({ $0 }) {
                            let n = read(fd, &chunk, chunk.count)
                            if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK) { break }
                        }
                    }
                }
                drain(peer.fd)
                var rng = SplitMix64(seed: seed)
                var batch: [UInt8] = []
                var sentFrames = 0
                var connectionAlive = true
                var reconnects = 0
                var writer = peer
                while sentFrames < 100_000 {
                    batch += Self.hostileFrame(session: session, rng: &rng)
                    sentFrames += 1
                    if batch.count > 256 << 10 || sentFrames == 100_000 {
                        if !RawSocket.writeAll(writer.fd, batch) {
                            // The agent may end a session that broke the protocol and close the socket:
                            // reconnect and continue with a new session.
                            connectionAlive = false
                            writer = RawPeer(fd: try RawSocket.connect(socket))
                            _ = writer.handshake(session: session)
                            drain(writer.fd)
                            reconnects += 1
                        }
                        batch.removeAll(keepingCapacity: true)
                    }
                }
                stop.withLock { $0 = true }
                print(
                    "live fuzz: 100000 frames sent, \(reconnects) reconnects, connection survived: \(connectionAlive)")
            }
            #expect(checks.failures == [])
            // The agent still serves a well-behaved broker.
            let client = AgentClient(address: .unix(path: socket), configuration: Harness.brokerConfiguration())
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                defer { group.cancelAll() }
                let fresh = try await client.session(timeout: .seconds(15))
                let info = try await fresh.info()
                #expect(info.agentVersion == AgentConfiguration.agentVersion)
                _ = try await fresh.ping()
            }
            let grown = residentBytes() - baseline
            print("live fuzz: RSS grew by \(grown >> 20) MiB")
            #expect(grown < 256 << 20)
        }
    }

    @Test("a host that floods PINGs and never reads the PONGs meets backpressure, not unbounded buffering")
    func pingFlood() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        try await withRunningAgent(socket: socket) {
            let baseline = residentBytes()
            let total = 2_000_000  // 80 MB of PING frames
            let written = try await onThread { () -> Int in
                let peer = RawPeer(fd: try RawSocket.connect(socket))
                defer { close(peer.fd) }
                guard peer.handshake(session: 0xF100D) != nil else { return -1 }
                var payload = ByteBuffer()
                payload.writeInteger(UInt64(7))
                let one = Array(Frame(type: .ping, session: 0xF100D, payload: payload).encoded().readableBytesView)
                let chunk = [UInt8]((0..<1024).map { _ in one }.joined())
                _ = fcntl(peer.fd, F_SETFL, fcntl(peer.fd, F_GETFL) | O_NONBLOCK)
                var written = 0
                var stalledSince: ContinuousClock.Instant?
                while written < total * one.count {
                    let n = chunk.withUnsafeBytes { write(peer.fd, $0.baseAddress!, $0.count) }
                    if n > 0 {
                        written += n
                        stalledSince = nil
                        if n < chunk.count { usleep(1000) }
                        continue
                    }
                    guard n < 0, errno == EAGAIN || errno == EWOULDBLOCK else { break }
                    let since = stalledSince ?? .now
                    stalledSince = since
                    if ContinuousClock.now - since > .seconds(1) { break }  // the agent stopped reading
                    usleep(1000)
                }
                return written
            }
            let grown = residentBytes() - baseline
            print("ping flood: \(written >> 10) KiB written before the agent pushed back, RSS grew \(grown >> 20) MiB")
            #expect(written > 0)
            #expect(written < total * 40 / 2, "the agent kept reading: PONGs are being buffered without bound")
            // The whole test process is measured (other tests run in parallel); unbounded PONG
            // buffering grew it by more than 350 MiB.
            #expect(grown < 192 << 20)
            // The agent still serves a well-behaved broker.
            let client = AgentClient(address: .unix(path: socket), configuration: Harness.brokerConfiguration())
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                defer { group.cancelAll() }
                _ = try await client.session(timeout: .seconds(15)).ping()
            }
        }
    }
}
