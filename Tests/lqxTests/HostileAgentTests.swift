import AgentProtocol
import AgentTestSupport
import Foundation
import LQXTestSupport
import NIOCore
import Synchronization
import Testing

@testable import HostBroker

/// The broker against a guest that completes the handshake and then misbehaves: each case
/// asserts what `lqx` does, how long it takes and how much memory its broker uses (VmHWM of the
/// `lqx` process), whatever the guest sends.
@Suite(
    "hostile agent against lqx's broker", .enabled(if: FileManager.default.isExecutableFile(atPath: LqxCLI.binary)))
struct HostileAgentTests {
    /// The broker's memory bound, whatever a guest sends (an idle `lqx` is about 15 MiB here).
    static let memoryBound = 64 << 20

    /// Runs `lqx --agent <hostile> ARGS` against `script`; returns the finished (or killed) run.
    static func play(
        _ arguments: [String], welcome: @escaping @Sendable (inout Welcome) -> Void = { _ in },
        within timeout: Duration = .seconds(20), dir: TempDir? = nil, stdoutFD: Int32? = nil,
        during: @Sendable (LqxRun) async throws -> Void = { _ in },
        _ script: @escaping @Sendable (HostileConnection) throws -> Void
    ) async throws -> (run: LqxRun, status: Int32?, agent: HostileAgent) {
        let dir = try dir ?? TempDir()
        let agent = try HostileAgent(dir: dir)
        agent.serve(welcome: welcome, script)
        let run = try LqxRun(
            ["--agent", agent.address, "--connect-timeout", "5"] + arguments, dir: dir,
            name: "lqx-\(UInt32.random(in: 0...UInt32.max))", stdoutFD: stdoutFD)
        try await during(run)
        let status = await run.exit(within: timeout)
        if status == nil { run.kill() }
        // Whatever the case: lqx ends in time, and its broker's memory stays bounded.
        #expect(status != nil, "lqx \(arguments) still ran after \(timeout)")
        #expect(run.peakBytes < Self.memoryBound, "lqx \(arguments): peak RSS \(run.peakBytes)")
        return (run, status, agent)
    }

    static func info(hostname: String = "guest", uptime: Double = 1) -> Reply {
        .with {
            $0.info = .with {
                $0.agentVersion = "hostile-0"
                $0.protocolVersion = 1
                $0.hostname = hostname
                $0.uptimeSeconds = uptime
                $0.os.prettyName = "Hostile OS"
            }
        }
    }

    static func exit(_ status: Limiquantix_Agent_V1_ExecExit.OneOf_Status?) -> Reply {
        .with { $0.execExit = .with { $0.status = status } }
    }

    // MARK: 1. A guest that stops reading

    @Test("a guest that floods PINGs, stops reading and goes silent: the session times out, lqx ends")
    func pongFloodThenSilence() async throws {
        let (run, status, _) = try await Self.play(["info"]) { agent in
            let pings = (0..<6000).map { i -> Frame in
                var payload = ByteBuffer()
                payload.writeInteger(UInt64(i))
                return Frame(type: .ping, session: agent.session, payload: payload)
            }
            agent.send(pings)
            agent.stall(seconds: 25)
        }
        #expect(status == 255, "\(run.stderr)")
        #expect(run.elapsed < .seconds(12), "ended after \(run.elapsed)")
        #expect(run.stderr.contains("silent"), "\(run.stderr)")
        #expect(run.peakBytes < Self.memoryBound, "peak RSS \(run.peakBytes)")
    }

    @Test("SIGTERM and SIGINT end lqx promptly (143 / 130) while a stalled guest holds it")
    func signalsEndAStalledCommand() async throws {
        for (signal, expected) in [(SIGTERM, Int32(143)), (SIGINT, Int32(130)), (SIGHUP, Int32(129))] {
            let (run, status, _) = try await Self.play(
                ["--reply-timeout", "120", "info"],
                during: { run in
                    try await Task.sleep(for: .seconds(1))
                    run.child.signal(signal)
                }
            ) { agent in
                _ = try agent.open()
                let pings = (0..<6000).map { i -> Frame in
                    var payload = ByteBuffer()
                    payload.writeInteger(UInt64(i))
                    return Frame(type: .ping, session: agent.session, payload: payload)
                }
                agent.send(pings)
                agent.stall(seconds: 10)
            }
            #expect(status == expected, "signal \(signal): \(String(describing: status)) \(run.stderr)")
            #expect(run.elapsed < .seconds(4), "signal \(signal) took \(run.elapsed)")
        }
    }

    // MARK: 2. Memory bounded by the window, not by what the guest sends

    @Test("tiny DATA frames next to large discarded frames, consumer blocked: memory stays bounded")
    func retainedBuffersAreBounded() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let (read, write) = try Child.pipe()
        defer { close(read) }
        let (run, status, agent) = try await Self.play(
            ["exec", "--", "cat"], within: .seconds(60), dir: dir, stdoutFD: write,
            during: { run in
                close(write)
                // Until the guest is done, then end lqx (its stdout is blocked for good).
                for _ in 0..<400 {
                    run.sampleMemory()
                    if FileManager.default.fileExists(atPath: dir.file("sent")) { break }
                    try await Task.sleep(for: .milliseconds(50))
                }
                run.sampleMemory()
                run.child.signal(SIGTERM)
            }
        ) { agent in
            let (stream, _) = try agent.open()
            agent.reply(stream, .with { $0.execStarted = .with { $0.pid = 1 } })
            // Fill lqx's stdout pipe so that it stops reading its stream.
            for _ in 0..<2 { agent.send(agent.dataFrame(stream, [UInt8](repeating: 0x61, count: 128 << 10))) }
            // A 256 KiB frame of another session is decoded and dropped; the 1-byte DATA after it
            // sits in the same receive buffer.
            let filler = Array(
                Frame(
                    type: .message, session: agent.session &+ 1, stream: 1,
                    payload: ByteBuffer(repeating: 0, count: 256 << 10)
                ).encoded().readableBytesView)
            let tiny = Array(agent.dataFrame(stream, [0x62]).encoded().readableBytesView)
            for _ in 0..<1000 { guard agent.send(raw: filler + tiny) else { break } }
            _ = FileManager.default.createFile(atPath: agent.fileSentMarker, contents: nil)
            agent.stall(seconds: 5)
        }
        _ = agent
        #expect(status == 143, "\(String(describing: status)) \(run.stderr)")
        #expect(run.peakBytes < Self.memoryBound, "peak RSS \(run.peakBytes) after 250 MiB of filler")
    }

    @Test("a telemetry flood (5,000 interfaces a sample, as fast as credit allows) is paced and bounded")
    func telemetryFloodIsBounded() async throws {
        let sample = Limiquantix_Agent_V1_TelemetrySample.with {
            $0.cpuCount = 2
            $0.interfaces = (0..<5000).map { i in
                .with {
                    $0.name = "eth\(i)"; $0.rxBytes = UInt64(i)
                }
            }
        }
        let payload = Reply.with { $0.telemetry = sample }
        let counter = Tally()
        let (run, status, _) = try await Self.play(
            ["top", "--interval", "1"],
            during: { run in
                for _ in 0..<80 {
                    run.sampleMemory()
                    try await Task.sleep(for: .milliseconds(50))
                }
                run.child.signal(SIGINT)
            }
        ) { agent in
            let (stream, _) = try agent.open()
            let frame = agent.replyFrame(stream, payload)
            let deadline = Date().addingTimeInterval(4)
            while Date() < deadline {
                guard agent.sendWithinCredit(frame, timeoutMs: 200) else { continue }
                counter.add()
            }
            _ = agent.drainUntilClosed(timeoutMs: 10_000)
        }
        #expect(status == 130, "\(String(describing: status)) \(run.stderr.suffix(300))")
        // 2 MiB of initial window is ~18 samples; then the host consumes at most 2 per second.
        #expect(counter.value < 50, "the guest pushed \(counter.value) samples in 4 s")
        #expect(run.peakBytes < Self.memoryBound, "peak RSS \(run.peakBytes)")
    }

    // MARK: 4. Interrupted transfers leave nothing behind

    @Test("Ctrl-C or SIGTERM during a stalled download: exit 130 / 143, no .part file left")
    func interruptedDownloadLeavesNothing() async throws {
        for (signal, expected) in [(SIGINT, Int32(130)), (SIGTERM, Int32(143))] {
            let dir = try TempDir()
            defer { dir.remove() }
            let (run, status, _) = try await Self.play(
                ["cp", ":/guest/file", dir.file("dest")], dir: dir,
                during: { run in
                    try await Task.sleep(for: .milliseconds(1500))
                    run.child.signal(signal)
                }
            ) { agent in
                let (stream, _) = try agent.open()
                agent.reply(
                    stream,
                    .with {
                        $0.downloadStart = .with {
                            $0.size = 10 << 20; $0.mode = 0o644
                        }
                    })
                _ = agent.sendWithinCredit(agent.dataFrame(stream, [UInt8](repeating: 7, count: 200 << 10)))
                agent.stall(seconds: 10)
            }
            #expect(status == expected, "\(String(describing: status)) \(run.stderr)")
            #expect(run.elapsed < .seconds(4))
            let left = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".part") }
            #expect(left.isEmpty, "left behind: \(left)")
            #expect(!FileManager.default.fileExists(atPath: dir.file("dest")))
        }
    }

    // MARK: 5. Exit statuses

    static let exitCases: [(Limiquantix_Agent_V1_ExecExit.OneOf_Status?, Int32)] = [
        (.exitCode(0), 0), (.exitCode(1), 1), (.exitCode(254), 254), (.exitCode(255), 255),
        (.exitCode(256), 255), (.exitCode(257), 255), (.exitCode(512), 255), (.exitCode(-1), 255),
        (.exitCode(-256), 255), (.exitCode(.min), 255), (.exitCode(.max), 255), (nil, 255),
        (.signal(1), 129), (.signal(9), 137), (.signal(64), 192), (.signal(65), 255), (.signal(127), 255),
        (.signal(0), 255), (.signal(-1), 255), (.signal(.max), 255),
    ]

    @Test("lqx exec's exit status for every edge of what a guest can report")
    func exitStatusTable() async throws {
        for (reported, expected) in Self.exitCases {
            let (run, status, _) = try await Self.play(["exec", "-n", "--", "true"]) { agent in
                let (stream, _) = try agent.open()
                agent.send([
                    agent.replyFrame(stream, .with { $0.execStarted = .with { $0.pid = 7 } }),
                    agent.replyFrame(stream, Self.exit(reported), end: true),
                ])
                _ = agent.drainUntilClosed(timeoutMs: 5000)
            }
            #expect(status == expected, "\(String(describing: reported)) → \(String(describing: status)) \(run.stderr)")
            if expected == 255, reported != .exitCode(255) {
                #expect(run.stderr.contains("the agent reported"), "\(String(describing: reported)): \(run.stderr)")
            }
        }
    }

    @Test("ExecExitStatus: only statuses a process can have map to their shell status", arguments: exitCases)
    func exitStatusMapping(_ reported: Limiquantix_Agent_V1_ExecExit.OneOf_Status?, _ expected: Int32) {
        var status = ExecExitStatus(exitCode: nil, signal: nil, timedOut: false, duration: .zero)
        switch reported {
        case .exitCode(let code): status.exitCode = code
        case .signal(let signal): status.signal = signal
        case nil: break
        }
        #expect(status.shellStatus == expected)
        let possible = expected != 255 || reported == .exitCode(255)
        #expect(((try? status.validated()) != nil) == possible)
        let both = ExecExitStatus(exitCode: 0, signal: 9, timedOut: false, duration: .zero)
        #expect(both.shellStatus == 255)
        #expect(throws: AgentError.self) { try both.validated() }
    }

    // MARK: 6. Clear errors

    @Test("DATA after END_STREAM: the output and exit status already received are kept")
    func dataAfterEndKeepsTheResult() async throws {
        let (run, status, _) = try await Self.play(["exec", "-n", "--", "x"]) { agent in
            let (stream, _) = try agent.open()
            agent.send([
                agent.replyFrame(stream, .with { $0.execStarted = .with { $0.pid = 7 } }),
                agent.dataFrame(stream, Array("hello\n".utf8)),
                agent.replyFrame(stream, Self.exit(.exitCode(3)), end: true),
                agent.dataFrame(stream, Array("late\n".utf8)),
            ])
            _ = agent.drainUntilClosed(timeoutMs: 5000)
        }
        #expect(status == 3, "\(run.stderr)")
        #expect(run.stdout == "hello\n")
    }

    @Test("a window overrun: lqx prints the output received, then the protocol error")
    func windowOverrunIsReported() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let (read, write) = try Child.pipe()
        let drained = Tally()
        let (run, status, _) = try await Self.play(
            ["exec", "-n", "--", "x"], dir: dir, stdoutFD: write,
            during: { _ in
                close(write)
                // Read lqx's stdout only once the guest has overrun the window.
                Thread.detachNewThread {
                    while !FileManager.default.fileExists(atPath: dir.file("sent")) { usleep(20_000) }
                    var chunk = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let n = Glibc.read(read, &chunk, chunk.count)
                        if n <= 0 { break }
                        drained.add(n)
                    }
                    close(read)
                }
            }
        ) { agent in
            let (stream, _) = try agent.open()
            agent.reply(stream, .with { $0.execStarted = .with { $0.pid = 7 } })
            // 12 frames of 256 KiB: more than the host's 2 MiB window while lqx is blocked on stdout.
            for _ in 0..<12 { agent.send(agent.dataFrame(stream, [UInt8](repeating: 0x61, count: 256 << 10))) }
            _ = FileManager.default.createFile(atPath: agent.fileSentMarker, contents: nil)
            _ = agent.drainUntilClosed(timeoutMs: 10_000)
        }
        #expect(status == 255, "\(String(describing: status)) \(run.stderr)")
        #expect(run.stderr.contains("exceeded its flow-control window [protocol]"), "\(run.stderr)")
        #expect(drained.value >= 1 << 20, "only \(drained.value) bytes of output reached stdout")
    }

    @Test("replies of the wrong kind are named as the schema names them")
    func unexpectedRepliesAreNamed() async throws {
        for (reply, expected) in [
            (Self.exit(.exitCode(0)), "the agent answered info with exec_exit"),
            (Reply(), "the agent answered info with an empty reply (no kind set)"),
        ] {
            let (run, status, _) = try await Self.play(["info"]) { agent in
                let (stream, _) = try agent.open()
                agent.reply(stream, reply, end: true)
                _ = agent.drainUntilClosed(timeoutMs: 5000)
            }
            #expect(status == 255)
            #expect(run.stderr.contains(expected), "\(run.stderr)")
            #expect(!run.stderr.contains("Optional("), "\(run.stderr)")
        }
    }

    @Test("NaN and infinity from a guest are JSON null, not an encoding failure")
    func nonFiniteNumbersInJSON() async throws {
        let (info, infoStatus, _) = try await Self.play(["info", "-o", "json"]) { agent in
            let (stream, _) = try agent.open()
            agent.reply(stream, Self.info(uptime: .nan), end: true)
            _ = agent.drainUntilClosed(timeoutMs: 5000)
        }
        #expect(infoStatus == 0, "\(info.stderr)")
        let document = try JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any]
        #expect(document?["uptime_seconds"] is NSNull)
        let (metrics, metricsStatus, _) = try await Self.play(["metrics", "-o", "json"]) { agent in
            let (stream, _) = try agent.open()
            agent.reply(
                stream,
                .with {
                    $0.telemetry = .with {
                        $0.cpu.totalPercent = .infinity; $0.load.one = -.infinity
                    }
                },
                end: true)
            _ = agent.drainUntilClosed(timeoutMs: 5000)
        }
        #expect(metricsStatus == 0, "\(metrics.stderr)")
        let sample = try JSONSerialization.jsonObject(with: Data(metrics.stdout.utf8)) as? [String: Any]
        #expect((sample?["cpu"] as? [String: Any])?["total_percent"] is NSNull)
        #expect((sample?["load"] as? [String: Any])?["one"] is NSNull)
    }

    @Test("a WELCOME with initial_window 2^31 is refused for being too large")
    func oversizedWindowIsNamed() async throws {
        let (run, status, _) = try await Self.play(
            ["--connect-timeout", "2", "ping"], welcome: { $0.initialWindow = 1 << 31 }
        ) { agent in
            _ = agent.drainUntilClosed(timeoutMs: 4000)
        }
        #expect(status == 255)
        #expect(run.stderr.contains("initial_window 2147483648 above the largest window"), "\(run.stderr)")
    }

    // MARK: 7. Deadlines

    @Test("every operation has a deadline: info, exec start, ping, an upload's result, a stalled download")
    func operationDeadlines() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try Data(repeating: 1, count: 100_000).write(to: URL(fileURLWithPath: dir.file("local")))
        let silent: @Sendable (HostileConnection) throws -> Void = { agent in
            _ = try agent.open()
            _ = agent.drainUntilClosed(timeoutMs: 10_000)
        }
        let cases: [([String], String, @Sendable (HostileConnection) throws -> Void)] = [
            (["info"], "did not answer info within", silent),
            (["exec", "-n", "--", "true"], "did not answer exec within", silent),
            (
                ["cp", dir.file("local"), ":/x"], "did not answer upload to /x within",
                { agent in
                    _ = try agent.openAfterStat()
                    _ = agent.drainUntilClosed(timeoutMs: 10_000)
                }
            ),
            (
                ["cp", ":/x", dir.file("dest")], "did not answer download of /x within",
                { agent in
                    let (stream, _) = try agent.open()
                    agent.reply(stream, .with { $0.downloadStart = .with { $0.size = 1000 } })
                    agent.send(agent.dataFrame(stream, [UInt8](repeating: 1, count: 10)))
                    _ = agent.drainUntilClosed(timeoutMs: 10_000)
                }
            ),
        ]
        for (arguments, expected, script) in cases {
            let (run, status, _) = try await Self.play(["--reply-timeout", "1"] + arguments, dir: dir, script)
            #expect(status == 255, "\(arguments): \(run.stderr)")
            #expect(run.stderr.contains(expected), "\(arguments): \(run.stderr)")
            #expect(run.elapsed < .seconds(5), "\(arguments) took \(run.elapsed)")
        }
        let left = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".part") }
        #expect(left.isEmpty, "left behind: \(left)")
        // A guest that keeps the session alive but never answers a PING of lqx's.
        let (ping, pingStatus, _) = try await Self.play(["--reply-timeout", "1", "ping"]) { agent in
            agent.answersPings = false
            _ = agent.drainUntilClosed(timeoutMs: 5000)
        }
        #expect(pingStatus == 255)
        #expect(ping.stderr.contains("no PONG from the agent within"), "\(ping.stderr)")
    }

    @Test("a reply larger than the frame limit fails the waiting call at once")
    func oversizedReplyFailsTheCall() async throws {
        let (run, status, _) = try await Self.play(["metrics"]) { agent in
            let (stream, _) = try agent.open()
            let sample = Limiquantix_Agent_V1_TelemetrySample.with {
                $0.interfaces = (0..<20_000).map { i in
                    .with {
                        $0.name = "eth\(i)"; $0.rxBytes = UInt64(i)
                    }
                }
            }
            #expect(sample.buffer().readableBytes > 256 << 10)
            agent.reply(stream, .with { $0.telemetry = sample }, end: true)
            _ = agent.drainUntilClosed(timeoutMs: 10_000)
        }
        #expect(status == 255)
        #expect(run.stderr.contains("over the 262144-byte frame limit"), "\(run.stderr)")
        #expect(run.elapsed < .seconds(3), "took \(run.elapsed)")
    }

    // MARK: Reconnection

    @Test("a guest that breaks every session at once is redialled at the backoff's pace")
    func brokenSessionsBackOff() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let agent = try HostileAgent(dir: dir)
        let client = AgentClient(
            address: .unix(path: agent.path),
            configuration: BrokerConfiguration(reconnectBackoff: .milliseconds(100)...(.seconds(5))))
        let connections = try await withThrowingTaskGroup(of: Int?.self) { group in
            group.addTask {
                try await client.run()
                return nil
            }
            group.addTask {
                // Each session: the agent opens a stream, which the host answers with GOAWAY.
                await agent.serveEach(for: 6) { connection in
                    connection.send(Frame(type: .open, session: connection.session, stream: 1, payload: ByteBuffer()))
                    _ = connection.drainUntilClosed(timeoutMs: 2000)
                }
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let result { return result }
            }
            return 0
        }
        // 100 ms doubling (±20 %): about 6 sessions in 6 s; redialling at once would be ~50.
        #expect(connections >= 3 && connections <= 9, "\(connections) sessions in 6 s")
        #expect(client.sessionsEstablished == connections)
    }

    // MARK: 8. Smaller defects

    @Test("after a session error the host sends one GOAWAY, however many frames were read")
    func oneGoAwayPerSession() async throws {
        let goAways = Tally()
        let (_, status, _) = try await Self.play(["--connect-timeout", "1", "ping"]) { agent in
            agent.send((1...300).map { Frame(type: .open, session: agent.session, stream: $0, payload: ByteBuffer()) })
            _ = agent.drainUntilClosed(timeoutMs: 5000)
            goAways.add(agent.seen[.goAway, default: 0])
        }
        #expect(status == 255)
        #expect(goAways.value == 1)
    }

    @Test("an upload result that does not match what the host sent is an error")
    func uploadResultIsChecked() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let bytes = [UInt8](repeating: 3, count: 50_000)
        try Data(bytes).write(to: URL(fileURLWithPath: dir.file("local")))
        let digest = SHA256Hasher.hash(bytes)
        // Larger than the agent's window, which the agent never extends: the host cannot have
        // committed when the early result arrives.
        try Data(repeating: 5, count: 5 << 20).write(to: URL(fileURLWithPath: dir.file("large")))
        let cases: [(UploadResultCase, String)] = [
            (.result(size: 50_000, sha256: Data(repeating: 0, count: 32)), "the agent reported 50000 bytes"),
            (.result(size: 49_999, sha256: digest), "the agent reported 49999 bytes"),
            (.result(size: 0, sha256: Data()), "the agent reported 0 bytes"),
            (.early, "before the host committed it"),
        ]
        for (answer, expected) in cases {
            let source = if case .early = answer { dir.file("large") } else { dir.file("local") }
            let (run, status, _) = try await Self.play(["cp", source, ":/x"], dir: dir) { agent in
                let (stream, _) = try agent.openAfterStat()
                if case .early = answer {
                    agent.reply(
                        stream,
                        .with {
                            $0.uploadResult = .with {
                                $0.size = 50_000; $0.sha256 = digest
                            }
                        }, end: true)
                } else if case .result(let size, let sha) = answer {
                    // Wait for the commit, then answer.
                    _ = agent.next(timeoutMs: 5000) { $0.type == .message && $0.stream == stream }
                    agent.reply(
                        stream,
                        .with {
                            $0.uploadResult = .with {
                                $0.size = size; $0.sha256 = sha
                            }
                        }, end: true)
                }
                _ = agent.drainUntilClosed(timeoutMs: 5000)
            }
            #expect(status == 255, "\(answer): \(run.stderr)")
            #expect(run.stderr.contains(expected), "\(answer): \(run.stderr)")
        }
    }

    enum UploadResultCase: Sendable {
        case result(size: UInt64, sha256: Data)
        case early
    }

    @Test("PONGs sent ahead with guessed ids do not forge the round trip")
    func forgedPongsAreIgnored() async throws {
        let (run, status, _) = try await Self.play(["ping", "-c", "2"]) { agent in
            // Every 20 ms, answers for the ids a sequential counter would use, so that one arrives
            // while the host waits for that id; the real PINGs are answered 300 ms late.
            let forged = (0...64).map { id in
                var payload = ByteBuffer()
                payload.writeInteger(UInt64(id))
                return Frame(type: .pong, session: agent.session, payload: payload)
            }
            var pending: [(Date, Frame)] = []
            var lastPing = Date()
            while Date().timeIntervalSince(lastPing) < 2 {
                guard agent.send(forged) else { break }
                if let ping = agent.next(timeoutMs: 20, where: { $0.type == .ping }) {
                    pending.append((Date(), ping))
                    lastPing = Date()
                }
                while let (arrived, ping) = pending.first, Date().timeIntervalSince(arrived) >= 0.3 {
                    pending.removeFirst()
                    agent.send(Frame(type: .pong, session: agent.session, payload: ping.payload))
                }
            }
        }
        #expect(status == 0, "\(run.stderr)")
        let times = run.stdout.split(separator: "\n").compactMap { line in
            line.split(separator: "time=").last.flatMap { Double($0.split(separator: " ").first ?? "") }
        }
        #expect(times.count == 2)
        #expect(times.allSatisfy { $0 >= 290 }, "\(run.stdout)")
    }

    @Test("u32-max counts print as such; escape sequences from the guest never reach the terminal")
    func guestNumbersAndStringsPrintSafely() async throws {
        let (metrics, metricsStatus, _) = try await Self.play(["metrics"]) { agent in
            let (stream, _) = try agent.open()
            agent.reply(
                stream,
                .with {
                    $0.telemetry = .with {
                        $0.cpuCount = .max
                        $0.processCount = .max
                        $0.interfaces = [.with { $0.name = "\u{1B}[2Jeth0" }]
                    }
                }, end: true)
            _ = agent.drainUntilClosed(timeoutMs: 5000)
        }
        #expect(metricsStatus == 0, "\(metrics.stderr)")
        #expect(metrics.stdout.contains("of 4294967295 CPUs"), "\(metrics.stdout)")
        #expect(metrics.stdout.contains("processes 4294967295"))
        #expect(!metrics.stdout.contains("\u{1B}"))
        let (info, infoStatus, _) = try await Self.play(["info"]) { agent in
            let (stream, _) = try agent.open()
            agent.reply(stream, Self.info(hostname: "\u{1B}]0;owned\u{07}evil\u{9B}"), end: true)
            _ = agent.drainUntilClosed(timeoutMs: 5000)
        }
        #expect(infoStatus == 0, "\(info.stderr)")
        #expect(!info.stdout.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x9B })
        #expect(info.stdout.contains("hostname:  \\x1b]0;owned\\x07evil\\u{9b}"), "\(info.stdout)")
        let (error, errorStatus, _) = try await Self.play(["info"]) { agent in
            let (stream, _) = try agent.open()
            agent.reply(
                stream,
                .with {
                    $0.error = .with {
                        $0.code = "io"; $0.message = "bad\u{1B}[31m"
                    }
                }, end: true)
            _ = agent.drainUntilClosed(timeoutMs: 5000)
        }
        #expect(errorStatus == 255)
        #expect(error.stderr.contains("bad\\x1b[31m"), "\(error.stderr)")
    }
}

extension HostileConnection {
    /// The next OPEN after answering `lqx cp`'s stat of the destination with `not_found`.
    func openAfterStat() throws -> (stream: UInt32, request: Request) {
        while true {
            let (stream, request) = try open()
            guard case .stat = request.kind else { return (stream, request) }
            reply(
                stream,
                .with {
                    $0.error = .with {
                        $0.code = "not_found"; $0.message = "no such file"
                    }
                }, end: true)
        }
    }

    /// A file the script creates once it has sent everything (next to the socket).
    var fileSentMarker: String { "\(peerDirectory)/sent" }

    private var peerDirectory: String {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let path = withUnsafeBytes(of: &address.sun_path) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return (path as NSString).deletingLastPathComponent
    }
}

/// A count shared between a script's thread and the test.
final class Tally: Sendable {
    private let count = Mutex<Int>(0)
    func add(_ n: Int = 1) { count.withLock { $0 += n } }
    var value: Int { count.withLock { $0 } }
}
