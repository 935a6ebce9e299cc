import LQXModel

/// Admission control for HA VMs ("tolerate k host failures"): for every set of `k` nodes that
/// could fail, the HA VMs they run are placed again on the others by the scheduler's own filters
/// and scores, highest priority first, each placement counted before the next (bin packing in
/// priority order, not slots). Some set leaving an HA VM without a node is a refusal naming the
/// nodes, the VMs and the shortfall.
///
/// Sets are visited cheaply: a set whose displaced VMs all fit by a counting bound that holds for
/// any order of placement (every open survivor has room for ⌊free / largest displaced VM⌋ more
/// of them) needs no packing; nodes are visited in the order of what their failure costs, so once
/// the costliest remaining sets pass that bound, every later set does too. Only sets the bound
/// cannot clear, or whose VMs have placement rules (node selector, hard affinity or
/// anti-affinity), are packed. Paths the VMs name are not checked (the nodes answer those at
/// placement time).
public struct HAAdmission: Sendable {
    /// Why an HA VM may not start.
    public struct Refusal: Sendable, Equatable, CustomStringConvertible {
        /// The failures planned for.
        public var tolerate: Int
        /// The nodes whose failure would strand HA VMs (names).
        public var failedNodes: [String]
        /// The HA VMs left without a node then (`project/name`), lowest priority last.
        public var stranded: [String]
        /// What they need in all.
        public var cpus: Int, memoryMiB: Int

        /// For people: `ha.tolerate-failures 1: if node b failed, HA VM default/web (…) would have no room (short …)`.
        public var description: String {
            let vms = stranded.count == 1 ? "HA VM \(stranded[0])" : "HA VMs \(stranded.joined(separator: ", "))"
            let when =
                switch failedNodes.count {
                case 0: "with the nodes that are down now"
                case 1: "if node \(failedNodes[0]) failed"
                default: "if nodes \(failedNodes.joined(separator: ", ")) failed together"
                }
            return
                "admission control (ha.tolerate-failures \(tolerate)): \(when), \(vms) would have no node to restart on (short of \(cpus) vCPUs and \(memoryMiB) MiB)"
        }
    }

    /// What one check did (for benchmarks and tests of the shortcuts).
    public struct Work: Sendable, Equatable {
        /// Failure sets looked at (the rest were cleared by the ordering bound).
        public var setsVisited = 0
        /// Sets packed VM by VM.
        public var setsPacked = 0

        /// Nothing done yet.
        public init() {}
    }

    /// The scheduler whose filters and scores decide where displaced VMs go.
    public var scheduler: Scheduler
    /// Packs every set, without the shortcuts (tests compare both; benchmarks time both).
    public var exhaustive: Bool

    /// Admission control with `scheduler`'s rules.
    public init(scheduler: Scheduler = Scheduler(), exhaustive: Bool = false) {
        self.scheduler = scheduler
        self.exhaustive = exhaustive
    }

    /// Whether every HA VM of `vms` (running or to run, placed) keeps a node whatever `tolerate`
    /// nodes fail; the first set found that strands one, else nil. HA VMs on nodes already not
    /// READY count as displaced in every set.
    public func check(nodes: [Node], vms: [VirtualMachine], tolerate: Int) -> Refusal? {
        var work = Work()
        return check(nodes: nodes, vms: vms, tolerate: tolerate, work: &work)
    }

    /// `check`, counting what it did in `work`.
    public func check(nodes: [Node], vms: [VirtualMachine], tolerate: Int, work: inout Work) -> Refusal? {
        guard tolerate > 0 else { return nil }
        let world = World(nodes: nodes, vms: vms)
        guard !world.protected.isEmpty else { return nil }
        let k = min(tolerate, world.up.count)
        // What a node's failure costs by the bound for the largest HA VM anywhere: the VMs it
        // displaces plus the slots it takes away. A set whose cost stays within what every HA VM
        // has room for surely packs (see `judge`); nodes whose HA VMs need packing cost infinite.
        let infinite = Int.max / 4
        let order = world.up.map { index in
            (index, world.packOnly[index] ? infinite : world.displaced[index].count + world.slotsOfLargest[index])
        }.sorted { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }
        let threshold = exhaustive || world.basePackOnly ? -infinite : world.margin - world.base.count
        var chosen: [Int] = []
        var refusal: Refusal?
        func visit(from start: Int, cost: Int) {
            guard refusal == nil else { return }
            if chosen.count == k {
                work.setsVisited += 1
                refusal = self.judge(chosen, in: world, tolerate: tolerate, work: &work)
                return
            }
            let needed = k - chosen.count
            guard start + needed <= order.count else { return }
            for position in start...(order.count - needed) {
                // The costliest completion from here: this node and the next ones in order.
                let best = (position..<(position + needed)).reduce(cost) { min(Int.max / 2, $0 + order[$1].1) }
                if best <= threshold { break }
                chosen.append(order[position].0)
                visit(from: position + 1, cost: min(Int.max / 2, cost + order[position].1))
                chosen.removeLast()
                if refusal != nil { return }
            }
        }
        visit(from: 0, cost: 0)
        return refusal
    }

    /// Whether the failure of `failed` (up nodes' indices) strands an HA VM: cleared by the
    /// counting bound when it holds, else packed.
    ///
    /// The bound: with every displaced VM at most `c` vCPUs and `m` MiB, an open node with free
    /// room `f` takes at least ⌊f / (c, m)⌋ of them (its slots), whichever they are, and each
    /// placement uses at most one slot. A displaced VM without rules then fails only after every
    /// survivor's slots are used, so `count ≤ slots of the survivors` places them all in any order.
    /// A VM with a node selector or hard anti-affinity counts only the slots of survivors it may
    /// use (matching, holding none of its groups), less the slots of the nodes its displaced
    /// group mates may take first (at most one node each).
    private func judge(_ failed: [Int], in world: World, tolerate: Int, work: inout Work) -> Refusal? {
        let displaced = world.base + failed.flatMap { world.displaced[$0] }
        guard !displaced.isEmpty else { return nil }
        if !exhaustive, !displaced.contains(where: \.packOnly) {
            let count = displaced.count
            if displaced.allSatisfy({ $0.rule == nil }) {
                // Finer: the slots for this set's largest VM, counted until there are enough.
                let cpus = displaced.map(\.request.cpus).max() ?? 1
                let memory = displaced.map(\.request.memoryMiB).max() ?? 1
                var room = 0
                for index in world.up where !failed.contains(index) {
                    room += world.slots(index, cpus: cpus, memoryMiB: memory)
                    if room >= count { return nil }
                }
            } else {
                var mates: [String: Int] = [:]
                for member in displaced { for group in member.request.groups { mates[group, default: 0] += 1 } }
                let clear = displaced.allSatisfy { member in
                    world.room(for: member, failing: failed, mates: mates) >= count
                }
                if clear { return nil }
            }
        }
        work.setsPacked += 1
        return pack(displaced, failing: failed, in: world, tolerate: tolerate)
    }

    /// Places `displaced` highest priority first on the survivors; the VMs left over, if any.
    private func pack(_ displaced: [World.Member], failing failed: [Int], in world: World, tolerate: Int) -> Refusal? {
        var snapshot = world.snapshot
        for index in failed {
            snapshot.nodes[index].phase = .notReady
            for (group, count) in snapshot.nodes[index].groups { snapshot.placedGroups[group, default: 0] -= count }
        }
        for member in world.base {
            for group in member.request.groups { snapshot.placedGroups[group, default: 0] -= 1 }
        }
        let ordered = displaced.sorted {
            if $0.priority != $1.priority { return $0.priority > $1.priority }
            if $0.request.memoryMiB != $1.request.memoryMiB { return $0.request.memoryMiB > $1.request.memoryMiB }
            return $0.name < $1.name
        }
        var stranded: [World.Member] = []
        for member in ordered {
            var best: (index: Int, score: Int)?
            for index in snapshot.nodes.indices
            where Scheduler.filter(member.request, snapshot.nodes[index], placedGroups: snapshot.placedGroups) == nil {
                let score = scheduler.score(member.request, snapshot.nodes[index])
                if let current = best, current.score >= score { continue }
                best = (index, score)
            }
            if let best { snapshot.place(member.request, at: best.index) } else { stranded.append(member) }
        }
        guard !stranded.isEmpty else { return nil }
        return Refusal(
            tolerate: tolerate, failedNodes: failed.map { world.snapshot.nodes[$0].name }.sorted(),
            stranded: stranded.map(\.name), cpus: stranded.reduce(0) { $0 + $1.request.cpus },
            memoryMiB: stranded.reduce(0) { $0 + $1.request.memoryMiB })
    }

    /// The cluster as admission control sees it: the scheduler's snapshot and, per node, the HA
    /// VMs it would displace, with the counting bound's figures for the largest HA VM.
    struct World {
        struct Member {
            var name: String
            var priority: HAPolicy.Priority
            var request: SchedulingRequest
            /// The nodes it may use, when a node selector or hard anti-affinity narrows them.
            var rule: Rule?
            /// Bound by a hard affinity rule: only packing can tell.
            var packOnly: Bool
        }

        /// The survivors a rule-bound VM may use: matching its selector, holding none of its hard
        /// anti-affinity groups. Shared by every VM with the same rules.
        final class Rule {
            let groups: [String]
            /// Per node index: whether a VM of this rule may use it.
            let eligible: [Bool]
            /// Slots (largest HA VM) of the eligible up nodes.
            let slots: Int

            init(groups: [String], eligible: [Bool], slots: Int) {
                self.groups = groups
                self.eligible = eligible
                self.slots = slots
            }
        }

        var snapshot: ClusterSnapshot
        /// Indices of nodes that are up (READY or DRAINING): the ones that can fail.
        var up: [Int] = []
        /// Per node index: its HA VMs.
        var displaced: [[Member]]
        /// Per node index: whether one of its HA VMs needs packing.
        var packOnly: [Bool]
        /// HA VMs on nodes already down: displaced in every set.
        var base: [Member] = []
        var basePackOnly = false
        /// Every HA VM counted.
        var protected: [Member] = []
        /// Per node index: free room where the node takes any VM (READY, schedulable, no
        /// NoSchedule/NoExecute taint), else nil.
        var open: [Node.Resources?]
        /// The largest HA VM's vCPUs and MiB, and per node index its slots for that size.
        var largest: (cpus: Int, memoryMiB: Int) = (1, 1)
        var slotsOfLargest: [Int] = []
        /// Those slots over every up node.
        var upSlots = 0
        /// The most slots any node has.
        var maxSlots = 0
        /// Slots every HA VM surely has, whatever set fails, before the set's own cost: a set
        /// costing no more than `margin − base` clears the bound.
        var margin = 0
        /// HA VMs per group (any rule), counted over every HA VM.
        var members: [String: Int] = [:]

        init(nodes: [Node], vms: [VirtualMachine]) {
            snapshot = ClusterSnapshot(nodes: nodes, vms: vms)
            // The snapshot paths are unknown here: every node is taken to have them.
            for index in snapshot.nodes.indices { snapshot.nodes[index].paths = nil }
            displaced = Array(repeating: [], count: snapshot.nodes.count)
            packOnly = Array(repeating: false, count: snapshot.nodes.count)
            var position: [String: Int] = [:]
            for (index, node) in snapshot.nodes.enumerated() {
                position[node.id] = index
                if node.phase == .ready || node.phase == .draining { up.append(index) }
            }
            open = snapshot.nodes.map { node in
                let blocked = node.spec.taints.contains { $0.effect != .preferNoSchedule }
                return node.phase == .ready && node.spec.schedulable && !blocked ? node.free : nil
            }
            var placed: [(VirtualMachine, Int)] = []
            for vm in vms
            where vm.spec.ha.enabled && vm.spec.runState != .stopped && vm.meta.deletionRequestedUnixMs == nil {
                if let index = position[vm.status.nodeID] { placed.append((vm, index)) }
            }
            guard !placed.isEmpty else { return }
            largest = (
                placed.map { $0.0.spec.machine.vcpus }.max() ?? 1, placed.map { $0.0.spec.machine.memoryMiB }.max() ?? 1
            )
            let counted = slots(cpus: largest.cpus, memoryMiB: largest.memoryMiB)
            slotsOfLargest = counted
            maxSlots = counted.max() ?? 0
            upSlots = up.reduce(0) { $0 + counted[$1] }
            margin = upSlots
            var rules: [String: Rule] = [:]
            for (vm, index) in placed {
                let placement = vm.spec.placement
                let groups = placement.antiAffinity.filter(\.hard).map(\.group).sorted()
                var rule: Rule?
                if !placement.nodeSelector.values.isEmpty || !groups.isEmpty {
                    let key = "\(placement.nodeSelector.values.sorted { $0.key < $1.key })|\(groups)"
                    if let shared = rules[key] {
                        rule = shared
                    } else {
                        let eligible = snapshot.nodes.map { node in
                            placement.nodeSelector.values.allSatisfy { node.spec.labels[$0.key] == $0.value }
                                && groups.allSatisfy { node.groups[$0, default: 0] == 0 }
                        }
                        let made = Rule(
                            groups: groups, eligible: eligible,
                            slots: up.reduce(0) { $0 + (eligible[$1] ? counted[$1] : 0) })
                        rules[key] = made
                        rule = made
                    }
                }
                let member = Member(
                    name: "\(vm.meta.project)/\(vm.meta.name)", priority: vm.spec.ha.priority,
                    request: SchedulingRequest(vm.spec), rule: rule,
                    packOnly: placement.affinity.contains(where: \.hard))
                protected.append(member)
                for group in member.request.groups { members[group, default: 0] += 1 }
                let phase = snapshot.nodes[index].phase
                if phase == .ready || phase == .draining {
                    displaced[index].append(member)
                    if member.packOnly { packOnly[index] = true }
                } else {
                    base.append(member)
                    if member.packOnly { basePackOnly = true }
                }
            }
            // Each rule's eligible slots, less what its group mates may take first, bound the
            // margin too (a set takes at most its cost from them).
            for rule in rules.values {
                let mates = rule.groups.reduce(0) { $0 + members[$1, default: 0] }
                margin = min(margin, rule.slots - max(0, mates - 1) * maxSlots)
            }
        }

        /// How many VMs of at most this size node `index` surely has room for.
        func slots(_ index: Int, cpus: Int, memoryMiB: Int) -> Int {
            guard let free = open[index], free.cpus > 0, free.memoryMiB > 0 else { return 0 }
            return min(free.cpus / max(1, cpus), free.memoryMiB / max(1, memoryMiB))
        }

        /// `slots` of every node.
        func slots(cpus: Int, memoryMiB: Int) -> [Int] {
            open.indices.map { slots($0, cpus: cpus, memoryMiB: memoryMiB) }
        }

        /// The slots (largest HA VM) `member` surely has when `failed` fail, its displaced group
        /// mates (`mates`: displaced VMs per group, itself included) placed before it.
        func room(for member: Member, failing failed: [Int], mates: [String: Int]) -> Int {
            guard let rule = member.rule else { return failed.reduce(upSlots) { $0 - slotsOfLargest[$1] } }
            let lost = failed.reduce(0) { $0 + (rule.eligible[$1] ? slotsOfLargest[$1] : 0) }
            let taken = max(0, rule.groups.reduce(0) { $0 + mates[$1, default: 0] } - 1) * maxSlots
            return rule.slots - lost - taken
        }
    }
}
