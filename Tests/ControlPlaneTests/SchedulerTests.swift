import LQXModel
import LQXTestSupport
import Testing

@testable import ControlPlane

private func node(
    _ name: String, cpus: Int = 8, memory: Int = 8192, used: (Int, Int) = (0, 0), phase: Node.Phase = .ready,
    spec: NodeSpec = NodeSpec(), groups: [String: Int] = [:]
) -> NodeCandidate {
    NodeCandidate(
        id: "id-\(name)", name: name, phase: phase, spec: spec,
        allocatable: Node.Resources(cpus: cpus, memoryMiB: memory),
        allocated: Node.Resources(cpus: used.0, memoryMiB: used.1), groups: groups)
}

private func decide(_ request: SchedulingRequest, _ nodes: [NodeCandidate], strategy: Placement.Strategy = .spread)
    -> Decision
{
    Scheduler(strategy: strategy).schedule(request, on: ClusterSnapshot(nodes: nodes))
}

@Suite("scheduler: each filter and score")
struct SchedulerFilterTests {
    let small = SchedulingRequest(cpus: 1, memoryMiB: 512)

    @Test("capacity: vCPUs and memory after overcommit and reserved resources")
    func capacity() {
        let request = SchedulingRequest(cpus: 2, memoryMiB: 4096)
        let d = decide(request, [node("a", memory: 4095), node("b", cpus: 1), node("c", used: (0, 100)), node("d")])
        #expect(d.nodeID == "id-d")
        #expect(d.verdicts.first { $0.node == "a" }?.rejection == .insufficientMemory(need: 4096, free: 4095))
        #expect(d.verdicts.first { $0.node == "b" }?.rejection == .insufficientCPU(need: 2, free: 1))
        #expect(d.verdicts.first { $0.node == "c" }?.score != nil)
        // allocatable = (capacity − reserved) × overcommit.
        let stored = Node(
            meta: ObjectMeta(id: "n", name: "n"),
            spec: NodeSpec(cpuOvercommit: 4, memoryOvercommit: 1.5, reservedCPUs: 2, reservedMemoryMiB: 1024),
            status: Node.Status(capacity: Node.Resources(cpus: 4, memoryMiB: 5120)))
        #expect(stored.allocatable == Node.Resources(cpus: 8, memoryMiB: 6144))
    }

    @Test("only READY, schedulable nodes take VMs")
    func phases() {
        let d = decide(
            small,
            [
                node("a", phase: .notReady), node("b", phase: .pending), node("c", phase: .maintenance),
                node("d", spec: NodeSpec(schedulable: false)), node("e", phase: .draining),
            ])
        #expect(d.nodeID == nil)
        #expect(
            d.verdicts.map(\.rejection) == [.notReady(.notReady), .notReady(.pending), .cordoned, .cordoned, .cordoned])
        #expect(d.summary == "0/5 nodes fit: 3 cordoned, 1 not ready (NOT_READY), 1 not ready (PENDING)")
    }

    @Test("taints: NoSchedule and NoExecute need a toleration; PreferNoSchedule only lowers the score")
    func taints() throws {
        let gpu = NodeSpec.Taint(key: "gpu", value: "true", effect: .noSchedule)
        let soft = NodeSpec.Taint(key: "spot", effect: .preferNoSchedule)
        let evict = NodeSpec.Taint(key: "broken", effect: .noExecute)
        let nodes = [
            node("a", spec: NodeSpec(taints: [gpu])), node("b", spec: NodeSpec(taints: [soft])),
            node("c", spec: NodeSpec(taints: [evict])), node("d"),
        ]
        let plain = decide(small, nodes)
        #expect(plain.verdicts.first { $0.node == "a" }?.rejection == .taint(gpu))
        #expect(plain.verdicts.first { $0.node == "c" }?.rejection == .taint(evict))
        let b = try #require(plain.verdicts.first { $0.node == "b" }?.score)
        let d = try #require(plain.verdicts.first { $0.node == "d" }?.score)
        #expect(b == d - Scheduler.preferNoScheduleWeight)
        var tolerant = small
        tolerant.placement.tolerations = [try Placement.Toleration(parsing: "gpu=true:NoSchedule")]
        #expect(decide(tolerant, nodes).verdicts.first { $0.node == "a" }?.rejection == nil)
        tolerant.placement.tolerations = [try Placement.Toleration(parsing: "gpu=false:NoSchedule")]
        #expect(decide(tolerant, nodes).verdicts.first { $0.node == "a" }?.rejection == .taint(gpu))
        tolerant.placement.tolerations = [try Placement.Toleration(parsing: "gpu")]  // any value, any effect
        #expect(decide(tolerant, nodes).verdicts.first { $0.node == "a" }?.rejection == nil)
        #expect(Scheduler.evictingTaint(Placement(), on: NodeSpec(taints: [evict, gpu])) == evict)
        #expect(
            Scheduler.evictingTaint(Placement(tolerations: [.init(key: "broken")]), on: NodeSpec(taints: [evict]))
                == nil)
        #expect(throws: LQXError.self) { try Placement.Toleration(parsing: "gpu:Sometimes") }
    }

    @Test("node selector: every selected label must match")
    func selector() {
        var request = small
        request.placement.nodeSelector = ["zone": "b", "disk": "ssd"]
        let d = decide(
            request,
            [
                node("a", spec: NodeSpec(labels: ["zone": "a", "disk": "ssd"])),
                node("b", spec: NodeSpec(labels: ["zone": "b", "disk": "ssd", "x": "y"])),
                node("c", spec: NodeSpec(labels: ["zone": "b"])),
            ])
        #expect(d.nodeID == "id-b")
        #expect(d.verdicts.first { $0.node == "a" }?.rejection == .nodeSelector(missing: ["zone=b"]))
        #expect(d.verdicts.first { $0.node == "c" }?.rejection == .nodeSelector(missing: ["disk=ssd"]))
    }

    @Test("paths: a node that checks paths must have each one the VM names; one that does not check takes any")
    func paths() {
        var request = small
        request.paths = ["/k", "/img"]
        var lacking = node("a")
        lacking.paths = ["/k": true, "/img": false]
        var unknown = node("b")
        unknown.paths = ["/k": true]
        var having = node("c", used: (7, 7000))
        having.paths = ["/k": true, "/img": true]
        let d = decide(request, [lacking, unknown, having])
        #expect(d.nodeID == "id-c")
        #expect(d.verdicts.map(\.rejection) == [nil, .missingPath("/img"), .pathNotChecked("/img")])
        #expect(decide(request, [lacking, node("plain")]).nodeID == "id-plain")
        #expect(
            decide(request, [lacking]).summary == "0/1 nodes fit: 1 missing /img")
        let spec = VMSpec(
            name: "v", boot: .kernel(path: "/boot/k", initrd: "/boot/i", cmdline: ""),
            disks: [
                DiskSpec(source: .path("/d")), DiskSpec(source: .new(sizeGiB: 1)),
                DiskSpec(source: .clone(backing: "/base")),
            ])
        #expect(spec.nodePaths == ["/boot/k", "/boot/i", "/d", "/base"])
    }

    @Test("agent facts from the guest are cut to 256 bytes at a character boundary")
    func agentFacts() {
        let facts = VirtualMachine.AgentFacts(
            version: String(repeating: "v", count: 300), osPrettyName: String(repeating: "é", count: 200),
            hostname: "web")
        #expect(facts.version.utf8.count == 256)
        #expect(facts.osPrettyName == String(repeating: "é", count: 128))
        #expect(facts.hostname == "web")
        #expect(VirtualMachine.AgentFacts(version: "0.3.0", hostname: "web").summary == " (agent 0.3.0, host web)")
        #expect(VirtualMachine.AgentFacts().summary.isEmpty)
    }

    @Test("hard anti-affinity keeps group members apart; soft only prefers to")
    func antiAffinity() throws {
        var request = small
        request.placement.antiAffinity = [.init(group: "db")]
        let nodes = [node("a", groups: ["db": 1]), node("b", used: (6, 6000))]
        #expect(decide(request, nodes).nodeID == "id-b")
        #expect(decide(request, nodes).verdicts.last?.rejection == .antiAffinity(group: "db"))
        request.placement.antiAffinity = [.init(group: "db", hard: false)]
        let soft = decide(request, [node("a", groups: ["db": 1]), node("b")])
        #expect(soft.nodeID == "id-b")
        let scores = soft.verdicts.map(\.score)
        #expect(scores == [scores[0], scores[0]! - Scheduler.softGroupWeight])
    }

    @Test("hard affinity follows the group once it has a member; the first member goes anywhere")
    func affinity() {
        var request = small
        request.placement.affinity = [.init(group: "web")]
        #expect(decide(request, [node("a"), node("b")]).nodeID == "id-a")
        let d = decide(request, [node("a"), node("b", used: (7, 7000), groups: ["web": 1])])
        #expect(d.nodeID == "id-b")
        #expect(d.verdicts.last?.rejection == .affinity(group: "web"))
        request.placement.affinity = [.init(group: "web", hard: false)]
        #expect(decide(request, [node("a"), node("b", groups: ["web": 1])]).nodeID == "id-b")
    }

    @Test("spread picks the emptiest node, pack the fullest that fits; ties go to the first name")
    func strategies() {
        let nodes = [node("a", used: (4, 4096)), node("b", used: (1, 1024)), node("c", used: (7, 7680))]
        #expect(decide(small, nodes).nodeID == "id-b")
        #expect(decide(small, nodes, strategy: .pack).nodeID == "id-c")
        var packing = small
        packing.placement.strategy = .pack
        #expect(decide(packing, nodes).nodeID == "id-c")
        #expect(decide(small, [node("b"), node("a")]).nodeID == "id-a")
    }

    @Test("the summary counts the reasons, biggest first, with what memory was needed and the largest free")
    func summary() {
        var nodes: [NodeCandidate] = []
        for index in 0..<7 { nodes.append(node("m\(index)", memory: 1024 + 128 * index)) }
        let gpu = NodeSpec.Taint(key: "gpu", value: "true", effect: .noSchedule)
        for index in 0..<3 { nodes.append(node("t\(index)", spec: NodeSpec(taints: [gpu]))) }
        for index in 0..<2 { nodes.append(node("c\(index)", spec: NodeSpec(schedulable: false))) }
        let d = decide(SchedulingRequest(cpus: 1, memoryMiB: 4096), nodes)
        #expect(d.nodeID == nil)
        #expect(
            d.summary
                == "0/12 nodes fit: 7 insufficient memory (need 4096 MiB, largest free 1792), 3 taint gpu=true:NoSchedule, 2 cordoned"
        )
        let fits = decide(small, [node("a"), node("b", spec: NodeSpec(schedulable: false))])
        #expect(fits.summary == "1/2 nodes fit; chose a (score 90): 1 cordoned")
    }

    @Test("placement validation: a group in both lists, a bad group name")
    func validation() {
        #expect(throws: LQXError.self) {
            try Placement(affinity: [.init(group: "x")], antiAffinity: [.init(group: "x")]).validate()
        }
        #expect(throws: LQXError.self) { try Placement(affinity: [.init(group: "Bad Name")]).validate() }
        #expect(throws: LQXError.self) {
            try Placement(antiAffinity: [.init(group: "x"), .init(group: "x", hard: false)]).validate()
        }
    }
}

@Suite("scheduler: properties over random clusters and request streams")
struct SchedulerPropertyTests {
    @Test(
        "never over capacity, never a hard rule broken, every rejection explained, the best score chosen",
        arguments: 0..<40)
    func randomStreams(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        let zones = ["a", "b", "c"]
        let taints = [
            NodeSpec.Taint(key: "gpu", value: "true", effect: .noSchedule),
            NodeSpec.Taint(key: "spot", effect: .preferNoSchedule), NodeSpec.Taint(key: "bad", effect: .noExecute),
        ]
        var nodes: [NodeCandidate] = []
        for index in 0..<Int.random(in: 1...30, using: &random) {
            let spec = NodeSpec(
                labels: ["zone": zones.randomElement(using: &random)!],
                taints: Bool.random(using: &random) ? [taints.randomElement(using: &random)!] : [],
                schedulable: Int.random(in: 0..<10, using: &random) > 0)
            nodes.append(
                node(
                    "n\(index)", cpus: Int.random(in: 1...64, using: &random),
                    memory: Int.random(in: 1...64, using: &random) * 1024,
                    phase: Int.random(in: 0..<10, using: &random) > 0 ? .ready : .notReady, spec: spec))
        }
        var cluster = ClusterSnapshot(nodes: nodes)
        let scheduler = Scheduler(strategy: Bool.random(using: &random) ? .spread : .pack)
        for _ in 0..<200 {
            var placement = Placement()
            if Int.random(in: 0..<4, using: &random) == 0 {
                placement.nodeSelector = ["zone": zones.randomElement(using: &random)!]
            }
            if Bool.random(using: &random) { placement.tolerations = [Placement.Toleration(key: "gpu")] }
            let group = "g\(Int.random(in: 0..<5, using: &random))"
            switch Int.random(in: 0..<4, using: &random) {
            case 0: placement.antiAffinity = [.init(group: group, hard: Bool.random(using: &random))]
            case 1: placement.affinity = [.init(group: group, hard: Bool.random(using: &random))]
            default: break
            }
            let request = SchedulingRequest(
                cpus: Int.random(in: 1...8, using: &random), memoryMiB: Int.random(in: 1...16, using: &random) * 512,
                placement: placement)
            let decision = scheduler.schedule(request, on: cluster)
            #expect(decision.verdicts.count == cluster.nodes.count, "seed \(seed): a node without a verdict")
            for verdict in decision.verdicts {
                #expect((verdict.score == nil) != (verdict.rejection == nil), "seed \(seed): \(verdict)")
            }
            if let best = decision.verdicts.compactMap(\.score).max() {
                #expect(decision.chosen?.score == best, "seed \(seed)")
            } else {
                #expect(decision.nodeID == nil && decision.summary.hasPrefix("0/\(cluster.nodes.count) nodes fit"))
            }
            guard let chosenID = decision.nodeID, let target = cluster.nodes.first(where: { $0.id == chosenID }) else {
                continue
            }
            // Hard rules, checked independently of the scheduler's own code.
            #expect(target.phase == .ready && target.spec.schedulable, "seed \(seed)")
            #expect(target.free.cpus >= request.cpus && target.free.memoryMiB >= request.memoryMiB, "seed \(seed)")
            #expect(target.spec.labels.matches(placement.nodeSelector), "seed \(seed)")
            for taint in target.spec.taints where taint.effect != .preferNoSchedule {
                #expect(placement.tolerations.contains { $0.tolerates(taint) }, "seed \(seed): \(taint)")
            }
            for rule in placement.antiAffinity where rule.hard {
                #expect(target.groups[rule.group, default: 0] == 0, "seed \(seed): anti-affinity \(rule.group)")
            }
            for rule in placement.affinity where rule.hard && cluster.placedGroups[rule.group, default: 0] > 0 {
                #expect(target.groups[rule.group, default: 0] > 0, "seed \(seed): affinity \(rule.group)")
            }
            cluster.place(request, on: chosenID)
        }
        for node in cluster.nodes {
            #expect(
                node.allocated.cpus <= node.allocatable.cpus && node.allocated.memoryMiB <= node.allocatable.memoryMiB)
        }
    }
}
