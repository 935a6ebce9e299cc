import AgentProtocol
import HostBroker
import LQXModel
import NodeAPI
import NodeCore

typealias PB = NodeAPIMessages

/// Short names for the generated node API messages.
enum NodeAPIMessages {
    typealias VM = Limiquantix_Node_V1_VM
    typealias VMSpec = Limiquantix_Node_V1_VMSpec
    typealias DiskSpec = Limiquantix_Node_V1_DiskSpec
    typealias NICSpec = Limiquantix_Node_V1_NICSpec
    typealias VMState = Limiquantix_Node_V1_VMState
    typealias Snapshot = Limiquantix_Node_V1_Snapshot
}

extension VMSpec {
    /// The spec a client sent, with the API's defaults (1 vCPU, 512 MiB) applied. Validation is
    /// `validate()`'s job; this only maps fields.
    init(_ pb: PB.VMSpec) {
        self.init(
            name: pb.name, vcpus: pb.hasVcpus ? Int(pb.vcpus) : 1,
            topology: pb.hasTopology
                ? CPUTopology(
                    sockets: Int(pb.topology.sockets), cores: Int(pb.topology.cores),
                    threads: Int(pb.topology.threads)) : nil,
            memoryMiB: pb.hasMemoryMib ? Int(clamping: pb.memoryMib) : 512,
            firmware: pb.firmware == .uefi ? .uefi : .bios,
            boot: pb.hasKernel
                ? .kernel(
                    path: pb.kernel.kernel, initrd: pb.kernel.initrd.isEmpty ? nil : pb.kernel.initrd,
                    cmdline: pb.kernel.cmdline) : .disk,
            disks: pb.disks.map(DiskSpec.init), nics: pb.nics.map(NICSpec.init),
            watchdog: {
                switch pb.watchdog {
                case .poweroff: .poweroff
                case .none: .none
                default: .reset
                }
            }())
    }

    var proto: PB.VMSpec {
        .with {
            $0.name = name
            $0.vcpus = UInt32(clamping: vcpus)
            if let topology {
                $0.topology = .with {
                    $0.sockets = UInt32(clamping: topology.sockets)
                    $0.cores = UInt32(clamping: topology.cores)
                    $0.threads = UInt32(clamping: topology.threads)
                }
            }
            $0.memoryMib = UInt64(clamping: memoryMiB)
            $0.firmware = firmware == .uefi ? .uefi : .bios
            if case .kernel(let path, let initrd, let cmdline) = boot {
                $0.kernel = .with {
                    $0.kernel = path
                    $0.initrd = initrd ?? ""
                    $0.cmdline = cmdline
                }
            }
            $0.disks = disks.map(\.proto)
            $0.nics = nics.map(\.proto)
            $0.watchdog =
                switch watchdog {
                case .reset: .reset
                case .poweroff: .poweroff
                case .none: .none
                }
        }
    }
}

extension DiskSpec {
    init(_ pb: PB.DiskSpec) {
        let source: Source =
            switch pb.source {
            case .newSizeGib(let size): .new(sizeGiB: Int(clamping: size))
            case .cloneOf(let backing): .clone(backing: backing)
            case .path(let path): .path(path)
            case nil: .new(sizeGiB: 0)  // rejected by validation: "size must be greater than 0"
            }
        let bus: Bus =
            switch pb.bus {
            case .sata: .sata
            case .scsi: .scsi
            default: .virtio
            }
        self.init(source: source, bus: bus, readOnly: pb.readOnly)
    }

    var proto: PB.DiskSpec {
        .with {
            switch source {
            case .new(let size): $0.newSizeGib = UInt64(clamping: size)
            case .clone(let backing): $0.cloneOf = backing
            case .path(let path): $0.path = path
            }
            $0.bus =
                switch bus {
                case .virtio: .virtio
                case .sata: .sata
                case .scsi: .scsi
                }
            $0.readOnly = readOnly
        }
    }
}

extension NICSpec {
    init(_ pb: PB.NICSpec) {
        let attachment: Attachment =
            switch pb.attachment {
            case .bridge(let name): .bridge(name)
            case .network(let name): .network(name)
            case nil: .network("")  // rejected by validation
            }
        self.init(attachment, mac: pb.mac.isEmpty ? nil : pb.mac)
    }

    var proto: PB.NICSpec {
        .with {
            switch attachment {
            case .network(let name): $0.network = name
            case .bridge(let name): $0.bridge = name
            }
            if let mac { $0.mac = mac }
        }
    }
}

extension DomainState {
    var proto: PB.VMState {
        switch self {
        case .running: .running
        case .paused: .paused
        case .shuttingDown: .shuttingDown
        case .shutOff: .shutOff
        case .crashed: .crashed
        case .suspended: .suspended
        case .blocked: .blocked
        case .unknown: .unknown
        }
    }
}

extension SnapshotInfo {
    var proto: PB.Snapshot {
        .with {
            $0.name = name
            $0.description_p = description
            $0.createdUnix = createdUnix
            $0.state = DomainState(libvirtName: state).proto
            $0.current = current
            $0.parent = parent ?? ""
        }
    }
}

extension DomainState {
    /// From the state names libvirt writes in snapshot XML (`running`, `shutoff`, …).
    init(libvirtName: String) {
        switch libvirtName {
        case "running": self = .running
        case "paused": self = .paused
        case "shutdown": self = .shuttingDown
        case "shutoff": self = .shutOff
        case "crashed": self = .crashed
        case "pmsuspended": self = .suspended
        case "blocked": self = .blocked
        default: self = .unknown
        }
    }
}

/// Builds the NodeInfo message.
enum NodeInfoProto {
    static func make(
        name: String, inventory: HostInventory, hypervisor: HypervisorInfo,
        counts: (vms: Int, running: Int, agentsConnected: Int)
    ) -> Limiquantix_Node_V1_NodeInfo {
        .with {
            $0.hostname = name
            $0.version = LimiquantixVersion.current
            $0.cpu = .with {
                $0.model = inventory.cpu.model
                $0.logical = UInt32(clamping: inventory.cpu.logical)
                $0.sockets = UInt32(clamping: inventory.cpu.sockets)
                $0.coresPerSocket = UInt32(clamping: inventory.cpu.coresPerSocket)
                $0.threadsPerCore = UInt32(clamping: inventory.cpu.threadsPerCore)
                $0.flags = inventory.cpu.flags
            }
            $0.numa = inventory.numa.map { node in
                .with {
                    $0.id = UInt32(clamping: node.id)
                    $0.cpus = node.cpus.map { UInt32(clamping: $0) }
                    $0.memoryBytes = node.memoryBytes
                }
            }
            $0.memoryBytes = inventory.memory.totalBytes
            $0.hugePagesTotal = UInt32(clamping: inventory.memory.hugePagesTotal)
            $0.hugePageSizeBytes = inventory.memory.hugePageSizeBytes
            $0.disks = inventory.disks.map { disk in
                .with {
                    $0.name = disk.name
                    $0.kind = disk.kind.rawValue
                    $0.sizeBytes = disk.sizeBytes
                    $0.model = disk.model
                }
            }
            $0.nics = inventory.nics.map { nic in
                .with {
                    $0.name = nic.name
                    $0.driver = nic.driver
                    $0.speedMbps = Int32(clamping: nic.speedMbps ?? -1)
                    $0.mac = nic.mac
                    $0.sriovTotalVfs = UInt32(clamping: nic.sriovTotalVFs)
                }
            }
            $0.gpus = inventory.gpus.map { gpu in
                .with {
                    $0.address = gpu.address
                    $0.vendorID = gpu.vendorID
                    $0.deviceID = gpu.deviceID
                }
            }
            $0.hypervisor = .with {
                $0.libvirtUri = hypervisor.uri
                $0.libvirtVersion = hypervisor.libvirtVersion
                $0.hypervisorVersion = hypervisor.hypervisorVersion
                $0.domainType = hypervisor.domainType
                $0.uefi = hypervisor.uefi
                $0.vhostVsock = hypervisor.vhostVsock
                $0.machineTypes = hypervisor.machineTypes
                $0.capabilitiesXml = hypervisor.capabilitiesXML
            }
            $0.vms = UInt32(clamping: counts.vms)
            $0.vmsRunning = UInt32(clamping: counts.running)
            $0.agentsConnected = UInt32(clamping: counts.agentsConnected)
        }
    }
}
