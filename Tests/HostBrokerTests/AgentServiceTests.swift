import AgentProtocol
import AgentTestSupport
import Foundation
import GuestAgent
import LQXTestSupport
import NIOCore
import Testing

@testable import HostBroker

@Suite("info, telemetry, shutdown, policy, concurrency")
struct AgentServiceTests {
    @Test("info describes this machine")
    func info() async throws {
        let info = try await Harness.withAgent { try await $0.info() }
        var uts = utsname()
        uname(&uts)
        let release = withUnsafeBytes(of: uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        #expect(info.kernelRelease == release)
        #expect(info.agentVersion == AgentConfiguration.agentVersion)
        #expect(info.protocolVersion == 1)
        let bootID = try String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)
        #expect(info.bootID == bootID.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(!info.os.prettyName.isEmpty)
        #expect(info.capabilities.contains("exec"))
        #expect(info.uptimeSeconds > 0)
    }

    @Test("telemetry matches /proc")
    func telemetryMatchesProc() async throws {
        let sample = try await Harness.withAgent { try await $0.telemetry() }
        let meminfo = try String(contentsOfFile: "/proc/meminfo", encoding: .utf8)
        let totalLine = try #require(meminfo.split(separator: "\n").first { $0.hasPrefix("MemTotal:") })
        let totalKiB = try #require(UInt64(totalLine.split(separator: " ")[1]))
        #expect(sample.memory.totalBytes == totalKiB * 1024)
        #expect(sample.memory.availableBytes <= sample.memory.totalBytes)
        let cpus = try String(contentsOfFile: "/proc/stat", encoding: .utf8).split(separator: "\n")
            .filter { $0.hasPrefix("cpu") && !$0.hasPrefix("cpu ") }.count
        #expect(Int(sample.cpuCount) == cpus)
        #expect(sample.cpu.perCpuPercent.count == cpus)
        #expect((0...100).contains(sample.cpu.totalPercent))
        let root = try #require(sample.filesystems.first { $0.mountPoint == "/" })
        var vfs = statvfs()
        statvfs("/", &vfs)
        #expect(root.totalBytes == UInt64(vfs.f_blocks) * UInt64(vfs.f_frsize))
        #expect(sample.interfaces.contains { $0.name == "lo" && $0.addresses.contains("127.0.0.1/8") })
        #expect(sample.processCount > 0)
    }

    @Test("a telemetry subscription delivers samples on schedule")
    func subscription() async throws {
        let samples = try await Harness.withAgent { session in
            var samples: [TelemetrySample] = []
            for try await sample in session.telemetry(every: .milliseconds(200)) {
                samples.append(sample)
                if samples.count == 3 { break }
            }
            // The stream is released on the agent side once the subscription ends.
            try await Task.sleep(for: .milliseconds(300))
            #expect(session.openStreams == 0)
            return samples
        }
        #expect(samples.count == 3)
        #expect(samples[2].timestampMs > samples[0].timestampMs)
    }

    @Test("shutdown is acknowledged (dry run)", arguments: [PowerAction.poweroff, .reboot, .halt])
    func shutdown(action: PowerAction) async throws {
        let accepted = try await Harness.withAgent { try await $0.shutdown(action, delay: 3) }
        #expect(accepted.action == action)
        #expect(accepted.dryRun)
        #expect(accepted.method == "dry-run")
        #expect(accepted.delaySeconds == 3)
    }

    @Test("policy denials are clear errors")
    func policyDenials() async throws {
        let policy = AgentPolicy(allowExec: false, allowFileRead: false, allowFileWrite: false, allowShutdown: false)
        try await Harness.withAgent(policy: policy, audit: false) { session, dir in
            let exec = await #expect(throws: AgentError.self) { _ = try await session.exec(ExecOptions(["true"])) }
            #expect(exec?.code == .denied)
            #expect(exec?.message.contains("exec is disabled") == true)
            _ = FileManager.default.createFile(atPath: dir.file("f"), contents: Data("x".utf8))
            let upload = await #expect(throws: AgentError.self) {
                _ = try await session.upload(file: dir.file("f"), to: dir.file("g"))
            }
            #expect(upload?.code == .denied)
            #expect(!FileManager.default.fileExists(atPath: dir.file("g")))
            let download = await #expect(throws: AgentError.self) {
                _ = try await session.download(dir.file("f"), to: dir.file("h"))
            }
            #expect(download?.code == .denied)
            let shutdown = await #expect(throws: AgentError.self) { _ = try await session.shutdown() }
            #expect(shutdown?.code == .denied)
            // Allowed operations still work.
            _ = try await session.info()
        }
    }

    @Test("every exec and file operation is audited")
    func auditLog() async throws {
        let lines = try await Harness.withAgent(audit: true) { session, dir in
            _ = try await session.exec(ExecOptions(["true"])).collect()
            _ = FileManager.default.createFile(atPath: dir.file("f"), contents: Data("abc".utf8))
            _ = try await session.upload(file: dir.file("f"), to: dir.file("g"))
            _ = try await session.download(dir.file("g"), to: dir.file("h"))
            return try String(contentsOfFile: dir.file("audit.log"), encoding: .utf8)
        }.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(lines.map { $0["op"] as? String } == ["exec", "upload", "download"])
        #expect(lines[0]["argv"] as? [String] == ["true"])
        #expect(lines[0]["result"] as? String == "exit 0")
        #expect(lines[1]["size"] as? Int == 3)
    }

    @Test("an idle agent gives back memory once per quiet period and keeps serving")
    func idleRelease() async throws {
        try await Harness.withAgentService(configure: { $0.idleTrim = .milliseconds(300) }) { agent, session, _ in
            func waitForReleases(_ count: Int) async throws {
                let deadline = ContinuousClock.now + .seconds(10)
                while agent.core.metrics.idleReleases < count, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            // Startup and the first command: at least one release once things are quiet.
            _ = try await session.exec(ExecOptions(["true"])).collect()
            try await waitForReleases(1)
            try await Task.sleep(for: .milliseconds(900))
            let settled = agent.core.metrics.idleReleases
            #expect(settled >= 1)
            // Keepalive pings are not requests: no further release without new work.
            try await Task.sleep(for: .milliseconds(900))
            #expect(agent.core.metrics.idleReleases == settled)
            // The agent works after releasing its pages, and a new quiet period releases again, once.
            let (out, _, status) = try await session.exec(ExecOptions(["echo", "still here"])).collect()
            #expect(status.exitCode == 0)
            #expect(String(buffer: out) == "still here\n")
            try await waitForReleases(settled + 1)
            try await Task.sleep(for: .milliseconds(900))
            #expect(agent.core.metrics.idleReleases == settled + 1)
        }
    }

    @Test("denied and failed operations are audited too")
    func auditFailures() async throws {
        let policy = AgentPolicy(allowExec: false)
        let lines = try await Harness.withAgent(policy: policy, audit: true) { session, dir in
            _ = try? await session.exec(ExecOptions(["rm", "-rf", "/important"]))
            _ = try? await session.download(dir.file("missing"), to: dir.file("x"))
            return try String(contentsOfFile: dir.file("audit.log"), encoding: .utf8)
        }.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(lines.count == 2)
        #expect(lines.first?["argv"] as? [String] == ["rm", "-rf", "/important"])
        #expect((lines.first?["result"] as? String)?.hasPrefix("error denied") == true)
        #expect((lines.last?["result"] as? String)?.hasPrefix("error not_found") == true)
    }

    @Test("the unix socket is 0600 and never replaces a file that is not a socket")
    func socketSafety() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        try await withRunningAgent(socket: socket) {
            var st = stat()
            #expect(lstat(socket, &st) == 0)
            #expect(st.st_mode & 0o777 == 0o600)
            #expect((st.st_mode & S_IFMT) == S_IFSOCK)
        }
        let precious = dir.file("precious")
        _ = FileManager.default.createFile(atPath: precious, contents: Data("keep".utf8))
        let agent = try buildAgent(configuration: Harness.agentConfiguration(socket: precious))
        let error = await #expect(throws: AgentError.self) { try await agent.run() }
        #expect(error?.code == .alreadyExists)
        #expect(try String(contentsOfFile: precious, encoding: .utf8) == "keep")
    }

    @Test("pings are answered promptly while exec output and an upload stream")
    func concurrentPings() async throws {
        try await Harness.withAgent { session, dir in
            let source = dir.file("payload")
            _ = FileManager.default.createFile(atPath: source, contents: Data(pseudoRandomBytes(64 << 20, seed: 3)))
            async let output: Int = {
                var count = 0
                for try await event in try await session.exec(ExecOptions(["head", "-c", "\(200 << 20)", "/dev/zero"]))
                {
                    if case .stdout(let b) = event { count += b.readableBytes }
                }
                return count
            }()
            let start = ContinuousClock.now
            async let upload = session.upload(file: source, to: dir.file("copy"))
            var worst = Duration.zero
            for _ in 0..<50 {
                worst = max(worst, try await session.ping())
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(try await output == 200 << 20)
            #expect(try await upload.size == 64 << 20)
            let busy = ContinuousClock.now - start
            print("worst ping during transfers: \(worst) (transfers took \(busy))")
            // A ping queued behind the bulk data would take about as long as the transfers themselves.
            #expect(worst < max(.milliseconds(500), busy / 4), "a ping waited behind bulk data for \(worst)")
        }
    }
}
