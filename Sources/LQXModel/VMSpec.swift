/// What a user wants a VM to be (the spec part of the VM model; see MODEL.md). The node daemon
/// turns it into a libvirt domain. Applying the same spec twice changes nothing.
public struct VMSpec: Sendable, Equatable, Codable {
    /// Unique per node: 1–64 characters of letters, digits, `-`, `_` and `.`, starting with a
    /// letter or digit (it names files and the libvirt domain).
    public var name: String
    /// Virtual CPUs, 1 to `maximumVCPUs`.
    public var vcpus: Int
    /// sockets × cores × threads must equal `vcpus`; nil: one socket with `vcpus` cores.
    public var topology: CPUTopology?
    /// Memory in MiB, at least `minimumMemoryMiB`.
    public var memoryMiB: Int
    /// The firmware the VM boots with.
    public var firmware: Firmware
    /// How the VM boots.
    public var boot: Boot
    /// The VM's disks, at most 26 (vda…vdz).
    public var disks: [DiskSpec]
    /// The VM's network interfaces, at most 16, each with a distinct MAC.
    public var nics: [NICSpec]
    /// What the VM's watchdog does when the guest stops feeding it.
    public var watchdog: WatchdogAction

    /// How the vCPUs are arranged: sockets × cores × threads.
    public struct CPUTopology: Sendable, Equatable, Codable {
        /// CPU sockets.
        public var sockets: Int
        /// Cores per socket.
        public var cores: Int
        /// Threads per core.
        public var threads: Int
        /// Creates a topology.
        public init(sockets: Int, cores: Int, threads: Int) {
            self.sockets = sockets
            self.cores = cores
            self.threads = threads
        }
    }

    /// The VM's firmware: `bios` (QEMU's default) or `uefi` (OVMF, which the host must have).
    public enum Firmware: String, Sendable, Equatable, Codable {
        case bios, uefi
    }

    /// How the VM boots: its first disk, or a kernel and initramfs given directly (no boot loader).
    public enum Boot: Sendable, Equatable, Codable {
        case disk
        case kernel(path: String, initrd: String?, cmdline: String)
    }

    /// What the watchdog does when the guest stops feeding it: `reset` or `poweroff` the VM, or
    /// `none` (the VM gets no watchdog device).
    public enum WatchdogAction: String, Sendable, Equatable, Codable {
        case reset, poweroff, none
    }

    /// Creates a spec; it is not checked until `validate()`.
    public init(
        name: String, vcpus: Int = 1, topology: CPUTopology? = nil, memoryMiB: Int = 512,
        firmware: Firmware = .bios, boot: Boot = .disk, disks: [DiskSpec] = [], nics: [NICSpec] = [],
        watchdog: WatchdogAction = .reset
    ) {
        self.name = name
        self.vcpus = vcpus
        self.topology = topology
        self.memoryMiB = memoryMiB
        self.firmware = firmware
        self.boot = boot
        self.disks = disks
        self.nics = nics
        self.watchdog = watchdog
    }

    /// The smallest memory a VM may have (MODEL.md).
    public static let minimumMemoryMiB = 128
    /// The largest vCPU count accepted (QEMU's q35 limit with x2APIC is higher; this bounds typos).
    public static let maximumVCPUs = 288

    /// Checks everything that needs no host: a clear error naming the field.
    public func validate() throws(LQXError) {
        try Self.validate(name: name)
        guard vcpus > 0 else { throw LQXError(.invalidSpec, "vcpus must be greater than 0 (got \(vcpus))") }
        guard vcpus <= Self.maximumVCPUs else {
            throw LQXError(.invalidSpec, "vcpus must be at most \(Self.maximumVCPUs) (got \(vcpus))")
        }
        if let t = topology {
            guard t.sockets > 0, t.cores > 0, t.threads > 0 else {
                throw LQXError(.invalidSpec, "topology: sockets, cores and threads must each be greater than 0")
            }
            guard t.sockets * t.cores * t.threads == vcpus else {
                throw LQXError(
                    .invalidSpec,
                    "topology: sockets × cores × threads = \(t.sockets * t.cores * t.threads), but vcpus is \(vcpus)")
            }
        }
        guard memoryMiB >= Self.minimumMemoryMiB else {
            throw LQXError(
                .invalidSpec, "memory must be at least \(Self.minimumMemoryMiB) MiB (got \(memoryMiB) MiB)")
        }
        guard memoryMiB <= 16 << 20 else { throw LQXError(.invalidSpec, "memory: \(memoryMiB) MiB is too large") }
        switch boot {
        case .disk:
            guard !disks.isEmpty else { throw LQXError(.invalidSpec, "boot from disk needs at least one disk") }
        case .kernel(let path, let initrd, let cmdline):
            try Self.validate(path: path, field: "kernel")
            if let initrd { try Self.validate(path: initrd, field: "initrd") }
            guard !cmdline.contains("\0"), cmdline.utf8.count <= 4096 else {
                throw LQXError(.invalidSpec, "cmdline must be at most 4096 bytes without NUL")
            }
        }
        guard disks.count <= 26 else { throw LQXError(.invalidSpec, "at most 26 disks (vda…vdz)") }
        for (index, disk) in disks.enumerated() { try disk.validate(field: "disks[\(index)]") }
        guard nics.count <= 16 else { throw LQXError(.invalidSpec, "at most 16 network interfaces") }
        var macs = Set<String>()
        for (index, nic) in nics.enumerated() {
            try nic.validate(field: "nics[\(index)]")
            if let mac = nic.mac?.lowercased() {
                guard macs.insert(mac).inserted else {
                    throw LQXError(.invalidSpec, "nics[\(index)].mac \(mac) is used twice")
                }
            }
        }
    }

    /// Checks a name against the rules of `name` (also used for snapshot names).
    public static func validate(name: String) throws(LQXError) {
        let bytes = Array(name.utf8)
        guard (1...64).contains(bytes.count) else {
            throw LQXError(.invalidSpec, "name must be 1 to 64 characters (got \(bytes.count))")
        }
        func allowed(_ b: UInt8) -> Bool {
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x5F
                || b == 0x2E
        }
        guard bytes.allSatisfy(allowed), bytes[0] != 0x2D, bytes[0] != 0x5F, bytes[0] != 0x2E else {
            throw LQXError(
                .invalidSpec,
                "name \(name.debugDescription) may only use letters, digits, '-', '_' and '.', and must start with a letter or digit"
            )
        }
    }

    /// Checks that `path` is absolute, has no NUL and is under 4096 bytes; errors name `field`.
    public static func validate(path: String, field: String) throws(LQXError) {
        guard path.hasPrefix("/"), !path.contains("\0"), path.utf8.count < 4096 else {
            throw LQXError(.invalidSpec, "\(field) must be an absolute path (got \(path.debugDescription))")
        }
    }
}

/// One disk of a VM.
public struct DiskSpec: Sendable, Equatable, Codable {
    /// Where a disk's image comes from.
    public enum Source: Sendable, Equatable, Codable {
        /// A new, empty qcow2 image of this size in the node's storage directory.
        case new(sizeGiB: Int)
        /// A new qcow2 image in the node's storage directory backed by this image (a linked clone).
        case clone(backing: String)
        /// An existing image used as it is.
        case path(String)
    }

    /// The bus a disk is attached to: `virtio` (vda, vdb, …), `sata` or `scsi` (sharing sda, sdb, …).
    public enum Bus: String, Sendable, Equatable, Codable {
        case virtio, sata, scsi
    }

    /// Where the disk's image comes from.
    public var source: Source
    /// The bus the disk is attached to.
    public var bus: Bus
    /// Whether the guest may only read the disk (a read-only SATA disk becomes a CD-ROM).
    public var readOnly: Bool

    /// Creates a disk spec (on virtio and writable unless told otherwise).
    public init(source: Source, bus: Bus = .virtio, readOnly: Bool = false) {
        self.source = source
        self.bus = bus
        self.readOnly = readOnly
    }

    /// Checks the disk's source (a size of 1 GiB to 64 TiB, absolute paths); errors name `field`.
    public func validate(field: String) throws(LQXError) {
        switch source {
        case .new(let size):
            guard size > 0 else { throw LQXError(.invalidSpec, "\(field).size must be greater than 0 GiB") }
            guard size <= 64 << 10 else { throw LQXError(.invalidSpec, "\(field).size \(size) GiB is too large") }
        case .clone(let backing): try VMSpec.validate(path: backing, field: "\(field).backing")
        case .path(let path): try VMSpec.validate(path: path, field: "\(field).path")
        }
    }
}

/// One network interface of a VM.
public struct NICSpec: Sendable, Equatable, Codable {
    /// What a network interface is connected to.
    public enum Attachment: Sendable, Equatable, Codable {
        /// A libvirt network (`virsh net-list`).
        case network(String)
        /// A host bridge.
        case bridge(String)
    }

    /// What the interface is connected to.
    public var attachment: Attachment
    /// `52:54:00:xx:xx:xx` style; generated when nil.
    public var mac: String?

    /// Creates a NIC spec; with a nil `mac` one is generated when the VM is created.
    public init(_ attachment: Attachment, mac: String? = nil) {
        self.attachment = attachment
        self.mac = mac
    }

    /// Checks the network or bridge name (1 to 64 bytes, no NUL) and the MAC (six hex pairs, not
    /// multicast); the error names `field`.
    public func validate(field: String) throws(LQXError) {
        let name: String
        switch attachment {
        case .network(let n): name = n
        case .bridge(let b): name = b
        }
        guard !name.isEmpty, name.utf8.count <= 64, !name.contains("\0") else {
            throw LQXError(.invalidSpec, "\(field): the network or bridge name must be 1 to 64 characters")
        }
        if let mac {
            let parts = mac.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 6, parts.allSatisfy({ $0.count == 2 && UInt8($0, radix: 16) != nil }) else {
                throw LQXError(.invalidSpec, "\(field).mac \(mac.debugDescription) is not a MAC address")
            }
            guard let first = UInt8(parts[0], radix: 16), first & 1 == 0 else {
                throw LQXError(.invalidSpec, "\(field).mac \(mac) is a multicast address")
            }
        }
    }
}
