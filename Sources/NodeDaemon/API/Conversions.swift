import AgentProtocol
import HostBroker
import LQXModel
import NodeAPI
import NodeCore

typealias PB = NodeAPIMessages

/// Short names for the generated node API messages.
enum NodeAPIMessages {
    typealias VM = Limiquantix_Node_V1_VM
    typealias VMState = Limiquantix_Node_V1_VMState
    typealias Snapshot = Limiquantix_Node_V1_Snapshot
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
