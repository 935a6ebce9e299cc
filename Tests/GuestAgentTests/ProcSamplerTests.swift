import AgentProtocol
import Foundation
import LQXModel
import Testing

@testable import GuestAgent

/// A throwaway directory tree standing in for `/proc` or `/sys`.
private struct FakeRoot {
    let path: String

    init(files: [String: String] = [:], directories: [String] = []) throws {
        let manager = FileManager.default
        path = manager.temporaryDirectory.appendingPathComponent("procsampler-\(UUID().uuidString)").path
        try manager.createDirectory(atPath: path, withIntermediateDirectories: true)
        for directory in directories {
            try manager.createDirectory(atPath: path + "/" + directory, withIntermediateDirectories: true)
        }
        for (relativePath, contents) in files {
            try write(relativePath, contents)
        }
    }

    func write(_ relativePath: String, _ contents: String) throws {
        let fullPath = path + "/" + relativePath
        let parent = URL(fileURLWithPath: fullPath).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        try contents.write(toFile: fullPath, atomically: true, encoding: .utf8)
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Escapes a path the way the kernel does in `/proc/self/mounts`.
private func mountEscaped(_ path: String) -> String {
    path.replacingOccurrences(of: "\\", with: "\\134")
        .replacingOccurrences(of: " ", with: "\\040")
        .replacingOccurrences(of: "\t", with: "\\011")
        .replacingOccurrences(of: "\n", with: "\\012")
}

/// Reads a whole file independently of the sampler (works for /proc files that report size 0).
private func readText(_ path: String) throws -> String {
    let handle = try #require(FileHandle(forReadingAtPath: path))
    defer { try? handle.close() }
    return String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
}

private let statBefore = """
    cpu  100 10 50 800 20 5 5 10 7 0
    cpu0 50 5 25 400 10 2 3 5 7 0
    cpu1 50 5 25 400 10 3 2 5 0 0
    cpuX 1 2 3 4
    cpu2 1 2
    cpu3 1 2 3 4
    cpu4 1 2 x 4
    intr 12345 1 2
    ctxt 999
    btime 1700000000

    """

private let statAfter = """
    cpu  200 10 100 1400 40 5 5 40 0 0
    cpu0 100 5 50 700 20 2 3 20 0 0
    cpu1 100 5 50 700 20 3 2 20 0 0

    """

private let meminfo = """
    MemTotal:        2048000 kB
    MemFree:          512000 kB
    MemAvailable:    1024000 kB
    Buffers:           10000 kB
    Cached:           200000 kB
    SwapCached:            7 kB
    Bogus line without a colon
    Broken:       notanumber kB
    SwapTotal:       1000000 kB
    SwapFree:         900000 kB
    HugePages_Total:       0

    """

private let diskstats = """
       7       0 loop0 100 0 200 0 0 0 0 0 0 0 0 0 0 0 0 0 0
       1       0 ram0 5 0 8 0 0 0 0 0 0 1 1
     252       0 zram0 5 0 8 0 0 0 0 0 0 1 1 0 0 0 0
     253       0 vda 1000 10 20000 300 500 5 8000 200 0 400 500 0 0 0 0 0 0
     253       1 vda1 900 10 18000 250 400 5 6000 150 0 350 400
     253      16 vdb 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
       8       0 sda 1 2
       8      16 sdb 1 2 3 4 5 6 7 8 9 x 11

    """

private let netDev = """
    Inter-|   Receive                                                |  Transmit
     face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier \
    compressed
    tstfake0:1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0
      tstfake1:    5    1    0    0    0     0          0         0        6       1    0    0    0     0       0 0
    broken0: 1 2 3

    """

private func fixtureFiles() -> [String: String] {
    [
        "stat": statBefore,
        "meminfo": meminfo,
        "loadavg": "0.50 1.25 2.00 3/456 7890\n",
        "diskstats": diskstats,
        "net/dev": netDev,
        "uptime": "12345.67 23456.78\n",
        "99": "a numeric file is not a process\n",
    ]
}

private let fixtureDirectories = ["1", "42", "abc", "12a", "self"]

private func fakeSys() throws -> FakeRoot {
    try FakeRoot(files: [
        "class/net/tstfake0/address": "52:54:00:AB:CD:EF\n",
        "class/net/tstfake0/operstate": "up\n",
        "class/net/tstfake1/address": "00:00:00:00:00:00\n",
        "class/net/tstfake1/operstate": "down\n",
    ])
}

@Suite("ProcSampler with a fake /proc")
struct ProcSamplerFixtureTests {
    @Test func parsesCPUTimesAndSkipsMalformedLines() throws {
        let root = try FakeRoot(files: fixtureFiles())
        defer { root.remove() }
        let sampler = ProcSampler(procRoot: root.path)

        let first = try sampler.readCPUTimes()
        #expect(
            first.total
                == CPUTimes(
                    user: 100, nice: 10, system: 50, idle: 800, iowait: 20, irq: 5, softirq: 5, steal: 10
                ))
        #expect(first.total.busy == 180)
        #expect(first.total.total == 1000)
        #expect(
            first.perCPU == [
                CPUTimes(user: 50, nice: 5, system: 25, idle: 400, iowait: 10, irq: 2, softirq: 3, steal: 5),
                CPUTimes(user: 50, nice: 5, system: 25, idle: 400, iowait: 10, irq: 3, softirq: 2, steal: 5),
                CPUTimes(user: 1, nice: 2, system: 3, idle: 4),
            ])
        #expect(first.perCPU[0].busy == 90)
        #expect(first.perCPU[0].total == 500)

        try root.write("stat", statAfter)
        let second = try sampler.readCPUTimes()
        #expect(second.total.busy == 360)
        #expect(second.total.total == 1800)
        #expect(second.perCPU.count == 2)

        // Δbusy = 180, Δtotal = 800.
        let percent = ProcSampler.cpuPercent(from: first.total, to: second.total)
        #expect(abs(percent - 22.5) < 1e-9)
        // cpu0: Δbusy = 180 - 90 = 90, Δtotal = 900 - 500 = 400.
        let cpu0 = ProcSampler.cpuPercent(from: first.perCPU[0], to: second.perCPU[0])
        #expect(abs(cpu0 - 22.5) < 1e-9)
    }

    @Test func cpuPercentEdgeCases() {
        let sample = CPUTimes(user: 10, system: 10, idle: 80)
        #expect(ProcSampler.cpuPercent(from: sample, to: sample) == 0)

        let later = CPUTimes(user: 20, system: 20, idle: 160)
        #expect(ProcSampler.cpuPercent(from: later, to: sample) == 0)
        #expect(abs(ProcSampler.cpuPercent(from: sample, to: later) - 20) < 1e-9)

        let allBusy = CPUTimes(user: 110, system: 10, idle: 80)
        #expect(ProcSampler.cpuPercent(from: sample, to: allBusy) == 100)

        // Idle counter going backwards: Δbusy = 100, Δtotal = 50 → clamped to 100.
        let odd = CPUTimes(user: 110, system: 10, idle: 30)
        #expect(ProcSampler.cpuPercent(from: sample, to: odd) == 100)
    }

    @Test func statWithoutAggregateLineThrows() throws {
        let root = try FakeRoot(files: ["stat": "cpu0 1 2 3 4\nintr 5\n"])
        defer { root.remove() }
        #expect(throws: LQXError.self) {
            try ProcSampler(procRoot: root.path).readCPUTimes()
        }
    }

    @Test func parsesMemory() throws {
        let root = try FakeRoot(files: fixtureFiles())
        defer { root.remove() }
        let memory = try ProcSampler(procRoot: root.path).readMemory()
        #expect(
            memory
                == .with {
                    $0.totalBytes = 2_048_000 * 1024
                    $0.availableBytes = 1_024_000 * 1024
                    $0.freeBytes = 512_000 * 1024
                    $0.buffersBytes = 10_000 * 1024
                    $0.cachedBytes = 200_000 * 1024
                    $0.swapTotalBytes = 1_000_000 * 1024
                    $0.swapFreeBytes = 900_000 * 1024
                })
    }

    @Test func memoryAvailableFallsBackWhenMissing() throws {
        let root = try FakeRoot(files: [
            "meminfo": "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n"
        ])
        defer { root.remove() }
        let memory = try ProcSampler(procRoot: root.path).readMemory()
        #expect(memory.totalBytes == 1000 * 1024)
        #expect(memory.availableBytes == 420 * 1024)
        #expect(memory.swapTotalBytes == 0)
    }

    @Test func meminfoWithoutTotalThrows() throws {
        let root = try FakeRoot(files: ["meminfo": "MemFree: 100 kB\n"])
        defer { root.remove() }
        #expect(throws: LQXError.self) {
            try ProcSampler(procRoot: root.path).readMemory()
        }
    }

    @Test func parsesLoadAverage() throws {
        let root = try FakeRoot(files: fixtureFiles())
        defer { root.remove() }
        let load = try ProcSampler(procRoot: root.path).readLoad()
        #expect([load.one, load.five, load.fifteen] == [0.5, 1.25, 2.0])
        #expect([load.runnable, load.total] == [3, 456])
    }

    @Test func malformedLoadAverageThrows() throws {
        let root = try FakeRoot(files: ["loadavg": "0.50 abc 2.00 3/456 7890\n"])
        defer { root.remove() }
        #expect(throws: LQXError.self) {
            try ProcSampler(procRoot: root.path).readLoad()
        }
        try root.write("loadavg", "0.50 1.0 2.00 3456 7890\n")
        #expect(throws: LQXError.self) {
            try ProcSampler(procRoot: root.path).readLoad()
        }
    }

    @Test func parsesDiskstats() throws {
        let root = try FakeRoot(files: fixtureFiles())
        defer { root.remove() }
        let disks = ProcSampler(procRoot: root.path).readDisks()
        #expect(disks.map(\.name) == ["vda", "vda1"])
        let counters: [[UInt64]] = disks.map {
            [$0.readsCompleted, $0.readBytes, $0.writesCompleted, $0.writtenBytes, $0.ioTimeMs]
        }
        let expected: [[UInt64]] = [[1000, 10_240_000, 500, 4_096_000, 400], [900, 9_216_000, 400, 3_072_000, 350]]
        #expect(counters == expected)
    }

    @Test func parsesNetworkInterfaces() throws {
        let root = try FakeRoot(files: fixtureFiles())
        defer { root.remove() }
        let sys = try fakeSys()
        defer { sys.remove() }
        let interfaces = ProcSampler(procRoot: root.path, sysRoot: sys.path).readInterfaces()
        #expect(interfaces.map(\.name) == ["tstfake0", "tstfake1"])
        let received: [[UInt64]] = interfaces.map { [$0.rxBytes, $0.rxPackets, $0.rxErrors, $0.rxDropped] }
        let sent: [[UInt64]] = interfaces.map { [$0.txBytes, $0.txPackets, $0.txErrors, $0.txDropped] }
        #expect(received == [[1000, 10, 1, 2], [5, 1, 0, 0]])
        #expect(sent == [[2000, 20, 3, 4], [6, 1, 0, 0]])
        #expect(interfaces.map(\.addresses) == [[], []])
        #expect(interfaces.map(\.macAddress) == ["52:54:00:ab:cd:ef", ""])
        #expect(interfaces.map(\.up) == [true, false])
    }

    @Test func countsProcessesAndReadsUptime() throws {
        let root = try FakeRoot(files: fixtureFiles(), directories: fixtureDirectories)
        defer { root.remove() }
        let sampler = ProcSampler(procRoot: root.path)
        #expect(sampler.processCount() == 2)
        #expect(sampler.uptimeSeconds() == 12345.67)
    }

    @Test func missingRootDegradesGracefully() throws {
        let sampler = ProcSampler(procRoot: "/nonexistent-\(UUID().uuidString)", sysRoot: "/nonexistent")
        #expect(throws: LQXError.self) { try sampler.readCPUTimes() }
        #expect(throws: LQXError.self) { try sampler.readMemory() }
        #expect(throws: LQXError.self) { try sampler.readLoad() }
        #expect(throws: LQXError.self) { try sampler.snapshot() }
        #expect(sampler.readFilesystems().isEmpty)
        #expect(sampler.readDisks().isEmpty)
        #expect(sampler.readInterfaces().isEmpty)
        #expect(sampler.processCount() == 0)
        #expect(sampler.uptimeSeconds() == 0)
    }

    @Test func readsMountTable() throws {
        let root = try FakeRoot(directories: ["with space", "sysdir"])
        defer { root.remove() }
        let spaced = root.path + "/with space"
        let mounts = """
            proc /proc proc rw,nosuid 0 0
            /dev/first \(mountEscaped(spaced)) ext4 rw 0 0
            /dev/second \(mountEscaped(spaced)) xfs rw 0 0
            none \(mountEscaped(root.path + "/does not exist")) ext4 rw 0 0
            garbage-line
            sysfs \(mountEscaped(root.path + "/sysdir")) sysfs rw 0 0

            """
        try root.write("mounts", mounts)
        let sampler = ProcSampler(procRoot: root.path, mountsPath: root.path + "/mounts")
        let filesystems = sampler.readFilesystems()
        #expect(filesystems.count == 1)
        let entry = try #require(filesystems.first)
        #expect(entry.mountPoint == spaced)
        #expect(entry.device == "/dev/second")
        #expect(entry.type == "xfs")
        #expect(entry.totalBytes > 0)
        #expect(entry.usedBytes <= entry.totalBytes)
        #expect(entry.freeBytes <= entry.totalBytes - entry.usedBytes)
    }

    @Test func decodesOctalEscapes() {
        #expect(ProcSampler.decodeOctalEscapes("/mnt/a\\040b") == "/mnt/a b")
        #expect(ProcSampler.decodeOctalEscapes("/x\\011y\\012z\\134w") == "/x\ty\nz\\w")
        #expect(ProcSampler.decodeOctalEscapes("/trailing\\04") == "/trailing\\04")
        #expect(ProcSampler.decodeOctalEscapes("/not\\089octal") == "/not\\089octal")
    }

    @Test func snapshotOfFixture() throws {
        let root = try FakeRoot(files: fixtureFiles(), directories: fixtureDirectories)
        defer { root.remove() }
        let sys = try fakeSys()
        defer { sys.remove() }
        let snapshot = try ProcSampler(procRoot: root.path, sysRoot: sys.path).snapshot()
        #expect(snapshot.cpuTotal.total == 1000)
        #expect(snapshot.cpuPerCPU.count == 3)
        #expect(snapshot.memory.totalBytes == 2_048_000 * 1024)
        #expect(snapshot.load.total == 456)
        #expect(snapshot.filesystems.isEmpty)
        #expect(snapshot.disks.map(\.name) == ["vda", "vda1"])
        #expect(snapshot.interfaces.map(\.name) == ["tstfake0", "tstfake1"])
        #expect(snapshot.processCount == 2)
        #expect(snapshot.uptimeSeconds == 12345.67)
    }
}

@Suite("ProcSampler against the real /proc", .enabled(if: FileManager.default.fileExists(atPath: "/proc/stat")))
struct ProcSamplerLiveTests {
    let sampler = ProcSampler()

    @Test func memoryTotalMatchesMeminfo() throws {
        let text = try readText("/proc/meminfo")
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("MemTotal:") })
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        #expect(fields.count >= 2)
        let kilobytes = try #require(UInt64(fields[1]))
        #expect(try sampler.readMemory().totalBytes == kilobytes * 1024)
    }

    @Test func perCPUCountMatchesStat() throws {
        let text = try readText("/proc/stat")
        let cpuLines = text.split(separator: "\n").filter { line in
            guard let label = line.split(separator: " ").first, label.hasPrefix("cpu") else { return false }
            let suffix = label.dropFirst(3)
            return !suffix.isEmpty && suffix.allSatisfy { $0.isASCII && $0.isNumber }
        }
        let times = try sampler.readCPUTimes()
        #expect(times.perCPU.count == cpuLines.count)
        #expect(times.total.total > 0)
    }

    @Test func rootFilesystemIsListed() throws {
        let root = try #require(sampler.readFilesystems().first { $0.mountPoint == "/" })
        #expect(root.totalBytes > 0)
    }

    @Test func processCountIsPositive() {
        #expect(sampler.processCount() > 0)
    }

    @Test func loopbackInterfaceHasLocalhostAddress() throws {
        let loopback = try #require(sampler.readInterfaces().first { $0.name == "lo" })
        #expect(loopback.addresses.contains("127.0.0.1/8"))
    }

    @Test func snapshotSucceeds() throws {
        let snapshot = try sampler.snapshot()
        #expect(snapshot.memory.totalBytes > 0)
        #expect(snapshot.uptimeSeconds > 0)
    }
}
