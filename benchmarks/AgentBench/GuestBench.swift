import AgentProtocol
import Foundation
import HostBroker
import Logging
import NIOCore

/// The agent measured inside a QEMU guest (`lqx-bench guest [IMAGE_DIR]`): every figure is printed
/// next to its floor or ceiling measured in the same guest in the same run, because under TCG the
/// emulated CPU bounds much of the work. Prints a Markdown report.
enum GuestBench {
    static let size = 64 << 20
    static let rawPort = "/dev/virtio-ports/org.limiquantix.raw.0"

    static func run(imageDirectory: String) async throws {
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { root.deleteLastPathComponent() }
        let work = NSTemporaryDirectory() + "lqx-guest-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let socket = work + "/agent.sock", raw = work + "/raw.sock", console = work + "/console.log"
        let qemu = Process()
        qemu.executableURL = root.appendingPathComponent("packaging/guest-image/boot.sh")
        qemu.arguments = [
            "--image", imageDirectory, "--socket", socket, "--raw-socket", raw, "--console", console,
            "--memory", "1024", "--cpus", "2",
        ]
        let started = ContinuousClock.now
        try qemu.run()
        defer {
            kill(qemu.processIdentifier, SIGKILL)
            qemu.waitUntilExit()
        }
        var logger = Logger(label: "bench")
        logger.logLevel = .critical
        let client = AgentClient(
            address: .unix(path: socket),
            configuration: BrokerConfiguration(reconnectBackoff: .milliseconds(20)...(.milliseconds(100))),
            logger: logger)
        let runner = Task { try await client.run() }
        defer { runner.cancel() }
        let session = try await client.session(timeout: .seconds(180))
        let ready = AgentBench.seconds(ContinuousClock.now - started)
        let consoleText = (try? String(contentsOfFile: console, encoding: .utf8)) ?? ""
        let rcsUp = consoleText.range(of: "rcS: up ").flatMap {
            Double(consoleText[$0.upperBound...].prefix { $0 != " " })
        }
        let cpuFlags = try await session.run("sh", "-c", "grep -m1 '^flags' /proc/cpuinfo")
        let accel =
            FileManager.default.fileExists(atPath: "/sys/module/kvm_intel")
                || FileManager.default.fileExists(atPath: "/sys/module/kvm_amd") ? "KVM, -cpu host" : "TCG, -cpu max"
        // Longer than the agent's idle release period (10 s) without a request.
        try await Task.sleep(for: .seconds(12))
        let idle = try await agentMemory(session)

        for _ in 0..<20 { _ = try await session.ping() }
        for _ in 0..<5 { _ = try await session.exec(ExecOptions(["/bin/true"])).collect() }
        var pings: [Double] = []
        for _ in 0..<500 { pings.append(AgentBench.ms(try await session.ping())) }
        var execs: [Double] = [], inAgent: [Double] = []
        for _ in 0..<200 {
            let start = ContinuousClock.now
            let status = try await session.exec(ExecOptions(["/bin/true"])).collect().status
            precondition(status.exitCode == 0)
            execs.append(AgentBench.ms(ContinuousClock.now - start))
            inAgent.append(AgentBench.ms(status.duration))
        }
        let echoFloor = try await rawEchoRoundTrips(session, raw: raw)
        // The floor: the guest's own fork+exec+wait of the same /bin/true, 200 times, timed in the guest.
        let spawnFloor =
            try await guestSeconds(session, "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done") / 200 * 1000
        if ProcessInfo.processInfo.environment["LQX_BENCH_LATENCY_ONLY"] != nil {
            // Quick iteration on the latency paths: no transfers, no report.
            let p = { (values: [Double], q: Double) in AgentBench.f(AgentBench.percentile(values, q), 2) }
            print(
                "exec p50/p99 \(p(execs, 50))/\(p(execs, 99)) ms (spawn floor \(AgentBench.f(spawnFloor, 2)) ms,"
                    + " in agent \(p(inAgent, 50)) ms); ping p50/p99 \(p(pings, 50))/\(p(pings, 99)) ms"
                    + " (raw echo \(p(echoFloor, 50))/\(p(echoFloor, 99)) ms)")
            return
        }

        // Transfers: 64 MiB to and from tmpfs, three runs each (median reported).
        let source = work + "/source.bin"
        var bytes = [UInt8](repeating: 0, count: size)
        for i in stride(from: 0, to: size, by: 8) {
            var z = UInt64(i) &* 0x9E37_79B9_7F4A_7C15
            z = (z ^ (z >> 31)) &* 0xBF58_476D_1CE4_E5B9
            withUnsafeBytes(of: z) { bytes.replaceSubrange(i..<i + 8, with: $0) }
        }
        try Data(bytes).write(to: URL(fileURLWithPath: source))
        var uploads: [Double] = [], downloads: [Double] = []
        for run in 0..<3 {
            let up = ContinuousClock.now
            _ = try await session.upload(file: source, to: "/tmp/bench-up.bin")
            uploads.append(Double(size) / AgentBench.seconds(ContinuousClock.now - up) / 1e6)
            let down = ContinuousClock.now
            _ = try await session.download("/tmp/bench-up.bin", to: work + "/down-\(run).bin")
            downloads.append(Double(size) / AgentBench.seconds(ContinuousClock.now - down) / 1e6)
            try? FileManager.default.removeItem(atPath: work + "/down-\(run).bin")
        }
        let after = try await agentMemory(session)

        // Ceilings. The raw channel: bytes through the second port with nothing on top.
        let rawIn = try await rawHostToGuest(session, raw: raw)
        let rawOut = try await rawGuestToHost(session, raw: raw)
        // The guest's own cost of the work: write or read the file, and hash it (busybox sha256sum).
        let write = try await guestSeconds(session, "cat /tmp/bench-up.bin > /tmp/bench-copy.bin; sync")
        let read = try await guestSeconds(session, "cat /tmp/bench-copy.bin > /dev/null")
        let hash = try await guestSeconds(session, "sha256sum /tmp/bench-copy.bin > /dev/null")
        _ = try await session.run("rm", "-f", "/tmp/bench-copy.bin", "/tmp/bench-up.bin")
        let mb = Double(size) / 1e6
        let workUp = mb / (write + hash), workDown = mb / (read + hash)
        let upload = median(uploads), download = median(downloads)
        let ceilingUp = min(rawIn, workUp), ceilingDown = min(rawOut, workDown)
        let execP50 = AgentBench.percentile(execs, 50)
        let f = AgentBench.f
        print(
            """
            # Agent inside a QEMU guest (\(accel), 2 vCPUs, 1024 MiB)

            Guest: Debian cloud kernel + busybox initramfs from `packaging/guest-image/build.sh`; agent on the
            virtio-serial port `org.limiquantix.agent.0`, broker (`lqx-bench`) on the host end's unix socket.
            Guest CPU has SHA-NI: \(cpuFlags.contains(" sha_ni") ? "yes" : "no"), SSE4.2: \(cpuFlags.contains(" sse4_2") ? "yes" : "no").

            | metric | result | floor / ceiling in the same guest | ratio | target |
            |---|---|---|---|---|
            | exec `/bin/true` p50 / p99 | \(f(execP50, 2)) / \(f(AgentBench.percentile(execs, 99), 2)) ms | guest spawn floor \(f(spawnFloor, 2)) ms (sh fork+exec+wait) | floor + \(f(execP50 - spawnFloor, 2)) ms (in the agent, spawn to exit: p50 \(f(AgentBench.percentile(inAgent, 50), 2)) ms) | ≤ floor + 1 ms: \(execP50 <= spawnFloor + 1 ? "met" : "not met") |
            | ping p50 / p99 | \(f(AgentBench.percentile(pings, 50), 3)) / \(f(AgentBench.percentile(pings, 99), 3)) ms | raw channel echo (`cat` on the second port) p50 / p99 \(f(AgentBench.percentile(echoFloor, 50), 3)) / \(f(AgentBench.percentile(echoFloor, 99), 3)) ms | floor + \(f(AgentBench.percentile(pings, 50) - AgentBench.percentile(echoFloor, 50), 3)) ms | ≤ 0.5 ms: \(AgentBench.percentile(pings, 50) <= 0.5 ? "met" : "not met") |
            | upload 64 MiB → tmpfs | \(f(upload, 1)) MB/s (runs \(uploads.map { f($0, 0) })) | raw channel \(f(rawIn, 1)) MB/s; write+hash \(f(workUp, 1)) MB/s | \(f(upload / ceilingUp * 100, 0)) % of the lower | ≥ 50 %: \(upload >= ceilingUp / 2 ? "met" : "not met") |
            | download 64 MiB ← tmpfs | \(f(download, 1)) MB/s (runs \(downloads.map { f($0, 0) })) | raw channel \(f(rawOut, 1)) MB/s; read+hash \(f(workDown, 1)) MB/s | \(f(download / ceilingDown * 100, 0)) % of the lower | ≥ 50 %: \(download >= ceilingDown / 2 ? "met" : "not met") |
            | agent RSS idle (12 s without a request) | \(f(Double(idle.rss) / 1e6, 1)) MB (private \(f(Double(idle.anon) / 1e6, 1)) MB) | | | |
            | agent RSS after transfers / peak | \(f(Double(after.rss) / 1e6, 1)) / \(f(Double(after.peak) / 1e6, 1)) MB (private \(f(Double(after.anon) / 1e6, 1)) MB) | | | |
            | QEMU start → agent session | \(f(ready, 2)) s | rcS reached \(rcsUp.map { f($0, 2) } ?? "?") s after kernel start | | |

            Guest-side times for the ceilings (64 MiB, timed with /proc/uptime in the guest): write \(f(write, 2)) s,
            read \(f(read, 2)) s, busybox sha256sum \(f(hash, 2)) s.
            """)
    }

    static func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    /// Seconds a shell snippet takes in the guest, timed there (10 ms resolution).
    static func guestSeconds(_ session: AgentSession, _ script: String) async throws -> Double {
        let out = try await session.run(
            "sh", "-c", "read a b < /proc/uptime; \(script); read c d < /proc/uptime; echo $a $c")
        let parts = out.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Double($0) }
        guard parts.count == 2 else { throw AgentError(.internal, "unexpected timing output: \(out)") }
        return max(parts[1] - parts[0], 0.01)
    }

    static func agentMemory(_ session: AgentSession) async throws -> (rss: Int, anon: Int, peak: Int) {
        let status = try await session.run("sh", "-c", "cat /proc/$(pidof lqx-agent)/status")
        func field(_ name: String) -> Int {
            let line = status.split(separator: "\n").first { $0.hasPrefix(name + ":") }
            return (line?.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0) * 1024
        }
        return (field("VmRSS"), field("RssAnon"), field("VmHWM"))
    }

    static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path.utf8.prefix(107)) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            close(fd)
            throw AgentError(.unavailable, "cannot connect to \(path)")
        }
        return fd
    }

    /// The channel's own round trip: 40 bytes echoed by `cat` on the raw port, 300 times (ms).
    static func rawEchoRoundTrips(_ session: AgentSession, raw: String) async throws -> [Double] {
        // The host end first: a port with no host reads EOF at once, and cat would exit.
        let fd = try connect(raw)
        defer { close(fd) }
        let echo = try await session.exec(ExecOptions(["sh", "-c", "exec 3<>\(rawPort); exec cat <&3 >&3"]))
        defer { echo.cancel() }
        try await Task.sleep(for: .seconds(1))
        return try await Task.detached { () throws -> [Double] in
            var times: [Double] = []
            let message = [UInt8](repeating: 0x78, count: 40)
            var buffer = [UInt8](repeating: 0, count: 4096)
            for _ in 0..<320 {
                let start = ContinuousClock.now
                guard write(fd, message, message.count) == message.count else {
                    throw AgentError(.io, "raw write failed")
                }
                var got = 0
                while got < message.count {
                    let n = read(fd, &buffer, buffer.count)
                    guard n > 0 else { throw AgentError(.io, "raw echo ended") }
                    got += n
                }
                times.append(AgentBench.ms(ContinuousClock.now - start))
            }
            return Array(times.dropFirst(20))
        }.value
    }

    /// Host → guest through the raw port: the host writes 64 MiB, `dd` in the guest discards them
    /// (64 KiB reads, as the agent's relay does).
    static func rawHostToGuest(_ session: AgentSession, raw: String) async throws -> Double {
        let fd = try connect(raw)
        defer { close(fd) }
        let reader = try await session.exec(
            ExecOptions(["dd", "if=\(rawPort)", "of=/dev/null", "bs=65536", "count=\(size >> 16)", "iflag=fullblock"]))
        let start = ContinuousClock.now
        let writer = Task.detached {
            let chunk = [UInt8](repeating: 0x5A, count: 1 << 20)
            var sent = 0
            while sent < size {
                let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress!, min(chunk.count, size - sent)) }
                guard n > 0 else { break }
                sent += n
            }
        }
        let status = try await reader.collect().status
        await writer.value
        precondition(status.exitCode == 0, "raw reader failed: \(status)")
        return Double(size) / AgentBench.seconds(ContinuousClock.now - start) / 1e6
    }

    /// Guest → host through the raw port: `dd` in the guest writes 64 MiB in 64 KiB writes, the host
    /// discards them.
    static func rawGuestToHost(_ session: AgentSession, raw: String) async throws -> Double {
        let fd = try connect(raw)
        defer { close(fd) }
        let start = ContinuousClock.now
        let reader = Task.detached { () -> ContinuousClock.Instant in
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var received = 0
            while received < size {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                guard n > 0 else { break }
                received += n
            }
            return ContinuousClock.now
        }
        let writer = try await session.exec(
            ExecOptions(["dd", "if=/dev/zero", "of=\(rawPort)", "bs=65536", "count=\(size >> 16)"]))
        let end = await reader.value
        _ = try await writer.collect()
        return Double(size) / AgentBench.seconds(end - start) / 1e6
    }
}

extension AgentSession {
    /// Runs argv in the guest and returns stdout; throws unless it exits 0.
    func run(_ argv: String...) async throws -> String {
        let (out, err, status) = try await exec(ExecOptions(argv)).collect()
        guard status.exitCode == 0 else {
            throw AgentError(.internal, "\(argv) exited \(status.shellStatus): \(String(buffer: err))")
        }
        return String(buffer: out)
    }
}
