/// A value with an empty state, built in place: `TelemetrySample.with { $0.cpuCount = 2 }`.
public protocol GuestValue: Sendable, Equatable {
    /// The empty value.
    init()
}

extension GuestValue {
    /// A value built from the empty one by `body`.
    public static func with(_ body: (inout Self) -> Void) -> Self {
        var value = Self()
        body(&value)
        return value
    }
}

/// One in-guest telemetry sample (docs/protocol.md §8.2) as a Swift value: what the agent builds
/// and the broker hands on. The names follow the schema; `wire` and `init(wire:)` are the one
/// mapping to and from the message, so neither end nor the node repeats it.
public struct TelemetrySample: GuestValue {
    /// Guest wall clock, Unix milliseconds.
    public var timestampMs: Int64 = 0
    /// CPU use.
    public var cpu = CPU()
    /// Memory.
    public var memory = Memory()
    /// Load averages and task counts.
    public var load = Load()
    /// Mounted file systems (at most 64).
    public var filesystems: [Filesystem] = []
    /// Block devices (at most 64).
    public var disks: [Disk] = []
    /// Network interfaces (at most 64).
    public var interfaces: [NetworkInterface] = []
    /// Processes in the guest.
    public var processCount: UInt32 = 0
    /// Time since the guest booted.
    public var uptimeSeconds: Double = 0
    /// Online CPUs.
    public var cpuCount: UInt32 = 0

    /// An empty sample.
    public init() {}

    /// CPU use since the previous sample.
    public struct CPU: GuestValue {
        /// All CPUs, 0…100.
        public var totalPercent: Double = 0
        /// Each CPU, 0…100.
        public var perCpuPercent: [Double] = []
        /// No use.
        public init() {}
    }

    /// Memory figures in bytes.
    public struct Memory: GuestValue {
        /// MemTotal.
        public var totalBytes: UInt64 = 0
        /// MemAvailable (or an estimate).
        public var availableBytes: UInt64 = 0
        /// MemFree.
        public var freeBytes: UInt64 = 0
        /// Buffers.
        public var buffersBytes: UInt64 = 0
        /// Cached.
        public var cachedBytes: UInt64 = 0
        /// SwapTotal.
        public var swapTotalBytes: UInt64 = 0
        /// SwapFree.
        public var swapFreeBytes: UInt64 = 0
        /// All zero.
        public init() {}
    }

    /// `/proc/loadavg`.
    public struct Load: GuestValue {
        /// 1-minute load average.
        public var one: Double = 0
        /// 5-minute load average.
        public var five: Double = 0
        /// 15-minute load average.
        public var fifteen: Double = 0
        /// Runnable tasks.
        public var runnable: UInt32 = 0
        /// All tasks.
        public var total: UInt32 = 0
        /// All zero.
        public init() {}
    }

    /// One mounted file system.
    public struct Filesystem: GuestValue {
        /// Where it is mounted.
        public var mountPoint = ""
        /// Its device.
        public var device = ""
        /// Its type (ext4, xfs, …).
        public var type = ""
        /// Size.
        public var totalBytes: UInt64 = 0
        /// Used.
        public var usedBytes: UInt64 = 0
        /// Free for unprivileged users.
        public var freeBytes: UInt64 = 0
        /// Inodes.
        public var totalInodes: UInt64 = 0
        /// Free inodes.
        public var freeInodes: UInt64 = 0
        /// Empty.
        public init() {}
    }

    /// One block device's counters since boot.
    public struct Disk: GuestValue {
        /// Its name (vda, sda).
        public var name = ""
        /// Reads completed.
        public var readsCompleted: UInt64 = 0
        /// Bytes read.
        public var readBytes: UInt64 = 0
        /// Writes completed.
        public var writesCompleted: UInt64 = 0
        /// Bytes written.
        public var writtenBytes: UInt64 = 0
        /// Time spent doing I/O.
        public var ioTimeMs: UInt64 = 0
        /// Empty.
        public init() {}
    }

    /// One network interface's counters since boot and its addresses.
    public struct NetworkInterface: GuestValue {
        /// Its name.
        public var name = ""
        /// Bytes received.
        public var rxBytes: UInt64 = 0
        /// Packets received.
        public var rxPackets: UInt64 = 0
        /// Receive errors.
        public var rxErrors: UInt64 = 0
        /// Received packets dropped.
        public var rxDropped: UInt64 = 0
        /// Bytes sent.
        public var txBytes: UInt64 = 0
        /// Packets sent.
        public var txPackets: UInt64 = 0
        /// Send errors.
        public var txErrors: UInt64 = 0
        /// Packets dropped on send.
        public var txDropped: UInt64 = 0
        /// Addresses in CIDR form.
        public var addresses: [String] = []
        /// Its MAC address.
        public var macAddress = ""
        /// Whether it is up.
        public var up = false
        /// Empty.
        public init() {}
    }
}

/// What the agent reports about itself and its guest (docs/protocol.md §8.1).
public struct AgentInfo: GuestValue {
    /// The agent's version.
    public var agentVersion = ""
    /// The protocol version of the session.
    public var protocolVersion: UInt32 = 0
    /// /etc/os-release.
    public var os = OSRelease()
    /// `uname -r`.
    public var kernelRelease = ""
    /// `uname -v`.
    public var kernelVersion = ""
    /// `uname -m`.
    public var machine = ""
    /// The guest's host name.
    public var hostname = ""
    /// /proc/sys/kernel/random/boot_id.
    public var bootID = ""
    /// Time since the guest booted.
    public var uptimeSeconds: Double = 0
    /// What the agent can do.
    public var capabilities: [String] = []
    /// Random per agent start (a restart changes it).
    public var agentInstance: UInt64 = 0
    /// Empty.
    public init() {}

    /// The guest's /etc/os-release.
    public struct OSRelease: GuestValue {
        /// ID.
        public var id = ""
        /// NAME.
        public var name = ""
        /// VERSION.
        public var version = ""
        /// VERSION_ID.
        public var versionID = ""
        /// PRETTY_NAME.
        public var prettyName = ""
        /// Empty.
        public init() {}
    }
}

/// Metadata of a guest path (docs/protocol.md §8.7).
public struct GuestFileStat: GuestValue {
    /// The base name (listing) or the requested path (stat).
    public var name = ""
    /// What kind of file.
    public var type = FileType.unknown
    /// Size in bytes.
    public var size: UInt64 = 0
    /// Permission bits with setuid, setgid and sticky.
    public var mode: UInt32 = 0
    /// Owner.
    public var uid: UInt32 = 0
    /// Group.
    public var gid: UInt32 = 0
    /// Modification time, Unix nanoseconds.
    public var mtimeNs: Int64 = 0
    /// Where a symlink points.
    public var symlinkTarget = ""
    /// Empty.
    public init() {}

    /// The kinds of file.
    public enum FileType: Sendable, Equatable {
        /// Not known (or a kind newer than this host).
        case unknown
        /// A regular file.
        case regular
        /// A directory.
        case directory
        /// A symbolic link.
        case symlink
        /// A block device.
        case blockDevice
        /// A character device.
        case charDevice
        /// A FIFO.
        case fifo
        /// A unix socket.
        case socket
    }
}

/// What the guest is asked to do.
public enum PowerAction: Sendable, Equatable {
    /// Power off.
    case poweroff
    /// Reboot.
    case reboot
    /// Halt without powering off.
    case halt
}

/// The agent's acknowledgement of a power request, sent before it acts.
public struct ShutdownAccepted: GuestValue {
    /// What it will do.
    public var action = PowerAction.poweroff
    /// After how many seconds.
    public var delaySeconds: UInt32 = 0
    /// Whether it only pretends (the agent's `--dry-run-power`).
    public var dryRun = false
    /// `systemd`, `reboot-syscall` or `dry-run`.
    public var method = ""
    /// Empty.
    public init() {}
}

// MARK: from the wire

extension TelemetrySample {
    /// The sample in an agent's message.
    public init(wire m: Limiquantix_Agent_V1_TelemetrySample) {
        timestampMs = m.timestampMs
        cpu = .with {
            $0.totalPercent = m.cpu.totalPercent
            $0.perCpuPercent = m.cpu.perCpuPercent
        }
        memory = .with {
            $0.totalBytes = m.memory.totalBytes
            $0.availableBytes = m.memory.availableBytes
            $0.freeBytes = m.memory.freeBytes
            $0.buffersBytes = m.memory.buffersBytes
            $0.cachedBytes = m.memory.cachedBytes
            $0.swapTotalBytes = m.memory.swapTotalBytes
            $0.swapFreeBytes = m.memory.swapFreeBytes
        }
        load = .with {
            $0.one = m.load.one
            $0.five = m.load.five
            $0.fifteen = m.load.fifteen
            $0.runnable = m.load.runnable
            $0.total = m.load.total
        }
        filesystems = m.filesystems.map { f in
            .with {
                $0.mountPoint = f.mountPoint
                $0.device = f.device
                $0.type = f.type
                $0.totalBytes = f.totalBytes
                $0.usedBytes = f.usedBytes
                $0.freeBytes = f.freeBytes
                $0.totalInodes = f.totalInodes
                $0.freeInodes = f.freeInodes
            }
        }
        disks = m.disks.map { d in
            .with {
                $0.name = d.name
                $0.readsCompleted = d.readsCompleted
                $0.readBytes = d.readBytes
                $0.writesCompleted = d.writesCompleted
                $0.writtenBytes = d.writtenBytes
                $0.ioTimeMs = d.ioTimeMs
            }
        }
        interfaces = m.interfaces.map { i in
            .with {
                $0.name = i.name
                $0.rxBytes = i.rxBytes
                $0.rxPackets = i.rxPackets
                $0.rxErrors = i.rxErrors
                $0.rxDropped = i.rxDropped
                $0.txBytes = i.txBytes
                $0.txPackets = i.txPackets
                $0.txErrors = i.txErrors
                $0.txDropped = i.txDropped
                $0.addresses = i.addresses
                $0.macAddress = i.macAddress
                $0.up = i.up
            }
        }
        processCount = m.processCount
        uptimeSeconds = m.uptimeSeconds
        cpuCount = m.cpuCount
    }
}

extension TelemetrySample {
    /// The agent protocol's message for this sample.
    public var wire: Limiquantix_Agent_V1_TelemetrySample {
        .with { m in
            m.timestampMs = timestampMs
            m.cpu = .with {
                $0.totalPercent = cpu.totalPercent
                $0.perCpuPercent = cpu.perCpuPercent
            }
            m.memory = .with {
                $0.totalBytes = memory.totalBytes
                $0.availableBytes = memory.availableBytes
                $0.freeBytes = memory.freeBytes
                $0.buffersBytes = memory.buffersBytes
                $0.cachedBytes = memory.cachedBytes
                $0.swapTotalBytes = memory.swapTotalBytes
                $0.swapFreeBytes = memory.swapFreeBytes
            }
            m.load = .with {
                $0.one = load.one
                $0.five = load.five
                $0.fifteen = load.fifteen
                $0.runnable = load.runnable
                $0.total = load.total
            }
            m.filesystems = filesystems.map { f in
                .with {
                    $0.mountPoint = f.mountPoint
                    $0.device = f.device
                    $0.type = f.type
                    $0.totalBytes = f.totalBytes
                    $0.usedBytes = f.usedBytes
                    $0.freeBytes = f.freeBytes
                    $0.totalInodes = f.totalInodes
                    $0.freeInodes = f.freeInodes
                }
            }
            m.disks = disks.map { d in
                .with {
                    $0.name = d.name
                    $0.readsCompleted = d.readsCompleted
                    $0.readBytes = d.readBytes
                    $0.writesCompleted = d.writesCompleted
                    $0.writtenBytes = d.writtenBytes
                    $0.ioTimeMs = d.ioTimeMs
                }
            }
            m.interfaces = interfaces.map { i in
                .with {
                    $0.name = i.name
                    $0.rxBytes = i.rxBytes
                    $0.rxPackets = i.rxPackets
                    $0.rxErrors = i.rxErrors
                    $0.rxDropped = i.rxDropped
                    $0.txBytes = i.txBytes
                    $0.txPackets = i.txPackets
                    $0.txErrors = i.txErrors
                    $0.txDropped = i.txDropped
                    $0.addresses = i.addresses
                    $0.macAddress = i.macAddress
                    $0.up = i.up
                }
            }
            m.processCount = processCount
            m.uptimeSeconds = uptimeSeconds
            m.cpuCount = cpuCount
        }
    }
}

extension AgentInfo {
    /// The agent protocol's message for this information.
    public var wire: Limiquantix_Agent_V1_Info {
        .with { m in
            m.agentVersion = agentVersion
            m.protocolVersion = protocolVersion
            m.os = .with {
                $0.id = os.id
                $0.name = os.name
                $0.version = os.version
                $0.versionID = os.versionID
                $0.prettyName = os.prettyName
            }
            m.kernelRelease = kernelRelease
            m.kernelVersion = kernelVersion
            m.machine = machine
            m.hostname = hostname
            m.bootID = bootID
            m.uptimeSeconds = uptimeSeconds
            m.capabilities = capabilities
            m.agentInstance = agentInstance
        }
    }

    /// The information in an agent's message.
    public init(wire m: Limiquantix_Agent_V1_Info) {
        agentVersion = m.agentVersion
        protocolVersion = m.protocolVersion
        os = .with {
            $0.id = m.os.id
            $0.name = m.os.name
            $0.version = m.os.version
            $0.versionID = m.os.versionID
            $0.prettyName = m.os.prettyName
        }
        kernelRelease = m.kernelRelease
        kernelVersion = m.kernelVersion
        machine = m.machine
        hostname = m.hostname
        bootID = m.bootID
        uptimeSeconds = m.uptimeSeconds
        capabilities = m.capabilities
        agentInstance = m.agentInstance
    }
}

extension GuestFileStat {
    /// The metadata in an agent's message.
    public init(wire m: Limiquantix_Agent_V1_FileStat) {
        name = m.name
        type =
            switch m.type {
            case .regular: .regular
            case .directory: .directory
            case .symlink: .symlink
            case .blockDevice: .blockDevice
            case .charDevice: .charDevice
            case .fifo: .fifo
            case .socket: .socket
            case .unknown, .UNRECOGNIZED: .unknown
            }
        size = m.size
        mode = m.mode
        uid = m.uid
        gid = m.gid
        mtimeNs = m.mtimeNs
        symlinkTarget = m.symlinkTarget
    }
}

extension PowerAction {
    /// The wire form.
    public var wire: Limiquantix_Agent_V1_PowerAction {
        switch self {
        case .poweroff: .poweroff
        case .reboot: .reboot
        case .halt: .halt
        }
    }

    /// From the wire (an unknown value reads as `poweroff`, the agent's default).
    public init(wire: Limiquantix_Agent_V1_PowerAction) {
        switch wire {
        case .reboot: self = .reboot
        case .halt: self = .halt
        case .poweroff, .UNRECOGNIZED: self = .poweroff
        }
    }
}

extension ShutdownAccepted {
    /// The acknowledgement in an agent's message.
    public init(wire m: Limiquantix_Agent_V1_ShutdownAccepted) {
        action = PowerAction(wire: m.action)
        delaySeconds = m.delaySeconds
        dryRun = m.dryRun
        method = m.method
    }
}
