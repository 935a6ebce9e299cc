import LQXModel

/// Why a node cannot take a VM: the first filter it failed.
public enum Rejection: Sendable, Equatable {
    /// The node is not READY.
    case notReady(Node.Phase)
    /// The node is cordoned (unschedulable) or in maintenance.
    case cordoned
    /// The node has a NoSchedule or NoExecute taint the VM does not tolerate.
    case taint(NodeSpec.Taint)
    /// The node lacks labels the VM's node selector asks for.
    case nodeSelector(missing: [String])
    /// The node does not have a path the VM names (kernel, initrd, image).
    case missingPath(String)
    /// The node has not answered yet whether it has a path the VM names (it is asked in its
    /// next heartbeat reply and answers in the heartbeat after).
    case pathNotChecked(String)
    /// A VM of a hard anti-affinity group runs there.
    case antiAffinity(group: String)
    /// No VM of a hard affinity group runs there (while some run elsewhere).
    case affinity(group: String)
    /// Not enough vCPUs left.
    case insufficientCPU(need: Int, free: Int)
    /// Not enough memory left.
    case insufficientMemory(need: Int, free: Int)

    /// A CamelCase reason for conditions and the API.
    public var reason: String {
        switch self {
        case .notReady: "NodeNotReady"
        case .cordoned: "NodeUnschedulable"
        case .taint: "TaintNotTolerated"
        case .nodeSelector: "NodeSelectorMismatch"
        case .missingPath: "PathMissing"
        case .pathNotChecked: "PathNotChecked"
        case .antiAffinity: "AntiAffinity"
        case .affinity: "Affinity"
        case .insufficientCPU: "InsufficientCPU"
        case .insufficientMemory: "InsufficientMemory"
        }
    }

    /// What happened at this node, for people.
    public var message: String {
        switch self {
        case .notReady(let phase): "node is \(phase.rawValue)"
        case .cordoned: "node is cordoned"
        case .taint(let taint): "taint \(taint.display) not tolerated"
        case .nodeSelector(let missing): "node selector: no label \(missing.joined(separator: ", "))"
        case .missingPath(let path): "no \(path) on the node"
        case .pathNotChecked(let path): "not yet known whether the node has \(path) (asked in its next heartbeat)"
        case .antiAffinity(let group): "anti-affinity: a VM of group \(group) runs there"
        case .affinity(let group): "affinity: no VM of group \(group) runs there"
        case .insufficientCPU(let need, let free): "insufficient vCPUs (need \(need), free \(free))"
        case .insufficientMemory(let need, let free): "insufficient memory (need \(need) MiB, free \(free))"
        }
    }

    /// The summary's bucket: rejections with the same key are counted together.
    var bucket: String {
        switch self {
        case .notReady(let phase): "not ready (\(phase.rawValue))"
        case .cordoned: "cordoned"
        case .taint(let taint): "taint \(taint.display)"
        case .nodeSelector: "node selector mismatch"
        case .missingPath(let path): "missing \(path)"
        case .pathNotChecked(let path): "not yet checked \(path)"
        case .antiAffinity(let group): "anti-affinity \(group)"
        case .affinity(let group): "affinity \(group)"
        case .insufficientCPU: "insufficient vCPUs"
        case .insufficientMemory: "insufficient memory"
        }
    }
}

extension NodeSpec.Taint {
    /// `key=value:Effect` (`key:Effect` without a value).
    public var display: String { (value.isEmpty ? key : "\(key)=\(value)") + ":" + effect.displayName }
}

/// The scheduler's answer for one node.
public struct Verdict: Sendable, Equatable {
    /// The node's id.
    public var nodeID: String
    /// The node's name.
    public var node: String
    /// Its score when it fits (higher is better), nil when rejected.
    public var score: Int?
    /// Why it does not fit, nil when it fits.
    public var rejection: Rejection?
}

/// A decision with its reasons: the chosen node (if any), a verdict for every node, and a one-line
/// summary such as `0/12 nodes fit: 7 insufficient memory (need 4096 MiB, largest free 2048), …`.
public struct Decision: Sendable, Equatable {
    /// The chosen node's id, nil when none fits.
    public var nodeID: String?
    /// One line for people.
    public var summary: String
    /// Whether the decision waits for nodes to answer about paths before it places the VM
    /// (see `waiting(for:)`): the VM stays PENDING without a warning.
    public private(set) var waiting = false
    /// Every node's verdict in the snapshot's order (sorted only when asked for: placing a VM
    /// needs the best one, not the order of the other 9,999).
    private var unsorted: [Verdict]

    /// Every node: fitting ones by score (best first), then rejected ones by name.
    public var verdicts: [Verdict] {
        let fitting = unsorted.filter { $0.score != nil }.sorted { Self.better($0, than: $1) }
        return fitting + unsorted.filter { $0.score == nil }.sorted { $0.node < $1.node }
    }

    /// The chosen node's verdict.
    public var chosen: Verdict? { nodeID.flatMap { id in unsorted.first { $0.nodeID == id } } }

    /// A higher score wins; between equal scores, the name that sorts first.
    private static func better(_ a: Verdict, than b: Verdict) -> Bool {
        (a.score!, b.node) > (b.score!, a.node)
    }

    init(verdicts: [Verdict], request: SchedulingRequest) {
        unsorted = verdicts
        var best: Verdict?
        var fits = 0
        var counts: [String: (count: Int, largestFree: Int)] = [:]
        for verdict in verdicts {
            if verdict.score != nil {
                fits += 1
                if best == nil || Self.better(verdict, than: best!) { best = verdict }
                continue
            }
            guard let rejection = verdict.rejection else { continue }
            var free = 0
            switch rejection {
            case .insufficientCPU(_, let f), .insufficientMemory(_, let f): free = f
            default: break
            }
            let entry = counts[rejection.bucket, default: (0, Int.min)]
            counts[rejection.bucket] = (entry.count + 1, max(entry.largestFree, free))
        }
        nodeID = best?.nodeID
        let parts = counts.sorted { ($0.value.count, $1.key) > ($1.value.count, $0.key) }.map { bucket, entry in
            switch bucket {
            case "insufficient memory":
                "\(entry.count) \(bucket) (need \(request.memoryMiB) MiB, largest free \(entry.largestFree))"
            case "insufficient vCPUs":
                "\(entry.count) \(bucket) (need \(request.cpus), largest free \(entry.largestFree))"
            default: "\(entry.count) \(bucket)"
            }
        }
        var summary = "\(fits)/\(verdicts.count) nodes fit"
        if let best { summary += "; chose \(best.node) (score \(best.score!))" }
        if !parts.isEmpty { summary += ": " + parts.joined(separator: ", ") }
        self.summary = summary
    }

    /// The paths fitting nodes have not answered about yet, by node name (sorted).
    public var unchecked: [(node: String, path: String)] {
        unsorted.compactMap { verdict in
            guard case .pathNotChecked(let path) = verdict.rejection else { return nil }
            return (verdict.node, path)
        }.sorted { ($0.node, $0.path) < ($1.node, $1.path) }
    }

    /// This decision held back: no node is chosen while `nodes` have not said whether they have
    /// `paths` (otherwise the first node to answer would take every VM that waits).
    public func waiting(for nodes: [String], paths: [String]) -> Decision {
        var decision = self
        decision.nodeID = nil
        decision.waiting = true
        let (count, have, their) =
            nodes.count == 1 ? ("1 node", "it has", "its") : ("\(nodes.count) nodes", "they have", "their")
        decision.summary =
            "waiting for \(count) (\(nodes.joined(separator: ", "))) to say whether \(have) "
            + paths.joined(separator: ", ") + " (asked in \(their) next heartbeat)"
        return decision
    }
}
