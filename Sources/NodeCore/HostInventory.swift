import Foundation
import POSIXSupport

/// The host's hardware as the scheduler needs it (MODEL.md, Node status), read from /proc and /sys.
public struct HostInventory: Sendable, Equatable, Codable {
    /// The host's processors: model, topology and feature flags (from /proc/cpuinfo).
    public struct CPU: Sendable, Equatable, Codable {
        /// The model name of the first processor listed (`model name`), or empty.
        public var model: String
        /// Logical CPUs (what `nproc` counts when nothing restricts it).
        public var logical: Int
        /// Physical packages (distinct `physical id`s), at least 1.
        public var sockets: Int
        /// Cores in the package with the most of them (distinct `core id`s), at least 1.
        public var coresPerSocket: Int
        /// Logical CPUs per core, at least 1.
        public var threadsPerCore: Int
        /// Feature flags of the first processor listed (`flags`).
        public var flags: [String]
    }

    /// One NUMA node of the host (from /sys/devices/system/node).
    public struct NUMANode: Sendable, Equatable, Codable {
        /// The node number (N of `nodeN`).
        public var id: Int
        /// The logical CPUs of the node (its `cpulist`).
        public var cpus: [Int]
        /// The node's memory (its MemTotal), in bytes.
        public var memoryBytes: UInt64
    }

    /// The host's memory and huge pages (from /proc/meminfo).
    public struct Memory: Sendable, Equatable, Codable {
        /// MemTotal, in bytes.
        public var totalBytes: UInt64
        /// Huge pages in the pool (HugePages_Total).
        public var hugePagesTotal: Int
        /// The default huge page size (Hugepagesize), in bytes.
        public var hugePageSizeBytes: UInt64
    }

    /// A disk of the host: a block device other than loop, RAM, device-mapper, md, optical or floppy.
    public struct Disk: Sendable, Equatable, Codable {
        /// What the device is: `hdd` (rotational), `ssd` (not rotational) or `nvme`.
        public enum Kind: String, Sendable, Equatable, Codable { case hdd, ssd, nvme }
        /// The kernel's name for the device (`sda`, `nvme0n1`).
        public var name: String
        /// Whether the device is a hard disk, an SSD or an NVMe device.
        public var kind: Kind
        /// The device's size, in bytes.
        public var sizeBytes: UInt64
        /// The model the device reports, or empty.
        public var model: String
    }

    /// A network interface with a device behind it (physical or paravirtual; not lo or bridges).
    public struct NIC: Sendable, Equatable, Codable {
        /// The interface's name (`eth0`, `enp1s0`).
        public var name: String
        /// The name of the kernel driver bound to the device (`virtio_net`, `ixgbe`).
        public var driver: String
        /// Mb/s; nil when the link reports none (down, or virtual).
        public var speedMbps: Int?
        /// The interface's MAC address, or empty.
        public var mac: String
        /// Virtual functions the device supports (SR-IOV), 0 without SR-IOV.
        public var sriovTotalVFs: Int
    }

    /// One PCI display controller (PCI class 0x03xxxx).
    public struct GPU: Sendable, Equatable, Codable {
        /// The device's PCI address (`0000:01:00.0`).
        public var address: String
        /// The PCI vendor id as sysfs shows it (`0x10de`), or empty.
        public var vendorID: String
        /// The PCI device id as sysfs shows it, or empty.
        public var deviceID: String
    }

    /// The host's processors.
    public var cpu: CPU
    /// The host's NUMA nodes.
    public var numa: [NUMANode]
    /// The host's memory.
    public var memory: Memory
    /// The host's disks, by name.
    public var disks: [Disk]
    /// The host's network interfaces, by name.
    public var nics: [NIC]
    /// The host's GPUs, by PCI address.
    public var gpus: [GPU]

    /// Reads the host (roots are parameters so tests can use a prepared tree).
    public static func detect(procRoot: String = "/proc", sysRoot: String = "/sys") -> HostInventory {
        func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }
        func trimmed(_ path: String) -> String? {
            read(path)?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        func list(_ path: String) -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
        }

        // CPU: one block per logical CPU in /proc/cpuinfo.
        var model = "", flags: [String] = []
        var logical = 0
        var packages = Set<String>(), coresPerPackage: [String: Set<String>] = [:]
        for block in (read("\(procRoot)/cpuinfo") ?? "").components(separatedBy: "\n\n")
        where block.contains("processor") {
            logical += 1
            var fields: [String: String] = [:]
            for line in block.split(separator: "\n") {
                guard let colon = line.firstIndex(of: ":") else { continue }
                fields[line[..<colon].trimmingCharacters(in: .whitespaces)] =
                    line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            if model.isEmpty { model = fields["model name"] ?? "" }
            if flags.isEmpty { flags = (fields["flags"] ?? "").split(separator: " ").map(String.init) }
            let package = fields["physical id"] ?? "0"
            packages.insert(package)
            coresPerPackage[package, default: []].insert(fields["core id"] ?? String(logical))
        }
        let sockets = max(packages.count, 1)
        let cores = max(coresPerPackage.values.map(\.count).max() ?? 1, 1)
        let threads = max(logical / max(sockets * cores, 1), 1)

        // Memory and huge pages.
        let meminfo = ProcMeminfo.parse(read("\(procRoot)/meminfo") ?? "")

        // NUMA nodes.
        var numa: [NUMANode] = []
        for entry in list("\(sysRoot)/devices/system/node") where entry.hasPrefix("node") {
            guard let id = Int(entry.dropFirst(4)) else { continue }
            let base = "\(sysRoot)/devices/system/node/\(entry)"
            var bytes: UInt64 = 0
            for line in (read("\(base)/meminfo") ?? "").split(separator: "\n") where line.contains("MemTotal:") {
                let parts = line.split(separator: " ")
                if let kb = parts.dropLast().last.flatMap({ UInt64($0) }) { bytes = kb * 1024 }
            }
            numa.append(NUMANode(id: id, cpus: Self.parseCPUList(trimmed("\(base)/cpulist") ?? ""), memoryBytes: bytes))
        }

        // Block devices: real disks only (no loop, ram, zram, device-mapper or md).
        var disks: [Disk] = []
        for name in list("\(sysRoot)/block") {
            guard !["loop", "ram", "zram", "dm-", "md", "sr", "fd"].contains(where: { name.hasPrefix($0) }) else {
                continue
            }
            let base = "\(sysRoot)/block/\(name)"
            let sectors = UInt64(trimmed("\(base)/size") ?? "") ?? 0
            let kind: Disk.Kind =
                name.hasPrefix("nvme") ? .nvme : (trimmed("\(base)/queue/rotational") == "1" ? .hdd : .ssd)
            disks.append(
                Disk(name: name, kind: kind, sizeBytes: sectors * 512, model: trimmed("\(base)/device/model") ?? ""))
        }

        // Network interfaces with a device behind them (physical or paravirtual; not lo, bridges, tunnels).
        var nics: [NIC] = []
        for name in list("\(sysRoot)/class/net") {
            let base = "\(sysRoot)/class/net/\(name)"
            guard let driverLink = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(base)/device/driver")
            else { continue }
            let speed = Int(trimmed("\(base)/speed") ?? "").flatMap { $0 > 0 ? $0 : nil }
            nics.append(
                NIC(
                    name: name, driver: (driverLink as NSString).lastPathComponent, speedMbps: speed,
                    mac: trimmed("\(base)/address") ?? "",
                    sriovTotalVFs: Int(trimmed("\(base)/device/sriov_totalvfs") ?? "") ?? 0))
        }

        // GPUs: PCI display controllers (class 0x03xxxx).
        var gpus: [GPU] = []
        for address in list("\(sysRoot)/bus/pci/devices") {
            let base = "\(sysRoot)/bus/pci/devices/\(address)"
            guard let pciClass = trimmed("\(base)/class"), pciClass.hasPrefix("0x03") else { continue }
            gpus.append(
                GPU(
                    address: address, vendorID: trimmed("\(base)/vendor") ?? "",
                    deviceID: trimmed("\(base)/device") ?? ""))
        }

        return HostInventory(
            cpu: CPU(
                model: model, logical: logical, sockets: sockets, coresPerSocket: cores, threadsPerCore: threads,
                flags: flags),
            numa: numa,
            memory: Memory(
                totalBytes: meminfo["MemTotal"] ?? 0, hugePagesTotal: Int(meminfo["HugePages_Total"] ?? 0),
                hugePageSizeBytes: meminfo["Hugepagesize"] ?? 0),
            disks: disks, nics: nics, gpus: gpus)
    }

    /// "0-3,8,10-11" → [0, 1, 2, 3, 8, 10, 11]; malformed parts are skipped.
    static func parseCPUList(_ text: String) -> [Int] {
        var cpus: [Int] = []
        for part in text.split(separator: ",") {
            let bounds = part.split(separator: "-").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            if bounds.count == 1, let single = bounds[0] {
                cpus.append(single)
            } else if bounds.count == 2, let low = bounds[0], let high = bounds[1], low <= high, high - low < 65536 {
                cpus += Array(low...high)
            }
        }
        return cpus
    }
}
