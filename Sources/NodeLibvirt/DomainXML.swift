import LQXModel
import NodeCore

/// Everything needed to write a VM's libvirt domain: the spec plus what the node decided for it
/// (identity, files, host-dependent devices). Rendering is a pure function of the plan, so the same
/// plan always gives the same XML (golden-tested).
public struct DomainPlan: Sendable, Equatable {
    /// The spec the domain is rendered from.
    public var spec: VMSpec
    /// The domain's UUID (lowercase, with dashes).
    public var uuid: String
    /// `kvm` when KVM is usable on the host, else `qemu` (TCG).
    public var domainType: DomainType
    /// Path of the QEMU binary (the `<emulator>` element).
    public var emulator: String
    /// Disks as files, in spec order (vda, vdb, … for virtio).
    public var disks: [PlannedDisk]
    /// One MAC per NIC, in spec order.
    public var macs: [String]
    /// The host end of the agent's virtio-serial port (libvirt binds it).
    public var agentSocket: String
    /// The serial console is written here.
    public var consoleLog: String
    /// A vhost-vsock device with this guest CID (only where /dev/vhost-vsock exists).
    public var vsockCID: UInt32?
    /// Firmware files for UEFI.
    public var uefi: UEFIFiles?

    /// The libvirt domain type: `kvm` (hardware virtualization) or `qemu` (TCG emulation).
    public enum DomainType: String, Sendable, Equatable {
        case kvm, qemu
    }

    /// One disk of the domain as an image file.
    public struct PlannedDisk: Sendable, Equatable {
        /// The image file.
        public var path: String
        /// The image format, `qcow2` or `raw` (the disk driver's type).
        public var format: String
        /// The bus the disk is attached to.
        public var bus: DiskSpec.Bus
        /// Whether the guest may only read the disk (a read-only SATA disk becomes a CD-ROM).
        public var readOnly: Bool
        /// Creates a planned disk.
        public init(path: String, format: String, bus: DiskSpec.Bus, readOnly: Bool) {
            self.path = path
            self.format = format
            self.bus = bus
            self.readOnly = readOnly
        }
    }

    /// The OVMF files of a UEFI domain.
    public struct UEFIFiles: Sendable, Equatable {
        /// The firmware code (loaded read-only as pflash).
        public var code: String
        /// The variables template the VM's NVRAM is created from.
        public var varsTemplate: String
        /// The VM's own NVRAM file (its UEFI variables).
        public var nvram: String
        /// Creates the set of UEFI files.
        public init(code: String, varsTemplate: String, nvram: String) {
            self.code = code
            self.varsTemplate = varsTemplate
            self.nvram = nvram
        }
    }

    /// Creates a plan.
    public init(
        spec: VMSpec, uuid: String, domainType: DomainType, emulator: String, disks: [PlannedDisk], macs: [String],
        agentSocket: String, consoleLog: String, vsockCID: UInt32? = nil, uefi: UEFIFiles? = nil
    ) {
        self.spec = spec
        self.uuid = uuid
        self.domainType = domainType
        self.emulator = emulator
        self.disks = disks
        self.macs = macs
        self.agentSocket = agentSocket
        self.consoleLog = consoleLog
        self.vsockCID = vsockCID
        self.uefi = uefi
    }

    /// The virtio-serial port name the agent listens on.
    public static let agentPort = "org.limiquantix.agent.0"
    /// XML namespace of the node's metadata element.
    public static let metadataNamespace = "https://limiquantix.dev/xmlns/node/1"

    /// A MAC in QEMU's locally administered range 52:54:00, derived from the UUID and the NIC index
    /// (stable for the VM's life, different between NICs and, with overwhelming odds, between VMs).
    public static func generatedMAC(uuid: String, index: Int) -> String {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in uuid.utf8 + [UInt8(truncatingIfNeeded: index), UInt8(truncatingIfNeeded: index >> 8)] {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3
        }
        let bytes = [
            UInt8(truncatingIfNeeded: hash >> 16), UInt8(truncatingIfNeeded: hash >> 8),
            UInt8(truncatingIfNeeded: hash),
        ]
        return "52:54:00:" + bytes.map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined(separator: ":")
    }

    /// Devices that each take a PCIe root port: virtio disks, the SCSI controller, NICs, the
    /// virtio-serial controller, RNG, balloon, vsock, and the watchdog's PCIe-to-PCI bridge.
    var pcieDevices: Int {
        disks.filter { $0.bus == .virtio }.count + (disks.contains { $0.bus == .scsi } ? 1 : 0) + spec.nics.count + 3
            + (vsockCID != nil ? 1 : 0) + (spec.watchdog != .none ? 1 : 0)
    }

    /// The libvirt domain XML.
    public func domainXML() -> String {
        var x = XMLWriter()
        x.open("domain", ["type": domainType.rawValue])
        x.leaf("name", spec.name)
        x.leaf("uuid", uuid)
        x.open("metadata")
        x.open("lqx:vm", ["xmlns:lqx": Self.metadataNamespace])
        x.leaf("lqx:agent-socket", agentSocket)
        x.leaf("lqx:console-log", consoleLog)
        x.close("lqx:vm")
        x.close("metadata")
        x.leaf("memory", String(spec.memoryMiB), ["unit": "MiB"])
        x.leaf("currentMemory", String(spec.memoryMiB), ["unit": "MiB"])
        x.leaf("vcpu", String(spec.vcpus), ["placement": "static"])
        x.open("os")
        x.leaf("type", "hvm", ["arch": "x86_64", "machine": "q35"])
        if let uefi {
            x.leaf("loader", uefi.code, ["readonly": "yes", "type": "pflash"])
            x.leaf("nvram", uefi.nvram, ["template": uefi.varsTemplate])
        }
        switch spec.boot {
        case .disk:
            x.empty("boot", ["dev": "hd"])
        case .kernel(let path, let initrd, let cmdline):
            x.leaf("kernel", path)
            if let initrd { x.leaf("initrd", initrd) }
            x.leaf("cmdline", cmdline)
        }
        x.close("os")
        x.open("features")
        x.empty("acpi")
        x.empty("apic")
        x.close("features")
        let topology = spec.topology ?? VMSpec.CPUTopology(sockets: 1, cores: spec.vcpus, threads: 1)
        switch domainType {
        case .kvm: x.open("cpu", ["mode": "host-passthrough", "check": "none", "migratable": "on"])
        case .qemu: x.open("cpu", ["mode": "maximum", "check": "none", "migratable": "off"])
        }
        x.empty(
            "topology",
            [
                "sockets": String(topology.sockets), "dies": "1", "cores": String(topology.cores),
                "threads": String(topology.threads),
            ])
        x.close("cpu")
        x.empty("clock", ["offset": "utc"])
        x.leaf("on_poweroff", "destroy")
        x.leaf("on_reboot", "restart")
        x.leaf("on_crash", "destroy")
        x.open("pm")
        x.empty("suspend-to-mem", ["enabled": "no"])
        x.empty("suspend-to-disk", ["enabled": "no"])
        x.close("pm")
        x.open("devices")
        x.leaf("emulator", emulator)
        // Target names count per prefix: SATA and SCSI disks share sda, sdb, …
        var perPrefix: [String: Int] = [:]
        for disk in disks {
            let prefix = Self.targetPrefix(disk.bus)
            let index = perPrefix[prefix, default: 0]
            perPrefix[prefix] = index + 1
            Self.writeDisk(&x, disk, target: Self.target(prefix: prefix, index: index))
        }
        if disks.contains(where: { $0.bus == .scsi }) {
            x.empty("controller", ["type": "scsi", "index": "0", "model": "virtio-scsi"])
        }
        // q35 hot-plugs PCIe devices only into free root ports, and libvirt places the defined
        // devices into declared ports first: one port per PCIe device, plus spares for disks
        // attached later. No USB controller (nothing uses it; it would take a port).
        x.empty("controller", ["type": "usb", "model": "none"])
        x.empty("controller", ["type": "pci", "index": "0", "model": "pcie-root"])
        for _ in 0..<(pcieDevices + Self.spareRootPorts) {
            x.empty("controller", ["type": "pci", "model": "pcie-root-port"])
        }
        for (index, nic) in spec.nics.enumerated() {
            switch nic.attachment {
            case .network(let name):
                x.open("interface", ["type": "network"])
                x.empty("mac", ["address": macs[index]])
                x.empty("source", ["network": name])
            case .bridge(let name):
                x.open("interface", ["type": "bridge"])
                x.empty("mac", ["address": macs[index]])
                x.empty("source", ["bridge": name])
            }
            x.empty("model", ["type": "virtio"])
            x.close("interface")
        }
        x.open("serial", ["type": "file"])
        x.empty("source", ["path": consoleLog, "append": "on"])
        x.open("target", ["type": "isa-serial", "port": "0"])
        x.empty("model", ["name": "isa-serial"])
        x.close("target")
        x.close("serial")
        x.open("console", ["type": "file"])
        x.empty("source", ["path": consoleLog, "append": "on"])
        x.empty("target", ["type": "serial", "port": "0"])
        x.close("console")
        x.open("channel", ["type": "unix"])
        x.empty("source", ["mode": "bind", "path": agentSocket])
        x.empty("target", ["type": "virtio", "name": Self.agentPort])
        x.close("channel")
        if let cid = vsockCID {
            x.open("vsock", ["model": "virtio"])
            x.empty("cid", ["auto": "no", "address": String(cid)])
            x.close("vsock")
        }
        if spec.watchdog != .none {
            x.empty("watchdog", ["model": "i6300esb", "action": spec.watchdog.rawValue])
        }
        x.open("rng", ["model": "virtio"])
        x.leaf("backend", "/dev/urandom", ["model": "random"])
        x.close("rng")
        x.empty("memballoon", ["model": "virtio"])
        x.close("devices")
        x.close("domain")
        return x.text
    }
}

extension DomainPlan {
    /// Free PCIe root ports in every domain, for disks attached while it runs.
    static let spareRootPorts = 4

    /// `vd` for virtio, `sd` for SATA and SCSI (which share one sequence).
    static func targetPrefix(_ bus: DiskSpec.Bus) -> String { bus == .virtio ? "vd" : "sd" }

    /// vda, vdb, … vdz for index 0…25.
    static func target(prefix: String, index: Int) -> String {
        prefix + String(UnicodeScalar(UInt8(ascii: "a") + UInt8(index)))
    }

    /// One `<disk>` element.
    static func writeDisk(_ x: inout XMLWriter, _ disk: PlannedDisk, target: String) {
        // QEMU has no read-only SATA disk; a read-only SATA image (an ISO, a seed) is a CD-ROM.
        let cdrom = disk.readOnly && disk.bus == .sata
        x.open("disk", ["type": "file", "device": cdrom ? "cdrom" : "disk"])
        if cdrom {
            x.empty("driver", ["name": "qemu", "type": disk.format])
        } else {
            x.empty("driver", ["name": "qemu", "type": disk.format, "discard": "unmap"])
        }
        x.empty("source", ["file": disk.path])
        switch disk.bus {
        case .virtio: x.empty("target", ["dev": target, "bus": "virtio"])
        case .sata: x.empty("target", ["dev": target, "bus": "sata"])
        case .scsi: x.empty("target", ["dev": target, "bus": "scsi"])
        }
        if disk.readOnly { x.empty("readonly") }
        x.close("disk")
    }

    /// The `<disk>` element alone (for attaching to a defined domain).
    static func diskXML(_ disk: PlannedDisk, target: String) -> String {
        var x = XMLWriter()
        writeDisk(&x, disk, target: target)
        return x.text
    }
}

/// Writes indented XML with escaped text and attributes (attributes in the order given).
struct XMLWriter {
    private(set) var text = ""
    private var depth = 0

    mutating func open(_ name: String, _ attributes: KeyValuePairs<String, String> = [:]) {
        line("<\(name)\(Self.attributes(attributes))>")
        depth += 1
    }

    mutating func close(_ name: String) {
        depth -= 1
        line("</\(name)>")
    }

    mutating func empty(_ name: String, _ attributes: KeyValuePairs<String, String> = [:]) {
        line("<\(name)\(Self.attributes(attributes))/>")
    }

    mutating func leaf(_ name: String, _ value: String, _ attributes: KeyValuePairs<String, String> = [:]) {
        line("<\(name)\(Self.attributes(attributes))>\(Self.escape(value))</\(name)>")
    }

    private mutating func line(_ s: String) {
        text += String(repeating: "  ", count: depth) + s + "\n"
    }

    private static func attributes(_ attributes: KeyValuePairs<String, String>) -> String {
        attributes.map { " \($0.key)='\(escape($0.value))'" }.joined()
    }

    static func escape(_ value: String) -> String {
        var out = ""
        out.reserveCapacity(value.utf8.count)
        for scalar in value.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "'": out += "&apos;"
            case "\"": out += "&quot;"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
