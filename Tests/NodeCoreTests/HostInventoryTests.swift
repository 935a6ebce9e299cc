import Foundation
import Testing

@testable import NodeCore

@Suite("host discovery")
struct HostInventoryTests {
    @Test("this host: CPU count, memory, disks and NICs agree with the kernel's own numbers")
    func thisHost() throws {
        let inventory = HostInventory.detect()
        #expect(inventory.cpu.logical == sysconf(Int32(_SC_NPROCESSORS_CONF)))
        #expect(
            inventory.cpu.sockets * inventory.cpu.coresPerSocket * inventory.cpu.threadsPerCore == inventory.cpu.logical
        )
        #expect(!inventory.cpu.model.isEmpty)
        let pages = UInt64(sysconf(Int32(_SC_PHYS_PAGES))) * UInt64(sysconf(Int32(_SC_PAGESIZE)))
        #expect(inventory.memory.totalBytes > 0)
        #expect(inventory.memory.totalBytes <= pages + (64 << 20) && inventory.memory.totalBytes + (512 << 20) >= pages)
        for disk in inventory.disks {
            #expect(!disk.name.hasPrefix("loop") && !disk.name.hasPrefix("zram"))
            #expect(disk.sizeBytes > 0)
        }
        #expect(!inventory.nics.contains { $0.name == "lo" })
        if !inventory.numa.isEmpty {
            #expect(inventory.numa.flatMap(\.cpus).count == inventory.cpu.logical)
        }
        print(
            "host inventory: \(inventory.cpu.model), \(inventory.cpu.logical) CPUs, disks \(inventory.disks.map(\.name)), NICs \(inventory.nics.map { "\($0.name)/\($0.driver)" })"
        )
    }

    @Test("a prepared tree: two sockets with SMT, NUMA, NVMe/SSD/HDD, SR-IOV NIC, a GPU")
    func preparedTree() throws {
        let root = NSTemporaryDirectory() + "lqx-inventory-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        func write(_ path: String, _ text: String) throws {
            let full = root + path
            try FileManager.default.createDirectory(
                atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: full, atomically: true, encoding: .utf8)
        }
        var cpuinfo = ""
        for cpu in 0..<8 {
            cpuinfo +=
                "processor\t: \(cpu)\nmodel name\t: Test CPU 9000\nphysical id\t: \(cpu / 4)\ncore id\t\t: \((cpu % 4) / 2)\nflags\t\t: fpu vmx sse4_2\n\n"
        }
        try write("/proc/cpuinfo", cpuinfo)
        try write(
            "/proc/meminfo", "MemTotal:       16384000 kB\nHugePages_Total:      16\nHugepagesize:       2048 kB\n")
        try write("/sys/devices/system/node/node0/cpulist", "0-3\n")
        try write("/sys/devices/system/node/node0/meminfo", "Node 0 MemTotal:        8192000 kB\n")
        try write("/sys/devices/system/node/node1/cpulist", "4-7\n")
        try write("/sys/devices/system/node/node1/meminfo", "Node 1 MemTotal:        8192000 kB\n")
        try write("/sys/block/nvme0n1/size", "2000\n")
        try write("/sys/block/nvme0n1/queue/rotational", "0\n")
        try write("/sys/block/sda/size", "1000\n")
        try write("/sys/block/sda/queue/rotational", "1\n")
        try write("/sys/block/sdb/size", "1000\n")
        try write("/sys/block/sdb/queue/rotational", "0\n")
        try write("/sys/block/loop0/size", "1000\n")
        try write("/sys/class/net/eth0/speed", "25000\n")
        try write("/sys/class/net/eth0/address", "aa:bb:cc:dd:ee:ff\n")
        try write("/sys/class/net/eth0/device/sriov_totalvfs", "64\n")
        try write("/sys/drivers/mlx5_core/.keep", "")
        try FileManager.default.createSymbolicLink(
            atPath: root + "/sys/class/net/eth0/device/driver", withDestinationPath: root + "/sys/drivers/mlx5_core")
        try write("/sys/class/net/lo/address", "00:00:00:00:00:00\n")
        try write("/sys/bus/pci/devices/0000:65:00.0/class", "0x030000\n")
        try write("/sys/bus/pci/devices/0000:65:00.0/vendor", "0x10de\n")
        try write("/sys/bus/pci/devices/0000:65:00.0/device", "0x2204\n")
        try write("/sys/bus/pci/devices/0000:00:1f.0/class", "0x060100\n")

        let inventory = HostInventory.detect(procRoot: root + "/proc", sysRoot: root + "/sys")
        #expect(inventory.cpu.model == "Test CPU 9000")
        #expect(inventory.cpu.logical == 8)
        #expect(inventory.cpu.sockets == 2)
        #expect(inventory.cpu.coresPerSocket == 2)
        #expect(inventory.cpu.threadsPerCore == 2)
        #expect(inventory.cpu.flags.contains("vmx"))
        #expect(inventory.memory.totalBytes == 16_384_000 * 1024)
        #expect(inventory.memory.hugePagesTotal == 16)
        #expect(inventory.memory.hugePageSizeBytes == 2048 * 1024)
        #expect(inventory.numa.map(\.id) == [0, 1])
        #expect(inventory.numa[1].cpus == [4, 5, 6, 7])
        #expect(inventory.numa[0].memoryBytes == 8_192_000 * 1024)
        #expect(inventory.disks.map(\.name) == ["nvme0n1", "sda", "sdb"])
        #expect(inventory.disks.map(\.kind) == [.nvme, .hdd, .ssd])
        #expect(inventory.disks[0].sizeBytes == 2000 * 512)
        #expect(inventory.nics.count == 1)
        #expect(inventory.nics.first?.driver == "mlx5_core")
        #expect(inventory.nics.first?.speedMbps == 25000)
        #expect(inventory.nics.first?.sriovTotalVFs == 64)
        #expect(inventory.gpus == [.init(address: "0000:65:00.0", vendorID: "0x10de", deviceID: "0x2204")])
        #expect(HostInventory.parseCPUList("0-2,5,x,9-8") == [0, 1, 2, 5])
    }
}
