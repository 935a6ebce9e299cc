import LQXModel

/// A node as the scheduler sees it: its rules, its room and the groups of the VMs on it.
public struct NodeCandidate: Sendable, Equatable {
    /// The node's id.
    public var id: String
    /// The node's name.
    public var name: String
    /// Its phase (only READY nodes take VMs).
    public var phase: Node.Phase
    /// Labels, taints, schedulable, overcommit, reserved.
    public var spec: NodeSpec
    /// What VMs may take in all.
    public var allocatable: Node.Resources
    /// What the VMs placed on it take.
    public var allocated: Node.Resources
    /// Affinity and anti-affinity groups of the VMs placed on it, with how many of each.
    public var groups: [String: Int]
    /// Which of the paths placements asked about the node has (true) or lacks (false); nil for a
    /// node that does not check paths (every path is taken to be there).
    public var paths: [String: Bool]?

    /// Creates a candidate.
    public init(
        id: String, name: String, phase: Node.Phase = .ready, spec: NodeSpec = NodeSpec(),
        allocatable: Node.Resources, allocated: Node.Resources = Node.Resources(), groups: [String: Int] = [:],
        paths: [String: Bool]? = nil
    ) {
        self.id = id
        self.name = name
        self.phase = phase
        self.spec = spec
        self.allocatable = allocatable
        self.allocated = allocated
        self.groups = groups
        self.paths = paths
    }

    /// Room left.
    public var free: Node.Resources {
        Node.Resources(cpus: allocatable.cpus - allocated.cpus, memoryMiB: allocatable.memoryMiB - allocated.memoryMiB)
    }

    /// Counts a VM placed here.
    public mutating func place(_ request: SchedulingRequest) {
        place(cpus: request.cpus, memoryMiB: request.memoryMiB, request.placement)
    }

    /// Counts a stored VM placed here (without making a request of it: a snapshot counts every VM).
    mutating func place(_ machine: VMSpec, _ placement: Placement) {
        place(cpus: machine.vcpus, memoryMiB: machine.memoryMiB, placement)
    }

    private mutating func place(cpus: Int, memoryMiB: Int, _ placement: Placement) {
        allocated.cpus += cpus
        allocated.memoryMiB += memoryMiB
        for rule in placement.affinity { groups[rule.group, default: 0] += 1 }
        for rule in placement.antiAffinity { groups[rule.group, default: 0] += 1 }
    }
}

/// What is to be placed: a VM's size and placement rules.
public struct SchedulingRequest: Sendable, Equatable {
    /// vCPUs.
    public var cpus: Int
    /// Memory, MiB.
    public var memoryMiB: Int
    /// Selector, tolerations, groups, strategy.
    public var placement: Placement
    /// Paths the node must have (kernel, initrd, images).
    public var paths: [String]

    /// Creates a request.
    public init(cpus: Int, memoryMiB: Int, placement: Placement = Placement(), paths: [String] = []) {
        self.cpus = cpus
        self.memoryMiB = memoryMiB
        self.placement = placement
        self.paths = paths
    }

    /// The request for a VM's spec.
    public init(_ spec: VirtualMachine.Spec) {
        self.init(
            cpus: spec.machine.vcpus, memoryMiB: spec.machine.memoryMiB, placement: spec.placement,
            paths: spec.machine.nodePaths)
    }

    /// Every group the VM is a member of (affinity and anti-affinity alike).
    public var groups: [String] { placement.affinity.map(\.group) + placement.antiAffinity.map(\.group) }
}

/// The cluster as the scheduler sees it at one moment.
public struct ClusterSnapshot: Sendable {
    /// Every node.
    public var nodes: [NodeCandidate]
    /// Groups with at least one placed member anywhere (a hard affinity to such a group must
    /// follow it; to a group with no member yet, any node will do).
    public var placedGroups: [String: Int]

    /// A snapshot of nodes (their `allocated` and `groups` already counted).
    public init(nodes: [NodeCandidate]) {
        self.nodes = nodes
        placedGroups = [:]
        for node in nodes { placedGroups.merge(node.groups, uniquingKeysWith: +) }
    }

    /// The snapshot of stored nodes and VMs: each VM placed on a node takes its size there,
    /// whether it runs or not (its definition is there and it may start at any time); `excluding`
    /// leaves one VM out (the one being placed again).
    public init(nodes: [Node], vms: [VirtualMachine], excluding: String? = nil) {
        // The store lists nodes by name already; sorting is only for callers that do not.
        let ordered =
            zip(nodes, nodes.dropFirst()).allSatisfy { $0.meta.name <= $1.meta.name }
            ? nodes : nodes.sorted { $0.meta.name < $1.meta.name }
        var candidates = ordered.map { node in
            NodeCandidate(
                id: node.meta.id, name: node.meta.name, phase: node.status.phase, spec: node.spec,
                allocatable: node.allocatable)
        }
        var positions: [String: Int] = [:]
        positions.reserveCapacity(candidates.count)
        for (index, candidate) in candidates.enumerated() { positions[candidate.id] = index }
        for vm in vms where !vm.status.nodeID.isEmpty && vm.meta.id != excluding {
            if let index = positions[vm.status.nodeID] { candidates[index].place(vm.spec.machine, vm.spec.placement) }
        }
        self.init(nodes: candidates)
    }

    /// Gives each node that checks paths its answers (`facts` by node id; see `NodeCandidate.paths`).
    public mutating func attach(paths facts: [String: [String: Bool]]) {
        guard !facts.isEmpty else { return }
        for index in nodes.indices { nodes[index].paths = facts[nodes[index].id] }
    }

    /// Counts a placement (so the next decision sees it).
    public mutating func place(_ request: SchedulingRequest, on nodeID: String) {
        guard let index = nodes.firstIndex(where: { $0.id == nodeID }) else { return }
        place(request, at: index)
    }

    /// Counts a placement on `nodes[index]`.
    public mutating func place(_ request: SchedulingRequest, at index: Int) {
        nodes[index].place(request)
        for group in request.groups { placedGroups[group, default: 0] += 1 }
    }
}
