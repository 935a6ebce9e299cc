import ControlPlane
import ControlPlaneAPI
import LQXModel
import LQXTypes

/// Short names for the generated compute.v1 messages.
typealias CP = ComputeMessages

/// The compute.v1 message types this layer maps.
enum ComputeMessages {
    typealias VM = Limiquantix_Compute_V1_VM
    typealias Node = Limiquantix_Compute_V1_Node
    typealias Project = Limiquantix_Compute_V1_Project
    typealias Token = Limiquantix_Compute_V1_Token
    typealias Event = Limiquantix_Compute_V1_Event
    typealias Meta = Limiquantix_Compute_V1_ObjectMeta
    typealias Condition = Limiquantix_Compute_V1_Condition
    typealias Placement = Limiquantix_Compute_V1_Placement
    typealias Effect = Limiquantix_Compute_V1_TaintEffect
}

extension ObjectMeta {
    var proto: CP.Meta {
        .with {
            $0.id = id
            $0.name = name
            $0.project = project
            $0.labels = labels.values
            $0.resourceVersion = resourceVersion
            $0.createdUnixMs = createdUnixMs
            $0.deletionRequestedUnixMs = deletionRequestedUnixMs ?? 0
        }
    }
}

extension Condition {
    var proto: CP.Condition {
        .with {
            $0.type = type
            $0.status = status
            $0.reason = reason
            $0.message = message
            $0.lastTransitionUnixMs = lastTransitionUnixMs
        }
    }
}

extension NodeSpec.Taint.Effect {
    var proto: CP.Effect {
        switch self {
        case .noSchedule: .noSchedule
        case .preferNoSchedule: .preferNoSchedule
        case .noExecute: .noExecute
        }
    }

    /// The model's effect, nil for UNSPECIFIED.
    static func from(_ effect: CP.Effect) -> NodeSpec.Taint.Effect? {
        switch effect {
        case .noSchedule: .noSchedule
        case .preferNoSchedule: .preferNoSchedule
        case .noExecute: .noExecute
        default: nil
        }
    }
}

extension Placement {
    init(_ pb: CP.Placement) throws(LQXError) {
        let strategy: Strategy? =
            switch pb.strategy {
            case .spread: .spread
            case .pack: .pack
            default: nil
            }
        self.init(
            nodeSelector: try Labels(pb.nodeSelector, field: "placement.node_selector"),
            tolerations: pb.tolerations.map {
                Toleration(key: $0.key, value: $0.hasValue ? $0.value : nil, effect: .from($0.effect))
            },
            affinity: pb.affinity.map { GroupRule(group: $0.group, hard: !$0.soft) },
            antiAffinity: pb.antiAffinity.map { GroupRule(group: $0.group, hard: !$0.soft) }, strategy: strategy)
    }

    var proto: CP.Placement {
        .with {
            $0.nodeSelector = nodeSelector.values
            $0.tolerations = tolerations.map { toleration in
                .with {
                    $0.key = toleration.key
                    if let value = toleration.value { $0.value = value }
                    $0.effect = toleration.effect?.proto ?? .unspecified
                }
            }
            $0.affinity = affinity.map { rule in
                .with {
                    $0.group = rule.group; $0.soft = !rule.hard
                }
            }
            $0.antiAffinity = antiAffinity.map { rule in
                .with {
                    $0.group = rule.group; $0.soft = !rule.hard
                }
            }
            $0.strategy =
                switch strategy {
                case .spread: .spread
                case .pack: .pack
                case nil: .clusterDefault
                }
        }
    }
}

extension VirtualMachine.Spec {
    init(_ pb: Limiquantix_Compute_V1_VMSpec, name: String) throws(LQXError) {
        var machine = VMSpec(pb.machine)
        machine.name = name
        let runState: VirtualMachine.RunState =
            switch pb.runState {
            case .stopped: .stopped
            case .paused: .paused
            default: .running
            }
        self.init(
            runState: runState, machine: machine, placement: try Placement(pb.placement), ha: HAPolicy(pb.ha))
    }

    var proto: Limiquantix_Compute_V1_VMSpec {
        .with {
            $0.runState =
                switch runState {
                case .running: .running
                case .stopped: .stopped
                case .paused: .paused
                }
            $0.machine = machine.proto
            $0.placement = placement.proto
            $0.ha = ha.proto
        }
    }
}

extension HAPolicy {
    init(_ pb: Limiquantix_Compute_V1_HAPolicy) {
        let priority: Priority =
            switch pb.priority {
            case .lowest: .lowest
            case .low: .low
            case .high: .high
            case .highest: .highest
            default: .medium
            }
        self.init(
            enabled: pb.enabled, priority: priority,
            maxRestarts: pb.hasMaxRestarts ? Int(pb.maxRestarts) : Self.defaultMaxRestarts,
            restartWindowSeconds: pb.hasRestartWindowSeconds ? Int(pb.restartWindowSeconds) : Self.defaultWindowSeconds)
    }

    var proto: Limiquantix_Compute_V1_HAPolicy {
        .with {
            $0.enabled = enabled
            $0.priority =
                switch priority {
                case .lowest: .lowest
                case .low: .low
                case .medium: .medium
                case .high: .high
                case .highest: .highest
                }
            $0.maxRestarts = UInt32(clamping: maxRestarts)
            $0.restartWindowSeconds = UInt32(clamping: restartWindowSeconds)
        }
    }
}

extension ClusterSettings {
    var proto: Limiquantix_Compute_V1_ClusterSettings {
        .with {
            $0.haTolerateFailures = UInt32(clamping: haTolerateFailures)
            $0.resourceVersion = resourceVersion
            let help = Dictionary(Self.keys.map { ($0.key, $0.help) }, uniquingKeysWith: { first, _ in first })
            $0.settings = values.map { setting in
                .with {
                    $0.key = setting.key
                    $0.value = setting.value
                    $0.help = help[setting.key] ?? ""
                }
            }
        }
    }
}

extension VirtualMachine.Phase {
    /// The API's phase (the enums list the phases in the same order).
    var proto: Limiquantix_Compute_V1_VMPhase {
        Limiquantix_Compute_V1_VMPhase(rawValue: Self.allCases.firstIndex(of: self)!) ?? .unknown
    }
}

extension VirtualMachine {
    /// The VM as the API's message; `nodeName` resolves its node's id.
    func proto(nodeName: String) -> CP.VM {
        .with {
            $0.metadata = meta.proto
            $0.spec = spec.proto
            $0.status = .with {
                $0.phase = status.phase.proto
                $0.node = nodeName
                $0.nodeID = status.nodeID
                $0.epoch = status.epoch
                $0.conditions = status.conditions.map(\.proto)
                $0.agent = .with {
                    $0.connected = status.agentConnected
                    $0.version = status.agent.version
                    $0.osPrettyName = status.agent.osPrettyName
                    $0.hostname = status.agent.hostname
                }
            }
        }
    }
}

extension Node {
    /// The node as the API's message, with what its VMs take.
    func proto(allocated: Node.Resources, vmCount: Int) -> CP.Node {
        func resources(_ r: Node.Resources) -> Limiquantix_Compute_V1_Resources {
            .with {
                $0.cpus = UInt32(clamping: r.cpus)
                $0.memoryMib = UInt64(clamping: r.memoryMiB)
            }
        }
        return .with {
            $0.metadata = meta.proto
            $0.metadata.labels = spec.labels.values
            $0.spec = .with {
                $0.labels = spec.labels.values
                $0.taints = spec.taints.map { taint in
                    .with {
                        $0.key = taint.key
                        $0.value = taint.value
                        $0.effect = taint.effect.proto
                    }
                }
                $0.unschedulable = !spec.schedulable
                $0.cpuOvercommit = spec.cpuOvercommit
                $0.memoryOvercommit = spec.memoryOvercommit
                $0.reservedCpus = UInt32(clamping: spec.reservedCPUs)
                $0.reservedMemoryMib = UInt64(clamping: spec.reservedMemoryMiB)
            }
            $0.status = .with {
                $0.phase =
                    Limiquantix_Compute_V1_NodePhase(rawValue: Phase.allCases.firstIndex(of: status.phase)!) ?? .pending
                $0.address = status.address
                $0.capacity = resources(status.capacity)
                $0.allocatable = resources(allocatable)
                $0.allocated = resources(allocated)
                $0.inventory = .with {
                    $0.cpuModel = status.inventory.cpuModel
                    $0.sockets = UInt32(clamping: status.inventory.sockets)
                    $0.cores = UInt32(clamping: status.inventory.cores)
                    $0.threads = UInt32(clamping: status.inventory.threads)
                    $0.hypervisor = status.inventory.hypervisor
                    $0.vsock = status.inventory.vsock
                    $0.uefi = status.inventory.uefi
                }
                $0.version = status.version
                $0.conditions = status.conditions.map(\.proto)
                $0.vmCount = UInt32(clamping: vmCount)
                $0.migrationUri = status.migration?.uri ?? ""
                $0.sharedStorage = status.sharedStorage.map { storage in
                    .with {
                        $0.id = storage.id
                        $0.path = storage.path
                    }
                }
            }
        }
    }
}

extension Project {
    var proto: CP.Project {
        .with {
            $0.metadata = meta.proto
            $0.quota = .with {
                if let vcpus = quota.vcpus { $0.vcpus = UInt32(clamping: vcpus) }
                if let memory = quota.memoryMiB { $0.memoryMib = UInt64(clamping: memory) }
                if let vms = quota.vms { $0.vms = UInt32(clamping: vms) }
            }
        }
    }
}

extension Project.Quota {
    init(_ pb: Limiquantix_Compute_V1_Quota) {
        self.init(
            vcpus: pb.hasVcpus ? Int(pb.vcpus) : nil, memoryMiB: pb.hasMemoryMib ? Int(clamping: pb.memoryMib) : nil,
            vms: pb.hasVms ? Int(pb.vms) : nil)
    }
}

extension TokenRecord {
    var proto: CP.Token {
        .with {
            $0.id = id
            $0.user = user
            $0.role =
                switch role {
                case .viewer: .viewer
                case .operator: .operator
                case .admin: .admin
                }
            $0.project = project
            $0.createdUnixMs = createdUnixMs
            $0.expiresUnixMs = expiresUnixMs ?? 0
            $0.revoked = revoked
        }
    }
}

extension EventRecord {
    var proto: CP.Event {
        .with {
            $0.sequence = sequence
            $0.timeUnixMs = timeUnixMs
            $0.kind = kind
            $0.objectID = objectID
            $0.objectName = objectName
            $0.project = project
            $0.type = type
            $0.reason = reason
            $0.message = message
        }
    }
}
