import LQXModel

/// Decides where a VM runs: filters (ready, schedulable, taints, node selector, the paths the VM
/// names (on nodes that check them), hard affinity and
/// anti-affinity, CPU and memory with overcommit and reserved resources), then scores (spread or
/// pack, soft affinity and anti-affinity, PreferNoSchedule taints). Pure and deterministic: the
/// same snapshot and request give the same decision, ties broken by node name. Every node gets a
/// verdict, so every decision can be explained (`lqx vm explain`).
public struct Scheduler: Sendable {
    /// The cluster's strategy for VMs that do not name one.
    public var strategy: Placement.Strategy

    /// Points a soft (anti-)affinity group moves the score, per group.
    public static let softGroupWeight = 30
    /// Points an untolerated PreferNoSchedule taint takes, per taint.
    public static let preferNoScheduleWeight = 20

    /// A scheduler with the cluster's default strategy.
    public init(strategy: Placement.Strategy = .spread) {
        self.strategy = strategy
    }

    /// The decision for `request` on `cluster`.
    public func schedule(_ request: SchedulingRequest, on cluster: ClusterSnapshot) -> Decision {
        let verdicts = cluster.nodes.map { node in
            if let rejection = Self.filter(request, node, placedGroups: cluster.placedGroups) {
                return Verdict(nodeID: node.id, node: node.name, score: nil, rejection: rejection)
            }
            return Verdict(nodeID: node.id, node: node.name, score: score(request, node), rejection: nil)
        }
        return Decision(verdicts: verdicts, request: request)
    }

    /// The first filter `node` fails for `request`, or nil when it fits.
    static func filter(_ request: SchedulingRequest, _ node: NodeCandidate, placedGroups: [String: Int])
        -> Rejection?
    {
        if node.phase == .maintenance || node.phase == .draining || !node.spec.schedulable { return .cordoned }
        guard node.phase == .ready else { return .notReady(node.phase) }
        let placement = request.placement
        for taint in node.spec.taints where taint.effect != .preferNoSchedule {
            if !placement.tolerations.contains(where: { $0.tolerates(taint) }) { return .taint(taint) }
        }
        if placement.nodeSelector.values.contains(where: { node.spec.labels[$0.key] != $0.value }) {
            let missing = placement.nodeSelector.values.filter { node.spec.labels[$0.key] != $0.value }
            return .nodeSelector(missing: missing.map { "\($0.key)=\($0.value)" }.sorted())
        }
        if let facts = node.paths {
            for path in request.paths {
                switch facts[path] {
                case true?: continue
                case false?: return .missingPath(path)
                case nil: return .pathNotChecked(path)
                }
            }
        }
        for rule in placement.antiAffinity where rule.hard && node.groups[rule.group, default: 0] > 0 {
            return .antiAffinity(group: rule.group)
        }
        for rule in placement.affinity
        where rule.hard && placedGroups[rule.group, default: 0] > 0 && node.groups[rule.group, default: 0] == 0 {
            return .affinity(group: rule.group)
        }
        let free = node.free
        if request.cpus > free.cpus { return .insufficientCPU(need: request.cpus, free: max(0, free.cpus)) }
        if request.memoryMiB > free.memoryMiB {
            return .insufficientMemory(need: request.memoryMiB, free: max(0, free.memoryMiB))
        }
        return nil
    }

    /// 0…100 from the room left after placing (spread: more room scores higher; pack: less),
    /// moved by soft groups and PreferNoSchedule taints.
    func score(_ request: SchedulingRequest, _ node: NodeCandidate) -> Int {
        func left(_ free: Int, _ need: Int, _ total: Int) -> Double {
            total > 0 ? Double(free - need) / Double(total) : 0
        }
        let free = node.free
        let room =
            (left(free.cpus, request.cpus, node.allocatable.cpus)
                + left(free.memoryMiB, request.memoryMiB, node.allocatable.memoryMiB)) / 2
        var score = Int(((request.placement.strategy ?? strategy) == .spread ? room : 1 - room) * 100)
        let placement = request.placement
        for rule in placement.antiAffinity where !rule.hard && node.groups[rule.group, default: 0] > 0 {
            score -= Self.softGroupWeight
        }
        for rule in placement.affinity where !rule.hard && node.groups[rule.group, default: 0] > 0 {
            score += Self.softGroupWeight
        }
        for taint in node.spec.taints where taint.effect == .preferNoSchedule {
            if !placement.tolerations.contains(where: { $0.tolerates(taint) }) { score -= Self.preferNoScheduleWeight }
        }
        return score
    }

    /// The NoExecute taint of `node` that a VM with `placement` does not tolerate: such a VM must
    /// leave the node (it is evicted and placed again).
    public static func evictingTaint(_ placement: Placement, on node: NodeSpec) -> NodeSpec.Taint? {
        node.taints.first { taint in
            taint.effect == .noExecute && !placement.tolerations.contains { $0.tolerates(taint) }
        }
    }
}
