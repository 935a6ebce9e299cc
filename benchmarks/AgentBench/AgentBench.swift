import AgentProtocol
import CLQXSupport
import Foundation
import HostBroker
import Logging
import NIOCore

/// Agent/broker benchmark: a release `lqx-agent` in its own process on a unix socket, the broker
/// in this process. Prints a Markdown report with the ratio to the QEMU guest agent reference.
@main
struct AgentBench {
    static func main() async throws {
        let arguments = CommandLine.arguments
        guard arguments.count >= 2 else {
            print("usage: lqx-bench PATH/TO/lqx-agent [work-dir]\n       lqx-bench guest IMAGE_DIR")
            exit(2)
        }
        if arguments[1] == "guest" {
            try await GuestBench.run(imageDirectory: arguments.count > 2 ? arguments[2] : ".build-guest/image")
            return
        }
        // The broker process tunes malloc as `lqx cp` does (large transfer buffers stay on the heap).
        lqx_tune_malloc()
        let agentPath = arguments[1]
        let work = arguments.count > 2 ? arguments[2] : NSTemporaryDirectory() + "lqx-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let socket = work + "/agent.sock"
        let agent = Process()
        agent.executableURL = URL(fileURLWithPath: agentPath)
        agent.arguments = ["--listen", "unix:\(socket)", "--audit-log", work + "/audit.log", "--log-level", "warning"]
        try agent.run()
        defer { agent.terminate() }
        for _ in 0..<100 where access(socket, F_OK) != 0 { usleep(20_000) }
        sleep(1)
        let startRSS = rss(pid: agent.processIdentifier, field: "VmRSS")

        var logger = Logger(label: "bench")
        logger.logLevel = .critical
        let client = AgentClient(address: .unix(path: socket), logger: logger)
        let runner = Task { try await client.run() }
        defer { runner.cancel() }
        let session = try await client.session(timeout: .seconds(10))
        // Idle: a host connected (keepalives flowing), no request for longer than the agent's
        // default idle release period (10 s).
        try await Task.sleep(for: .seconds(12))
        let idleRSS = rss(pid: agent.processIdentifier, field: "VmRSS")
        let idleAnon = rss(pid: agent.processIdentifier, field: "RssAnon")

        // Warm up both paths.
        for _ in 0..<50 { _ = try await session.ping() }
        for _ in 0..<20 { _ = try await session.exec(ExecOptions(["/bin/true"])).collect() }

        var pings: [Double] = []
        for _ in 0..<5000 { pings.append(ms(try await session.ping())) }
        var execs: [Double] = []
        var inAgent: [Double] = []
        for _ in 0..<1000 {
            let start = ContinuousClock.now
            let status = try await session.exec(ExecOptions(["/bin/true"])).collect().status
            precondition(status.exitCode == 0)
            execs.append(ms(ContinuousClock.now - start))
            inAgent.append(ms(status.duration))
        }
        var spawns: [Double] = []
        for _ in 0..<300 { spawns.append(try localSpawn()) }
        if ProcessInfo.processInfo.environment["LQX_BENCH_LATENCY_ONLY"] != nil {
            // Quick iteration on the latency paths: no transfers, no report.
            print(
                "exec p50/p90/p99 \(f(percentile(execs, 50)))/\(f(percentile(execs, 90)))/\(f(percentile(execs, 99))) ms;"
                    + " ping p50/p99 \(f(percentile(pings, 50), 3))/\(f(percentile(pings, 99), 3)) ms;"
                    + " agent spawn-to-exit p50 \(f(percentile(inAgent, 50))) ms;"
                    + " local spawn p50 \(f(percentile(spawns, 50))) ms; idle RSS \(f(Double(idleRSS) / 1e6)) MB")
            return
        }

        let size = 256 << 20
        // Ceilings of the per-byte work both ends do: SHA-256 and CRC-32C.
        let block = [UInt8](repeating: 0x5A, count: 1 << 20)
        var start = ContinuousClock.now
        var sha = SHA256Hasher()
        for _ in 0..<256 { block.withUnsafeBytes { sha.update($0) } }
        _ = sha.finalize()
        let shaRate = Double(size) / seconds(ContinuousClock.now - start) / 1e6
        start = ContinuousClock.now
        var crc: UInt32 = 0
        for _ in 0..<256 { crc = block.withUnsafeBytes { CRC32C.checksum($0, continuing: crc) } }
        let crcRate = Double(size) / seconds(ContinuousClock.now - start) / 1e6
        let source = work + "/src.bin"
        _ = FileManager.default.createFile(
            atPath: source, contents: Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }))
        var uploads: [Double] = [], downloads: [Double] = []
        for round in 0..<3 {
            start = ContinuousClock.now
            _ = try await session.upload(file: source, to: work + "/up-\(round).bin")
            uploads.append(Double(size) / seconds(ContinuousClock.now - start) / 1e6)
            start = ContinuousClock.now
            _ = try await session.download(work + "/up-\(round).bin", to: work + "/down-\(round).bin")
            downloads.append(Double(size) / seconds(ContinuousClock.now - start) / 1e6)
            unlink(work + "/up-\(round).bin")
            unlink(work + "/down-\(round).bin")
        }
        // Peak RSS across a 1 GiB upload and download.
        let big = work + "/big.bin"
        let fd = open(big, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        ftruncate(fd, off_t(1 << 30))
        close(fd)
        _ = try await session.upload(file: big, to: work + "/big.up")
        _ = try await session.download(work + "/big.up", to: work + "/big.down")
        let peakRSS = rss(pid: agent.processIdentifier, field: "VmHWM")
        let afterAnon = rss(pid: agent.processIdentifier, field: "RssAnon")
        let afterRSS = rss(pid: agent.processIdentifier, field: "VmRSS")
        try await Task.sleep(for: .seconds(12))
        let settledRSS = rss(pid: agent.processIdentifier, field: "VmRSS")
        let settledAnon = rss(pid: agent.processIdentifier, field: "RssAnon")
        for name in ["big.bin", "big.up", "big.down", "src.bin"] { unlink(work + "/" + name) }

        let cpu =
            (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.split(separator: "\n")
            .first { $0.hasPrefix("model name") }.map {
                String($0.split(separator: ":")[1]).trimmingCharacters(in: .whitespaces)
            } ?? "?"
        print(
            """
            # Agent and broker over a unix socket (separate processes)

            Machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(cpu); release builds.
            CRC-32C in hardware: \(CRC32C.isHardwareAccelerated) (\(f(crcRate, 0)) MB/s); SHA-256 (SHA extensions: \(SHA256Hasher.isHardware)) \(f(shaRate, 0)) MB/s on one core. Transfer sizes: 256 MiB ×3 (median), peak over a further 1 GiB each way.

            | metric | limiquantix | target | QEMU guest agent reference | factor vs reference (> 1 = better) |
            |---|---|---|---|---|
            | exec `/bin/true` round trip p50 | \(f(percentile(execs, 50))) ms | ≤ 1 ms | 2.3 ms | \(f(2.3 / percentile(execs, 50)))× |
            | exec `/bin/true` round trip p99 | \(f(percentile(execs, 99))) ms | | | |
            | local fork+exec of `/bin/true` (floor) p50 | \(f(percentile(spawns, 50))) ms | | | |
            | ping p50 | \(f(percentile(pings, 50), 3)) ms | | 0.10 ms | \(f(0.10 / percentile(pings, 50)))× |
            | ping p99 | \(f(percentile(pings, 99), 3)) ms | | | |
            | upload 256 MiB | \(f(percentile(uploads, 50), 0)) MB/s | ≥ 1000 MB/s | 29 MB/s (file write) | \(f(percentile(uploads, 50) / 29, 1))× |
            | download 256 MiB | \(f(percentile(downloads, 50), 0)) MB/s | ≥ 1000 MB/s | 41–90 MB/s (file read) | \(f(percentile(downloads, 50) / 90, 1))× (vs 90) |
            | agent RSS idle (host connected, 12 s without a request) | \(f(Double(idleRSS) / 1e6)) MB | ≤ 10 MB | 3.9 MB | \(f(3.9 / (Double(idleRSS) / 1e6)))× |
            | agent RSS 1 s after start | \(f(Double(startRSS) / 1e6)) MB | | | |
            | agent private memory idle (RssAnon) | \(f(Double(idleAnon) / 1e6)) MB | | | |
            | agent RSS peak (transfers incl. 1 GiB) | \(f(Double(peakRSS) / 1e6)) MB | ≤ 32 MB | 161 MB (one 48 MiB read) | \(f(161 / (Double(peakRSS) / 1e6)))× |

            Agent RSS right after the transfers \(f(Double(afterRSS) / 1e6)) MB (private, RssAnon: \(f(Double(afterAnon) / 1e6)) MB),
            12 s later \(f(Double(settledRSS) / 1e6)) MB (private \(f(Double(settledAnon) / 1e6)) MB). RSS counts the agent binary's file-backed pages the kernel
            maps around each fault (shared, evictable); after 10 s without a request the agent unmaps the
            clean ones and trims its heap (`--idle-trim`), so only what the idle agent touches stays.

            Raw: exec p50/p90/p99 \(f(percentile(execs, 50)))/\(f(percentile(execs, 90)))/\(f(percentile(execs, 99))) ms; ping p50/p90/p99 \(f(percentile(pings, 50), 3))/\(f(percentile(pings, 90), 3))/\(f(percentile(pings, 99), 3)) ms; uploads \(uploads.map { f($0, 0) }) MB/s; downloads \(downloads.map { f($0, 0) }) MB/s.
            """)
    }

    static func ms(_ d: Duration) -> Double { seconds(d) * 1000 }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    static func percentile(_ values: [Double], _ p: Double) -> Double {
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p / 100 + 0.5))]
    }

    static func f(_ value: Double, _ digits: Int = 2) -> String { String(format: "%.\(digits)f", value) }

    static func rss(pid: Int32, field: String) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }),
            let kb = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return 0 }
        return kb * 1024
    }

    /// The machine's own floor: posix_spawn + wait of /bin/true, in milliseconds.
    static func localSpawn() throws -> Double {
        let start = ContinuousClock.now
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { free(argv[0]) }
        guard posix_spawn(&pid, "/bin/true", nil, nil, argv, environ) == 0 else { throw POSIXError(.EIO) }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return ms(ContinuousClock.now - start)
    }
}
