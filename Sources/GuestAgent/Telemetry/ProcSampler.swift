import AgentProtocol
import FoundationEssentials
import Glibc
import LQXModel
import POSIXSupport

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - Value types

/// Cumulative CPU time counters, in jiffies (clock ticks), as reported by `/proc/stat`.
public struct CPUTimes: Sendable, Equatable {
    /// Time spent in user mode (includes guest time).
    public var user: UInt64
    /// Time spent in user mode with low priority (includes guest_nice time).
    public var nice: UInt64
    /// Time spent in kernel mode.
    public var system: UInt64
    /// Time spent idle.
    public var idle: UInt64
    /// Time spent waiting for I/O to complete.
    public var iowait: UInt64
    /// Time spent servicing hardware interrupts.
    public var irq: UInt64
    /// Time spent servicing soft interrupts.
    public var softirq: UInt64
    /// Time stolen by the hypervisor for other guests.
    public var steal: UInt64

    /// Creates a set of CPU time counters; omitted counters default to zero.
    public init(
        user: UInt64 = 0, nice: UInt64 = 0, system: UInt64 = 0, idle: UInt64 = 0,
        iowait: UInt64 = 0, irq: UInt64 = 0, softirq: UInt64 = 0, steal: UInt64 = 0
    ) {
        self.user = user
        self.nice = nice
        self.system = system
        self.idle = idle
        self.iowait = iowait
        self.irq = irq
        self.softirq = softirq
        self.steal = steal
    }

    /// Non-idle time: user + nice + system + irq + softirq + steal.
    public var busy: UInt64 {
        saturatingSum([user, nice, system, irq, softirq, steal])
    }

    /// All accounted time: `busy` + idle + iowait (guest time is already part of user/nice).
    public var total: UInt64 {
        saturatingSum([busy, idle, iowait])
    }
}

// The other figures are AgentProtocol's `TelemetrySample` parts: the sampler fills them directly, so
// the agent has no second copy of the sample's shape.

// MARK: - Sampler

/// Reads system statistics from the Linux `/proc` and `/sys` file systems.
///
/// All reads are synchronous. The roots can be redirected (for example to a fixture directory in tests);
/// interface addresses and `statvfs` results always come from the running system.
public struct ProcSampler: Sendable {
    /// Root of the proc file system (normally `/proc`).
    public let procRoot: String
    /// Root of the sys file system (normally `/sys`).
    public let sysRoot: String
    /// Path of the mount table to read (normally `/proc/self/mounts`).
    public let mountsPath: String

    /// Largest file the sampler will read; anything beyond is ignored.
    static let maxFileSize = 4 * 1024 * 1024

    /// File system types that never describe real storage and are therefore not reported.
    static let pseudoFilesystemTypes: Set<String> = [
        "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "pstore",
        "debugfs", "tracefs", "configfs", "fusectl", "mqueue", "hugetlbfs", "bpf", "binfmt_misc",
        "autofs", "rpc_pipefs", "nsfs", "efivarfs", "selinuxfs", "ramfs", "squashfs", "rootfs",
    ]

    /// A bundle of every statistic the sampler can read, taken at one moment.
    public struct Snapshot: Sendable, Equatable {
        /// When the snapshot was taken.
        public var timestamp: Date
        /// Aggregate CPU counters across all CPUs.
        public var cpuTotal: CPUTimes
        /// CPU counters per online CPU, in the order listed by the kernel.
        public var cpuPerCPU: [CPUTimes]
        /// Memory figures.
        public var memory: TelemetrySample.Memory
        /// Load averages (all zero if `/proc/loadavg` could not be read).
        public var load: TelemetrySample.Load
        /// Real mounted file systems.
        public var filesystems: [TelemetrySample.Filesystem]
        /// Block device I/O counters.
        public var disks: [TelemetrySample.Disk]
        /// Network interface counters and addresses.
        public var interfaces: [TelemetrySample.NetworkInterface]
        /// Number of processes.
        public var processCount: UInt32
        /// Seconds since boot.
        public var uptimeSeconds: Double

        /// Creates a snapshot from its parts.
        public init(
            timestamp: Date, cpuTotal: CPUTimes, cpuPerCPU: [CPUTimes], memory: TelemetrySample.Memory,
            load: TelemetrySample.Load, filesystems: [TelemetrySample.Filesystem], disks: [TelemetrySample.Disk],
            interfaces: [TelemetrySample.NetworkInterface], processCount: UInt32, uptimeSeconds: Double
        ) {
            self.timestamp = timestamp
            self.cpuTotal = cpuTotal
            self.cpuPerCPU = cpuPerCPU
            self.memory = memory
            self.load = load
            self.filesystems = filesystems
            self.disks = disks
            self.interfaces = interfaces
            self.processCount = processCount
            self.uptimeSeconds = uptimeSeconds
        }
    }

    /// Creates a sampler reading from `procRoot` and `sysRoot`.
    ///
    /// - Parameter mountsPath: The mount table to read; defaults to `procRoot + "/self/mounts"`.
    public init(procRoot: String = "/proc", sysRoot: String = "/sys", mountsPath: String? = nil) {
        self.procRoot = procRoot
        self.sysRoot = sysRoot
        self.mountsPath = mountsPath ?? procRoot + "/self/mounts"
    }

    // MARK: Snapshot

    /// Reads every statistic at once.
    ///
    /// Throws only if `/proc/stat` or `/proc/meminfo` cannot be read; every other source that fails
    /// contributes an empty or zero value instead.
    public func snapshot() throws -> Snapshot {
        let timestamp = Date()
        let cpu = try readCPUTimes()
        let memory = try readMemory()
        return Snapshot(
            timestamp: timestamp,
            cpuTotal: cpu.total,
            cpuPerCPU: cpu.perCPU,
            memory: memory,
            load: (try? readLoad()) ?? TelemetrySample.Load(),
            filesystems: readFilesystems(),
            disks: readDisks(),
            interfaces: readInterfaces(),
            processCount: processCount(),
            uptimeSeconds: uptimeSeconds()
        )
    }

    // MARK: CPU

    /// Reads the aggregate (`cpu`) and per-CPU (`cpuN`) counters from `/proc/stat`.
    ///
    /// Malformed per-CPU lines are skipped. Throws if the file cannot be read or has no aggregate line.
    public func readCPUTimes() throws -> (total: CPUTimes, perCPU: [CPUTimes]) {
        let path = procRoot + "/stat"
        let text = try Self.readFile(path)
        guard let parsed = Self.parseStat(text) else {
            throw LQXError(.io, "\(path): no aggregate cpu line")
        }
        return parsed
    }

    /// CPU utilisation between two samples: 100 × Δbusy / Δtotal, clamped to 0...100.
    ///
    /// Returns 0 when no time elapsed (or the counters went backwards).
    public static func cpuPercent(from start: CPUTimes, to end: CPUTimes) -> Double {
        let deltaTotal = Double(end.total) - Double(start.total)
        guard deltaTotal > 0 else { return 0 }
        let deltaBusy = Double(end.busy) - Double(start.busy)
        let percent = 100 * deltaBusy / deltaTotal
        guard percent.isFinite else { return 0 }
        return min(100, max(0, percent))
    }

    /// Parses the contents of `/proc/stat`; returns `nil` if there is no valid aggregate `cpu` line.
    static func parseStat(_ text: String) -> (total: CPUTimes, perCPU: [CPUTimes])? {
        var total: CPUTimes?
        var perCPU: [CPUTimes] = []
        for line in text.split(separator: "\n") {
            let tokens = fields(line)
            guard let label = tokens.first, label.hasPrefix("cpu") else { continue }
            let suffix = label.dropFirst(3)
            let isAggregate = suffix.isEmpty
            guard isAggregate || isAllDigits(suffix) else { continue }
            guard let times = parseCPUValues(tokens.dropFirst()) else { continue }
            if isAggregate {
                if total == nil { total = times }
            } else {
                perCPU.append(times)
            }
        }
        guard let total else { return nil }
        return (total, perCPU)
    }

    /// Parses the numeric columns of one `cpu` line; at least the first four columns must be present.
    private static func parseCPUValues(_ tokens: ArraySlice<Substring>) -> CPUTimes? {
        let columns = Array(tokens.prefix(8))
        guard columns.count >= 4 else { return nil }
        var values: [UInt64] = []
        for column in columns {
            guard let value = UInt64(column) else { return nil }
            values.append(value)
        }
        while values.count < 8 { values.append(0) }
        return CPUTimes(
            user: values[0], nice: values[1], system: values[2], idle: values[3],
            iowait: values[4], irq: values[5], softirq: values[6], steal: values[7]
        )
    }

    // MARK: Memory

    /// Reads memory figures from `/proc/meminfo` (kB values converted to bytes).
    ///
    /// If `MemAvailable` is missing (very old kernels) it is estimated as free + buffers + cached.
    /// Throws if the file cannot be read or lacks `MemTotal`.
    public func readMemory() throws -> TelemetrySample.Memory {
        let path = procRoot + "/meminfo"
        let text = try Self.readFile(path)
        guard let stats = Self.parseMeminfo(text) else {
            throw LQXError(.io, "\(path): no MemTotal line")
        }
        return stats
    }

    /// Parses the contents of `/proc/meminfo`; returns `nil` if `MemTotal` is missing.
    static func parseMeminfo(_ text: String) -> TelemetrySample.Memory? {
        let values = ProcMeminfo.parse(text)
        guard let total = values["MemTotal"] else { return nil }
        let free = values["MemFree"] ?? 0
        let buffers = values["Buffers"] ?? 0
        let cached = values["Cached"] ?? 0
        return .with {
            $0.totalBytes = total
            $0.availableBytes = values["MemAvailable"] ?? saturatingSum([free, buffers, cached])
            $0.freeBytes = free
            $0.buffersBytes = buffers
            $0.cachedBytes = cached
            $0.swapTotalBytes = values["SwapTotal"] ?? 0
            $0.swapFreeBytes = values["SwapFree"] ?? 0
        }
    }

    // MARK: Load

    /// Reads load averages and entity counts from `/proc/loadavg`.
    ///
    /// Throws if the file cannot be read or is malformed.
    public func readLoad() throws -> TelemetrySample.Load {
        let path = procRoot + "/loadavg"
        let text = try Self.readFile(path)
        guard let load = Self.parseLoadavg(text) else {
            throw LQXError(.io, "\(path): malformed contents")
        }
        return load
    }

    /// Parses the contents of `/proc/loadavg` (`"0.10 0.20 0.30 1/123 4567"`).
    static func parseLoadavg(_ text: String) -> TelemetrySample.Load? {
        let tokens = fields(Substring(text))
        guard tokens.count >= 4,
            let one = Double(tokens[0]), let five = Double(tokens[1]), let fifteen = Double(tokens[2])
        else { return nil }
        let counts = tokens[3].split(separator: "/", omittingEmptySubsequences: false)
        guard counts.count == 2, let runnable = UInt32(counts[0]), let total = UInt32(counts[1]) else {
            return nil
        }
        return .with {
            $0.one = one
            $0.five = five
            $0.fifteen = fifteen
            $0.runnable = runnable
            $0.total = total
        }
    }

    // MARK: File systems

    /// Lists real mounted file systems from the mount table with their `statvfs` figures.
    ///
    /// Pseudo file systems are skipped, duplicate mount points keep the last entry, and mounts whose
    /// `statvfs` fails or reports zero blocks are left out. Returns an empty list if the table is unreadable.
    public func readFilesystems() -> [TelemetrySample.Filesystem] {
        guard let text = try? Self.readFile(mountsPath) else { return [] }
        var result: [TelemetrySample.Filesystem] = []
        for mount in Self.parseMounts(text) {
            var info = statvfs()
            guard statvfs(mount.mountPoint, &info) == 0, info.f_blocks > 0 else { continue }
            let blockSize = UInt64(info.f_frsize)
            let blocks = UInt64(info.f_blocks)
            let freeBlocks = UInt64(info.f_bfree)
            let availableBlocks = UInt64(info.f_bavail)
            let usedBlocks = blocks >= freeBlocks ? blocks - freeBlocks : 0
            result.append(
                .with {
                    $0.mountPoint = mount.mountPoint
                    $0.device = mount.device
                    $0.type = mount.type
                    $0.totalBytes = saturatingMultiply(blocks, blockSize)
                    $0.usedBytes = saturatingMultiply(usedBlocks, blockSize)
                    $0.freeBytes = saturatingMultiply(availableBlocks, blockSize)
                    $0.totalInodes = UInt64(info.f_files)
                    $0.freeInodes = UInt64(info.f_ffree)
                })
        }
        return result
    }

    /// One entry of the mount table.
    struct MountEntry: Equatable {
        var device: String
        var mountPoint: String
        var type: String
    }

    /// Parses a mount table, drops pseudo file systems and deduplicates by mount point (last entry wins,
    /// at the position of that last entry).
    static func parseMounts(_ text: String) -> [MountEntry] {
        var entries: [MountEntry] = []
        for line in text.split(separator: "\n") {
            let tokens = fields(line)
            guard tokens.count >= 3 else { continue }
            let entry = MountEntry(
                device: decodeOctalEscapes(tokens[0]),
                mountPoint: decodeOctalEscapes(tokens[1]),
                type: decodeOctalEscapes(tokens[2])
            )
            guard entry.mountPoint.hasPrefix("/"), !pseudoFilesystemTypes.contains(entry.type) else { continue }
            entries.removeAll { $0.mountPoint == entry.mountPoint }
            entries.append(entry)
        }
        return entries
    }

    /// Decodes the `\ooo` octal escapes the kernel uses for spaces, tabs, newlines and backslashes.
    static func decodeOctalEscapes(_ field: Substring) -> String {
        guard field.contains("\\" as Character) else { return String(field) }
        let bytes = Array(field.utf8)
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "\\"), index + 3 < bytes.count {
                let digits = bytes[(index + 1)..<(index + 4)]
                if digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "7") }) {
                    let value = digits.reduce(0) { $0 * 8 + Int($1 - UInt8(ascii: "0")) }
                    if value <= 0xFF {
                        output.append(UInt8(value))
                        index += 4
                        continue
                    }
                }
            }
            output.append(bytes[index])
            index += 1
        }
        return String(decoding: output, as: UTF8.self)
    }

    // MARK: Disks

    /// Reads block device counters from `/proc/diskstats`.
    ///
    /// Loop, RAM and zram devices and devices whose counters are all zero are skipped; whole disks and
    /// partitions are both reported. Returns an empty list if the file is unreadable.
    public func readDisks() -> [TelemetrySample.Disk] {
        guard let text = try? Self.readFile(procRoot + "/diskstats") else { return [] }
        return Self.parseDiskstats(text)
    }

    /// Parses the contents of `/proc/diskstats`.
    static func parseDiskstats(_ text: String) -> [TelemetrySample.Disk] {
        let sectorSize: UInt64 = 512
        var result: [TelemetrySample.Disk] = []
        for line in text.split(separator: "\n") {
            let tokens = fields(line)
            // major minor name + 11 classic counters.
            guard tokens.count >= 14 else { continue }
            let name = String(tokens[2])
            guard !name.isEmpty, !name.hasPrefix("loop"), !name.hasPrefix("ram"), !name.hasPrefix("zram") else {
                continue
            }
            var counters: [UInt64] = []
            for token in tokens[3..<14] {
                guard let value = UInt64(token) else { break }
                counters.append(value)
            }
            guard counters.count == 11, counters.contains(where: { $0 != 0 }) else { continue }
            result.append(
                .with {
                    $0.name = name
                    $0.readsCompleted = counters[0]
                    $0.readBytes = saturatingMultiply(counters[2], sectorSize)
                    $0.writesCompleted = counters[4]
                    $0.writtenBytes = saturatingMultiply(counters[6], sectorSize)
                    $0.ioTimeMs = counters[9]
                })
        }
        return result
    }

    // MARK: Network

    /// Reads network interfaces from `/proc/net/dev`, adding addresses and the up flag from `getifaddrs`
    /// and the MAC address (plus `operstate` as the fallback for the up state) from `sysRoot/class/net`.
    ///
    /// Returns an empty list if `/proc/net/dev` is unreadable.
    public func readInterfaces() -> [TelemetrySample.NetworkInterface] {
        guard let text = try? Self.readFile(procRoot + "/net/dev") else { return [] }
        var interfaces = Self.parseNetDev(text)
        let system = Self.systemInterfaceAddresses()
        for index in interfaces.indices {
            let name = interfaces[index].name
            let directory = sysRoot + "/class/net/" + name
            if let mac = try? Self.readFile(directory + "/address") {
                let trimmed = mac.trimmingSpaces().lowercased()
                if !trimmed.isEmpty, trimmed != "00:00:00:00:00:00" {
                    interfaces[index].macAddress = trimmed
                }
            }
            if let info = system[name] {
                interfaces[index].addresses = info.addresses
                interfaces[index].up = info.flags & UInt32(IFF_UP) != 0
            } else if let state = try? Self.readFile(directory + "/operstate") {
                interfaces[index].up = state.trimmingSpaces().lowercased() == "up"
            }
        }
        return interfaces
    }

    /// Parses the counters in `/proc/net/dev`; addresses, MAC and state are left at their defaults.
    static func parseNetDev(_ text: String) -> [TelemetrySample.NetworkInterface] {
        var result: [TelemetrySample.NetworkInterface] = []
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].trimmingSpaces()
            guard !name.isEmpty, !name.contains(" " as Character), !name.contains("|" as Character) else { continue }
            let tokens = fields(line[line.index(after: colon)...])
            guard tokens.count >= 16 else { continue }
            var counters: [UInt64] = []
            for token in tokens.prefix(16) {
                guard let value = UInt64(token) else { break }
                counters.append(value)
            }
            guard counters.count == 16 else { continue }
            result.append(
                .with {
                    $0.name = name
                    ($0.rxBytes, $0.rxPackets, $0.rxErrors, $0.rxDropped) = (
                        counters[0], counters[1], counters[2], counters[3]
                    )
                    ($0.txBytes, $0.txPackets, $0.txErrors, $0.txDropped) = (
                        counters[8], counters[9], counters[10], counters[11]
                    )
                })
        }
        return result
    }

    /// Addresses and flags of one interface as reported by `getifaddrs`.
    struct InterfaceAddressInfo {
        var addresses: [String] = []
        var flags: UInt32 = 0
    }

    /// Collects IPv4/IPv6 addresses (CIDR text) and flags for every interface of the running system.
    /// Alias labels such as `eth0:1` are merged into their base interface.
    static func systemInterfaceAddresses() -> [String: InterfaceAddressInfo] {
        var head: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&head) == 0 else { return [:] }
        defer { freeifaddrs(head) }
        var result: [String: InterfaceAddressInfo] = [:]
        var cursor = head
        while let entry = cursor {
            cursor = entry.pointee.ifa_next
            guard let cName = entry.pointee.ifa_name else { continue }
            let label = String(cString: cName)
            let name = label.split(separator: ":", maxSplits: 1).first.map(String.init) ?? label
            guard !name.isEmpty else { continue }
            var info = result[name] ?? InterfaceAddressInfo()
            info.flags |= entry.pointee.ifa_flags
            if let address = entry.pointee.ifa_addr,
                let text = cidrText(address: address, netmask: entry.pointee.ifa_netmask),
                !info.addresses.contains(text)
            {
                info.addresses.append(text)
            }
            result[name] = info
        }
        return result
    }

    /// Formats an AF_INET/AF_INET6 socket address and its netmask as CIDR text; `nil` for other families.
    private static func cidrText(
        address: UnsafeMutablePointer<sockaddr>, netmask: UnsafeMutablePointer<sockaddr>?
    ) -> String? {
        let family = Int32(address.pointee.sa_family)
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let capacity = socklen_t(buffer.count)
        let prefix: Int
        switch family {
        case AF_INET:
            var socketAddress = UnsafeRawPointer(address).loadUnaligned(as: sockaddr_in.self)
            guard inet_ntop(AF_INET, &socketAddress.sin_addr, &buffer, capacity) != nil else { return nil }
            if let netmask {
                let mask = UnsafeRawPointer(netmask).loadUnaligned(as: sockaddr_in.self)
                prefix = mask.sin_addr.s_addr.nonzeroBitCount
            } else {
                prefix = 32
            }
        case AF_INET6:
            var socketAddress = UnsafeRawPointer(address).loadUnaligned(as: sockaddr_in6.self)
            guard inet_ntop(AF_INET6, &socketAddress.sin6_addr, &buffer, capacity) != nil else { return nil }
            if let netmask {
                let mask = UnsafeRawPointer(netmask).loadUnaligned(as: sockaddr_in6.self)
                prefix = withUnsafeBytes(of: mask.sin6_addr) { bytes in
                    bytes.reduce(0) { $0 + $1.nonzeroBitCount }
                }
            } else {
                prefix = 128
            }
        default:
            return nil
        }
        let textBytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: textBytes, as: UTF8.self) + "/" + String(prefix)
    }

    // MARK: Processes and uptime

    /// Number of processes: the numeric directory names directly inside `procRoot` (0 if unreadable).
    public func processCount() -> UInt32 {
        guard let directory = opendir(procRoot) else { return 0 }
        defer { closedir(directory) }
        var count: UInt32 = 0
        while let entry = readdir(directory) {
            let nameBytes = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                Array(raw.prefix { $0 != 0 })
            }
            guard !nameBytes.isEmpty,
                nameBytes.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
            else { continue }
            let type = Int(entry.pointee.d_type)
            var isDirectory = type == DT_DIR
            if type == DT_UNKNOWN || type == DT_LNK {
                let path = procRoot + "/" + String(decoding: nameBytes, as: UTF8.self)
                var info = stat()
                isDirectory = stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
            }
            if isDirectory, count < UInt32.max {
                count += 1
            }
        }
        return count
    }

    /// Seconds since boot from `/proc/uptime`, or 0 if it cannot be read.
    public func uptimeSeconds() -> Double {
        guard let text = try? Self.readFile(procRoot + "/uptime"),
            let first = Self.fields(Substring(text)).first,
            let value = Double(first), value.isFinite, value >= 0
        else { return 0 }
        return value
    }

    // MARK: Helpers

    /// Reads a whole file with `open`/`read` until end of file (proc files report a size of 0),
    /// stopping after `maxFileSize` bytes, and decodes it as UTF-8 (invalid bytes are replaced).
    static func readFile(_ path: String) throws -> String {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw LQXError(.io, "\(path): \(errorText(errno))")
        }
        defer { close(descriptor) }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while data.count < maxFileSize {
            let wanted = min(chunk.count, maxFileSize - data.count)
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, wanted) }
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                throw LQXError(.io, "\(path): \(errorText(code))")
            }
            if count == 0 { break }
            data.append(contentsOf: chunk[0..<count])
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// The `strerror` text for an `errno` value.
    private static func errorText(_ code: Int32) -> String {
        guard let message = strerror(code) else { return "error \(code)" }
        return String(cString: message)
    }

    /// Splits a line on spaces and tabs, dropping empty fields.
    static func fields(_ line: Substring) -> [Substring] {
        line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
    }

    /// Whether `text` is non-empty and consists only of ASCII digits.
    private static func isAllDigits(_ text: Substring) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }
}

// MARK: - Arithmetic helpers

/// Adds values, saturating at `UInt64.max` instead of trapping.
private func saturatingSum(_ values: [UInt64]) -> UInt64 {
    var sum: UInt64 = 0
    for value in values {
        let (result, overflow) = sum.addingReportingOverflow(value)
        if overflow { return .max }
        sum = result
    }
    return sum
}

/// Multiplies two values, saturating at `UInt64.max` instead of trapping.
private func saturatingMultiply(_ lhs: UInt64, _ rhs: UInt64) -> UInt64 {
    let (result, overflow) = lhs.multipliedReportingOverflow(by: rhs)
    return overflow ? .max : result
}
