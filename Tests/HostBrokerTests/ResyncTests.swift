import AgentProtocol
import AgentTestSupport
import CLQXSupport
import Foundation
import GuestAgent
import LQXTestSupport
import Logging
import NIOCore
import Synchronization
import Testing

@testable import HostBroker

/// Runs an agent on `socket` until `body` returns.

@Suite("resynchronisation: restarts, stale sessions, garbage")
struct ResyncTests {
    @Test("a frame of an earlier session on the same byte stream is never acted on")
    func staleSessionFramesIgnored() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        let marker = dir.file("stale-marker"), fresh = dir.file("fresh-marker")
        try await withRunningAgent(socket: socket) {
            let checks = Checks()
            try await onThread {
                let peer = RawPeer(fd: try RawSocket.connect(socket))
                checks.check(peer.handshake(session: 0x1111) != nil, "peer.handshake(session: 0x1111) != nil")
                // The host "restarts" on the same pipe (as over virtio-serial) and starts a new session.
                checks.check(peer.handshake(session: 0x2222) != nil, "peer.handshake(session: 0x2222) != nil")
                // Bytes the old host had queued arrive late: garbage, a torn frame, an OPEN of session 1.
                peer.send(raw: [0xF0, 0x4C, 0x51, 0x00, 0x13, 0x37] + Array(repeating: 0xF0, count: 7))
                peer.send(Frame(type: .open, session: 0x1111, stream: 1, payload: execRequest(["touch", marker])))
                // The agent tells the sender of the unknown session to start over.
                let goAway = peer.next(session: 0x1111, timeoutMs: 3000)
                checks.check(goAway?.type == .goAway, "goAway?.type == .goAway")
                // The current session works.
                peer.send(Frame(type: .open, session: 0x2222, stream: 1, payload: execRequest(["touch", fresh])))
                let exit = peer.reply(session: 0x2222, stream: 1) {
                    if case .execExit = $0.kind { true } else { false }
                }
                checks.check(exit != nil, "exit != nil")
                usleep(300_000)
                checks.check(access(fresh, F_OK) == 0, "access(fresh, F_OK) == 0")
                checks.check(access(marker, F_OK) != 0, "an OPEN from an earlier session was acted on")
            }
            #expect(checks.failures == [])
        }
    }

    @Test("a retransmitted HELLO of the current session is answered without restarting it")
    func helloRetransmission() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        try await withRunningAgent(socket: socket) {
            let checks = Checks()
            try await onThread {
                let peer = RawPeer(fd: try RawSocket.connect(socket))
                checks.check(peer.handshake(session: 0x77) != nil, "peer.handshake(session: 0x77) != nil")
                guard let pid = peer.startExec(session: 0x77, stream: 1, argv: ["sleep", "5"]) else {
                    checks.check(false, "exec did not start")
                    return
                }
                checks.check(peer.handshake(session: 0x77) != nil, "peer.handshake(session: 0x77) != nil")
                usleep(300_000)
                checks.check(isAlive(pid), "a repeated HELLO must not tear down the running session")
                peer.send(Frame(type: .reset, session: 0x77, stream: 1, payload: ByteBuffer()))
            }
            #expect(checks.failures == [])
        }
    }

    @Test("a new session on the same byte stream ends the old session's processes")
    func newSessionKillsOldProcesses() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        try await withRunningAgent(socket: socket) {
            let checks = Checks()
            try await onThread {
                let peer = RawPeer(fd: try RawSocket.connect(socket))
                checks.check(peer.handshake(session: 0xA) != nil, "peer.handshake(session: 0xA) != nil")
                guard let pid = peer.startExec(session: 0xA, stream: 1, argv: ["sleep", "60"]) else {
                    checks.check(false, "exec did not start")
                    return
                }
                checks.check(peer.handshake(session: 0xB) != nil, "peer.handshake(session: 0xB) != nil")
                for _ in 0..<40 where isAlive(pid) { usleep(50_000) }
                checks.check(!isAlive(pid), "!isAlive(pid)")
            }
            #expect(checks.failures == [])
        }
    }

    @Test("the broker reconnects after the agent restarts, with a new session")
    func agentRestart() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        let client = AgentClient(address: .unix(path: socket), configuration: Harness.brokerConfiguration())
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            defer { group.cancelAll() }
            let first = try await withRunningAgent(socket: socket) {
                let session = try await client.session(timeout: .seconds(10))
                _ = try await session.info()
                return (session.id, session.welcome.agentInstance)
            }
            // The agent is gone; a new agent process (new instance id) comes up on the same socket.
            let second = try await withRunningAgent(socket: socket) {
                var session = try await client.session(timeout: .seconds(10))
                while session.id == first.0 {
                    try await Task.sleep(for: .milliseconds(50))
                    session = try await client.session(timeout: .seconds(10))
                }
                _ = try await session.info()
                return (session.id, session.welcome.agentInstance)
            }
            #expect(second.0 != first.0)
            #expect(second.1 != first.1)
        }
        var events: [SessionEvent] = []
        for await event in client.events { events.append(event) }
        #expect(events.count >= 3)
        if case .connected = events.first {} else { Issue.record("first event must be connected") }
        #expect(events.contains { if case .disconnected = $0 { true } else { false } })
    }

    @Test("a restarted broker gets a new session; the old session's processes are stopped")
    func brokerRestart() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        try await withRunningAgent(socket: socket) {
            let firstClient = AgentClient(address: .unix(path: socket), configuration: Harness.brokerConfiguration())
            let (pid, firstID) = try await withThrowingTaskGroup(of: (Int32, UInt64)?.self) { group in
                group.addTask {
                    try await firstClient.run()
                    return nil
                }
                let session = try await firstClient.session(timeout: .seconds(10))
                let process = try await session.exec(ExecOptions(["sleep", "60"]))
                group.cancelAll()  // the broker "crashes"
                return (process.pid, session.id)
            }
            for _ in 0..<60 where isAlive(pid) { try await Task.sleep(for: .milliseconds(50)) }
            #expect(!isAlive(pid))
            let secondClient = AgentClient(address: .unix(path: socket), configuration: Harness.brokerConfiguration())
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await secondClient.run() }
                defer { group.cancelAll() }
                let session = try await secondClient.session(timeout: .seconds(10))
                #expect(session.id != firstID)
                let result = try await session.exec(ExecOptions(["echo", "ok"])).collect()
                #expect(String(buffer: result.stdout) == "ok\n")
            }
        }
    }

    @Test("the broker ignores garbage and frames of other sessions before WELCOME")
    func brokerIgnoresStaleBeforeWelcome() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("fake.sock")
        let listener = try RawSocket.listen(socket)
        defer { close(listener) }
        let seenSession = Mutex<UInt64>(0)
        let fake = Thread {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            let peer = RawPeer(fd: fd)
            guard let hello = peer.next(), hello.type == .hello else { return }
            seenSession.withLock { $0 = hello.session }
            let welcome = Welcome.with {
                $0.version = 1
                $0.agentVersion = "fake"
                $0.initialWindow = 1 << 20
                $0.maxFramePayload = 256 << 10
                $0.maxStreams = 8
            }
            // Stale output of an earlier agent session, then garbage, then the real answer.
            peer.send(Frame(type: .welcome, session: hello.session &+ 1, payload: welcome.buffer()))
            peer.send(Frame(type: .message, session: 99, stream: 1, payload: Reply.with { $0.info = .init() }.buffer()))
            peer.send(raw: Array("garbage\u{F0}LQ".utf8) + [0xF0, 0x4C, 0x51, 0x58, 1])
            peer.send(Frame(type: .welcome, session: hello.session, payload: welcome.buffer()))
            // Stay connected briefly, answering pings.
            let end = Date().addingTimeInterval(2)
            while Date() < end, let frame = peer.next(timeoutMs: 200) {
                if frame.type == .ping { peer.send(Frame(type: .pong, session: frame.session, payload: frame.payload)) }
            }
        }
        fake.start()
        let client = AgentClient(address: .unix(path: socket), configuration: Harness.brokerConfiguration())
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            defer { group.cancelAll() }
            let session = try await client.session(timeout: .seconds(10))
            #expect(session.id == seenSession.withLock { $0 })
            #expect(session.welcome.agentVersion == "fake")
            #expect(session.openStreams == 0)
        }
    }
}

@Suite("transports: hybrid vsock, AF_VSOCK")
struct TransportTests {
    /// A hybrid-vsock endpoint like Firecracker's: reads `CONNECT <port>\n`, answers `reply`, then
    /// splices the connection to `target` (the agent's unix socket).
    static func hybridProxy(listenOn path: String, target: String, reply: String) throws -> Int32 {
        let listener = try RawSocket.listen(path)
        Thread.detachNewThread {
            while true {
                let client = accept(listener, nil, nil)
                guard client >= 0 else { return }
                var line: [UInt8] = []
                var byte: UInt8 = 0
                while read(client, &byte, 1) == 1, byte != 0x0A, line.count < 64 { line.append(byte) }
                guard String(decoding: line, as: UTF8.self) == "CONNECT 5170" else {
                    close(client)
                    continue
                }
                _ = RawSocket.writeAll(client, Array(reply.utf8))
                guard reply.hasPrefix("OK"), let upstream = try? RawSocket.connect(target) else {
                    close(client)
                    continue
                }
                for (from, to) in [(client, upstream), (upstream, client)] {
                    Thread.detachNewThread {
                        var chunk = [UInt8](repeating: 0, count: 65536)
                        while true {
                            let n = read(from, &chunk, chunk.count)
                            if n <= 0 || !RawSocket.writeAll(to, Array(chunk[0..<n])) { break }
                        }
                        shutdown(to, Int32(SHUT_WR))
                    }
                }
            }
        }
        return listener
    }

    @Test("hybrid vsock: CONNECT / OK handshake, then the agent protocol")
    func hybridVsock() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let agentSocket = dir.file("agent.sock"), hv = dir.file("hv.sock")
        let listener = try Self.hybridProxy(listenOn: hv, target: agentSocket, reply: "OK 1073741824\n")
        defer { shutdown(listener, Int32(SHUT_RDWR)) }
        try await withRunningAgent(socket: agentSocket) {
            let client = AgentClient(
                address: .hybridVsock(path: hv, port: 5170), configuration: Harness.brokerConfiguration())
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                defer { group.cancelAll() }
                let session = try await client.session(timeout: .seconds(10))
                let result = try await session.exec(ExecOptions(["echo", "through hvsock"])).collect()
                #expect(String(buffer: result.stdout) == "through hvsock\n")
            }
        }
    }

    @Test("hybrid vsock: a refused CONNECT is a clear error")
    func hybridVsockRefused() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let hv = dir.file("hv.sock")
        let listener = try Self.hybridProxy(listenOn: hv, target: dir.file("none"), reply: "NO such port\n")
        defer { shutdown(listener, Int32(SHUT_RDWR)) }
        let client = AgentClient(
            address: .hybridVsock(path: hv, port: 5170), configuration: Harness.brokerConfiguration())
        await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            defer { group.cancelAll() }
            let error = await #expect(throws: AgentError.self) { _ = try await client.session(timeout: .seconds(2)) }
            #expect(error?.code == .unavailable)
            #expect(error?.message.contains("hybrid vsock") == true)
        }
    }

    static let vsockProbe: Int32 = lqx_vsock_loopback_probe(UInt32.random(in: 40000...50000), 1000)

    @Test("AF_VSOCK: agent listener and broker over the kernel's vsock loopback")
    func vsockLoopback() async throws {
        guard Self.vsockProbe == 0 else {
            print(
                "SKIPPED AF_VSOCK loopback test: CID 1 unreachable here (\(String(cString: strerror(Self.vsockProbe))));"
                    + " the real-guest tests prove AF_VSOCK inside a VM with vsock_loopback")
            return
        }
        let port = UInt32.random(in: 50001...60000)
        var configuration = Harness.agentConfiguration(socket: "/unused")
        configuration.transports = [.vsock(port: port, allowLocal: true)]
        let agent = try buildAgent(configuration: configuration)
        let client = AgentClient(address: .vsock(cid: 1, port: port), configuration: Harness.brokerConfiguration())
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await agent.run() }
            group.addTask { try await client.run() }
            defer { group.cancelAll() }
            let session = try await client.session(timeout: .seconds(10))
            let result = try await session.exec(ExecOptions(["echo", "vsock"])).collect()
            #expect(String(buffer: result.stdout) == "vsock\n")
        }
    }
}
