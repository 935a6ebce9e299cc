import LQXModel
import Synchronization

/// Which of the paths VMs name (kernels, initrds, disk images, clone bases) each node has. A
/// node that checks paths is asked, in its heartbeat replies, about the paths VMs waiting to be
/// placed named; it answers in its next heartbeat, and the scheduler places a VM only on a node
/// that has every path the VM names. Kept in memory: after a restart the nodes are asked again.
final class NodePaths: Sendable {
    /// The most paths a node is asked about at once (the most recently wanted).
    static let maxPaths = 256
    /// The longest path asked about or accepted in an answer.
    static let maxPathBytes = 4096
    /// How long a path is still asked about after a placement last wanted it (ms).
    static let interestMilliseconds: Int64 = 10 * 60 * 1000

    private struct State {
        /// Per node id: its latest answers; no entry for a node that does not check paths.
        var facts: [String: [String: Bool]] = [:]
        /// Per path: when placements first and last wanted it (Unix ms).
        var interest: [String: (first: Int64, last: Int64)] = [:]
    }
    private let state = Mutex(State())

    /// Records what node `id` reported: nil when it does not check paths. Returns whether it
    /// told something new (a placement that waited may fit now).
    func report(node id: String, _ paths: [String: Bool]?) -> Bool {
        state.withLock { state in
            guard let paths else { return state.facts.removeValue(forKey: id) != nil }
            let bounded = paths.filter { $0.key.utf8.count <= Self.maxPathBytes && state.interest[$0.key] != nil }
            let before = state.facts[id]
            state.facts[id] = bounded
            return bounded.contains { before?[$0.key] != $0.value }
        }
    }

    /// Notes that a placement wants `paths` now.
    func want(_ paths: [String], now: Int64) {
        guard !paths.isEmpty else { return }
        state.withLock { state in
            for path in paths where path.utf8.count <= Self.maxPathBytes {
                state.interest[path] = (state.interest[path]?.first ?? now, now)
            }
            guard state.interest.count > Self.maxPaths else { return }
            let kept = state.interest.sorted { $0.value.last > $1.value.last }.prefix(Self.maxPaths)
            state.interest = Dictionary(uniqueKeysWithValues: kept.map { ($0.key, $0.value) })
        }
    }

    /// The paths to ask nodes about (wanted within `interestMilliseconds`), sorted.
    func wanted(now: Int64) -> [String] {
        state.withLock { state in
            state.interest = state.interest.filter { now - $0.value.last <= Self.interestMilliseconds }
            return state.interest.keys.sorted()
        }
    }

    /// Those of `paths` first wanted after `since` (Unix ms): nodes may not have been asked yet.
    func recent(_ paths: [String], since: Int64) -> Set<String> {
        state.withLock { state in Set(paths.filter { (state.interest[$0]?.first ?? .min) > since }) }
    }

    /// Every checking node's answers, by node id.
    func facts() -> [String: [String: Bool]] { state.withLock { $0.facts } }
}

extension VMSpec {
    /// The paths on its node this VM needs: kernel, initrd, disk images used as they are and the
    /// images clones are backed by.
    public var nodePaths: [String] {
        var paths: [String] = []
        if case .kernel(let kernel, let initrd, _) = boot {
            paths.append(kernel)
            if let initrd, !initrd.isEmpty { paths.append(initrd) }
        }
        for disk in disks {
            switch disk.source {
            case .path(let path), .clone(backing: let path): paths.append(path)
            case .new: break
            }
        }
        return paths
    }
}
