import ControlPlane
import Foundation
import LQXModel
import LQXTestSupport
import Testing

/// A READY node of `cpus` and `memory` MiB, all of it allocatable.
private func haNode(_ name: String, cpus: Int = 8, memory: Int = 4096, phase: Node.Phase = .ready) -> Node {
    Node(
        meta: ObjectMeta(id: "id-\(name)", name: name),
        spec: NodeSpec(cpuOvercommit: 1, reservedMemoryMiB: 0),
        status: Node.Status(phase: phase, capacity: Node.Resources(cpus: cpus, memoryMiB: memory)))
}

/// A running VM placed on `node`, HA unless `ha` is false.
private func haVM(
    _ name: String, on node: String, cpus: Int = 1, memory: Int = 2048, ha: Bool = true,
    priority: HAPolicy.Priority = .medium, placement: Placement = Placement()
) -> VirtualMachine {
    var spec = kernelSpec(cpus: cpus, memory: memory, placement: placement)
    spec.ha = HAPolicy(enabled: ha, priority: priority)
    return VirtualMachine(
        meta: ObjectMeta(id: "vm-\(name)", name: name, project: "default"), spec: spec,
        status: VirtualMachine.Status(phase: .running, nodeID: "id-\(node)"))
}

@Suite("HA admission control: tolerate k host failures by packing in priority order")
struct HAAdmissionTests {
    let admission = HAAdmission()

    @Test(
        "room for one failure is admitted; a set that strands a VM is refused with the nodes, the VM and the shortfall")
    func strands() throws {
        let nodes = ["a", "b", "c"].map { haNode($0) }
        var vms = [
            haVM("a1", on: "a", priority: .high), haVM("a2", on: "a", priority: .low), haVM("b1", on: "b"),
            haVM("c1", on: "c"),
        ]
        #expect(admission.check(nodes: nodes, vms: vms, tolerate: 0) == nil)
        #expect(admission.check(nodes: nodes, vms: vms, tolerate: 1) == nil)
        vms.append(haVM("c2", on: "c"))
        let refusal = try #require(admission.check(nodes: nodes, vms: vms, tolerate: 1))
        // a fails: a1 (high) takes b's last 2048 MiB; a2 (low) has nowhere to go.
        #expect(refusal.failedNodes == ["a"])
        #expect(refusal.stranded == ["default/a2"])
        #expect(refusal.cpus == 1 && refusal.memoryMiB == 2048)
        #expect(
            refusal.description
                == "admission control (ha.tolerate-failures 1): if node a failed, HA VM default/a2 would have no node to restart on (short of 1 vCPUs and 2048 MiB)"
        )
        // VMs without HA are not restarted, so need no room (they still take room where they are).
        let plain = [
            haVM("a1", on: "a", priority: .high), haVM("a2", on: "a", ha: false), haVM("b1", on: "b", ha: false),
            haVM("c1", on: "c"), haVM("c2", on: "c", ha: false),
        ]
        #expect(admission.check(nodes: nodes, vms: plain, tolerate: 1) == nil)
        // Two failures: a and b together leave a1 nowhere (c is full).
        let two = try #require(admission.check(nodes: nodes, vms: plain, tolerate: 2))
        #expect(two.failedNodes.count == 2 && two.description.contains("failed together"))
    }

    @Test("a stopped or deleted HA VM, or one not placed, needs no restart room")
    func onlyRunning() {
        let nodes = ["a", "b"].map { haNode($0, memory: 2048) }
        var stopped = haVM("s", on: "a")
        stopped.spec.runState = .stopped
        var deleting = haVM("d", on: "a")
        deleting.meta.deletionRequestedUnixMs = 1
        var pending = haVM("p", on: "a")
        pending.status.nodeID = ""
        #expect(admission.check(nodes: nodes, vms: [stopped, deleting, pending], tolerate: 1) == nil)
    }

    @Test("hard anti-affinity is kept when restarting: room elsewhere is not enough if only a member's node has it")
    func antiAffinity() {
        let rule = Placement(antiAffinity: [Placement.GroupRule(group: "db")])
        let two = ["a", "b"].map { haNode($0, memory: 16384) }
        let vms = [haVM("db1", on: "a", placement: rule), haVM("db2", on: "b", placement: rule)]
        let refusal = admission.check(nodes: two, vms: vms, tolerate: 1)
        #expect(refusal?.stranded.count == 1, "\(String(describing: refusal))")
        // A third node takes the displaced member.
        #expect(admission.check(nodes: two + [haNode("c", memory: 4096)], vms: vms, tolerate: 1) == nil)
    }

    @Test("node selectors and cordons are kept: only matching, schedulable survivors count")
    func selectorsAndCordons() {
        var nodes = ["a", "b", "c"].map { haNode($0) }
        nodes[0].spec.labels = ["zone": "x"]
        nodes[1].spec.labels = ["zone": "x"]
        let selector = Placement(nodeSelector: ["zone": "x"])
        let vms = [haVM("a1", on: "a", memory: 4096, placement: selector)]
        // b is full of something else; c has room but not the label.
        let filler = haVM("f", on: "b", memory: 4096, ha: false)
        #expect(admission.check(nodes: nodes, vms: vms + [filler], tolerate: 1)?.stranded == ["default/a1"])
        #expect(admission.check(nodes: nodes, vms: vms, tolerate: 1) == nil)
        nodes[1].spec.schedulable = false
        #expect(admission.check(nodes: nodes, vms: vms, tolerate: 1) != nil)
    }

    @Test("HA VMs on a node already NOT_READY are displaced in every set; a node in maintenance takes none")
    func downNodes() {
        let nodes = [haNode("a", phase: .notReady), haNode("b"), haNode("c"), haNode("m", phase: .maintenance)]
        let vms = [haVM("a1", on: "a", memory: 4096), haVM("b1", on: "b", memory: 2048)]
        // b fails: b1 and a1 (a is down) both need c, which has 4096: only one fits.
        let refusal = admission.check(nodes: nodes, vms: vms, tolerate: 1)
        #expect(refusal?.failedNodes == ["b"] || refusal?.failedNodes == ["c"], "\(String(describing: refusal))")
        #expect(admission.check(nodes: nodes, vms: [vms[1]], tolerate: 1) == nil)
    }

    @Test("the counting bound proves roomy clusters without packing; tight ones are packed")
    func shortcuts() {
        let nodes = (0..<50).map { haNode("n\($0)", cpus: 64, memory: 65536) }
        let vms = (0..<200).map { haVM("v\($0)", on: "n\($0 % 50)", cpus: 2, memory: 4096) }
        var work = HAAdmission.Work()
        #expect(admission.check(nodes: nodes, vms: vms, tolerate: 2, work: &work) == nil)
        #expect(work.setsPacked == 0 && work.setsVisited == 0, "\(work)")
        // Uneven sizes where the bound cannot tell: a 4096 and a 1024 MiB VM on a fit b (4096)
        // and c (1024), though only one 4096 "slot" is left.
        let tight = [haNode("a", memory: 5120), haNode("b", memory: 4096), haNode("c", memory: 1024)]
        let mixed = [haVM("big", on: "a", memory: 4096), haVM("small", on: "a", memory: 1024)]
        var packed = HAAdmission.Work()
        #expect(admission.check(nodes: tight, vms: mixed, tolerate: 1, work: &packed) == nil)
        #expect(packed.setsPacked > 0, "\(packed)")
    }

    @Test("the shortcuts never change the answer: random clusters against packing every set", arguments: 0..<300)
    func shortcutsAgree(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        let nodeCount = Int.random(in: 1...9, using: &random)
        var nodes: [Node] = []
        for index in 0..<nodeCount {
            let phase: Node.Phase =
                switch Int.random(in: 0..<12, using: &random) {
                case 0: .notReady
                case 1: .draining
                case 2: .maintenance
                default: .ready
                }
            var node = haNode(
                "n\(index)", cpus: Int.random(in: 2...16, using: &random),
                memory: Int.random(in: 2...16, using: &random) * 1024, phase: phase)
            if Int.random(in: 0..<5, using: &random) == 0 { node.spec.labels = ["zone": "x"] }
            if Int.random(in: 0..<8, using: &random) == 0 { node.spec.schedulable = false }
            if Int.random(in: 0..<8, using: &random) == 0 {
                node.spec.taints = [NodeSpec.Taint(key: "gpu", effect: .noSchedule)]
            }
            nodes.append(node)
        }
        var vms: [VirtualMachine] = []
        for index in 0..<Int.random(in: 0...25, using: &random) {
            var placement = Placement()
            switch Int.random(in: 0..<10, using: &random) {
            case 0: placement.nodeSelector = ["zone": "x"]
            case 1: placement.antiAffinity = [Placement.GroupRule(group: "g\(Int.random(in: 0..<2, using: &random))")]
            case 2: placement.tolerations = [Placement.Toleration(key: "gpu")]
            default: break
            }
            vms.append(
                haVM(
                    "v\(index)", on: "n\(Int.random(in: 0..<nodeCount, using: &random))",
                    cpus: Int.random(in: 1...4, using: &random), memory: Int.random(in: 1...6, using: &random) * 512,
                    ha: Int.random(in: 0..<4, using: &random) > 0,
                    priority: HAPolicy.Priority.allCases.randomElement(using: &random)!, placement: placement))
        }
        let exhaustive = HAAdmission(exhaustive: true)
        for k in 1...3 {
            let fast = admission.check(nodes: nodes, vms: vms, tolerate: k)
            let slow = exhaustive.check(nodes: nodes, vms: vms, tolerate: k)
            #expect(
                (fast == nil) == (slow == nil),
                "k \(k): fast \(String(describing: fast)), slow \(String(describing: slow))")
        }
    }

    @Test("HA policy and settings: bounds named, unknown keys listed, old records decode with HA off")
    func validation() throws {
        #expect(throws: LQXError(.invalidSpec, "ha.max_restarts: 0 to 100 (got 101)")) {
            try HAPolicy(enabled: true, maxRestarts: 101).validate()
        }
        #expect(throws: LQXError(.invalidSpec, "ha.priority: one of lowest, low, medium, high, highest (got top)")) {
            try HAPolicy.Priority(parsing: "top")
        }
        #expect(try HAPolicy.Priority(parsing: "HIGH") == .high && HAPolicy.Priority.lowest < .highest)
        #expect(throws: LQXError(.invalidSpec, "no cluster setting ha.k; settings: ha.tolerate-failures")) {
            try ClusterSettings().setting("ha.k", to: "1")
        }
        #expect(throws: LQXError(.invalidSpec, "ha.tolerate-failures: a whole number 0 to 8 (got -1)")) {
            try ClusterSettings().setting("ha.tolerate-failures", to: "-1")
        }
        #expect(try ClusterSettings().setting("ha.tolerate-failures", to: "2").haTolerateFailures == 2)
        // A record written before `ha` existed: today's encoding without the key.
        var object = try #require(
            try JSONSerialization.jsonObject(with: try JSONEncoder().encode(kernelSpec())) as? [String: Any])
        #expect(object.removeValue(forKey: "ha") != nil)
        let old = try JSONSerialization.data(withJSONObject: object)
        let spec = try JSONDecoder().decode(VirtualMachine.Spec.self, from: old)
        #expect(spec.ha == HAPolicy() && !spec.ha.enabled)
    }
}

@Suite("HA admission control through the cluster (SQLite)")
struct HAAdmissionClusterTests {
    func haSpec(memory: Int = 2048, priority: HAPolicy.Priority = .medium) -> VirtualMachine.Spec {
        var spec = kernelSpec(memory: memory)
        spec.ha = HAPolicy(enabled: true, priority: priority)
        return spec
    }

    @Test("cluster settings: read by viewers, set by admins (audited), a rise refused when it already strands a VM")
    func settings() async throws {
        try await withStore(.sqlite) { store, _ in
            let cluster = try await makeCluster(store, clock: TestClock())
            let viewer = Principal(user: "v", role: .viewer)
            #expect(try await cluster.settings(by: viewer) == ClusterSettings())
            await expectLQXError(.permissionDenied, containing: "admin role") {
                _ = try await cluster.setSetting("ha.tolerate-failures", to: "1", by: viewer)
            }
            await expectLQXError(.invalidSpec, containing: "no cluster setting nope") {
                _ = try await cluster.setSetting("nope", to: "1", by: .system)
            }
            try await joinNode(cluster, "a", memory: 4096)
            try await joinNode(cluster, "b", memory: 4096)
            _ = try await cluster.createVM(CreateVM(name: "web", spec: haSpec(memory: 3072)), by: .system)
            _ = try await cluster.createVM(CreateVM(name: "db", spec: haSpec(memory: 3072)), by: .system)
            // Each node holds one 3072 MiB VM: neither fits beside the other after a failure.
            await expectLQXError(
                .resourceExhausted, containing: "cannot set ha.tolerate-failures to 1: admission control"
            ) {
                _ = try await cluster.setSetting("ha.tolerate-failures", to: "1", by: .system)
            }
            #expect(try await cluster.settings(by: viewer).haTolerateFailures == 0)
            try await joinNode(cluster, "c", memory: 4096)
            let set = try await cluster.setSetting("ha.tolerate-failures", to: "1", by: .system)
            #expect(set.haTolerateFailures == 1 && set.resourceVersion > 0)
            #expect(try await cluster.settings(by: viewer) == set)
            // Lowering it is never refused; the same value again changes nothing.
            #expect(try await cluster.setSetting("ha.tolerate-failures", to: "1", by: .system) == set)
            _ = try await cluster.setSetting("ha.tolerate-failures", to: "0", by: .system)
            let audit = try await cluster.audit(LogQuery(), by: .system).filter { $0.action == "cluster.set" }
            #expect(audit.map(\.detail) == ["ha.tolerate-failures = 1", "ha.tolerate-failures = 0"])
        }
    }

    @Test(
        "an HA VM that would break the plan is refused at create, at update and at its first placement; others are not")
    func refusals() async throws {
        try await withStore(.sqlite) { store, _ in
            let cluster = try await makeCluster(store, clock: TestClock())
            _ = try await cluster.setSetting("ha.tolerate-failures", to: "1", by: .system)
            // No node: nothing to plan yet, the VM waits.
            let early = try await cluster.createVM(CreateVM(name: "early", spec: haSpec()), by: .system)
            #expect(early.status.phase == .pending)
            try await joinNode(cluster, "a", memory: 4096)
            _ = try await cluster.schedulePending()
            // With one node, its failure leaves the VM nowhere: placement is refused, with the reason.
            let waiting = try #require(try await cluster.repository.vm(id: early.meta.id))
            #expect(waiting.status.nodeID.isEmpty)
            #expect(waiting.status.conditions["Scheduled"]?.reason == "HAAdmissionControl")
            #expect(waiting.status.conditions["Scheduled"]?.message.contains("if node a failed") == true)
            await expectLQXError(.resourceExhausted, containing: "HA VM web not started: admission control") {
                _ = try await cluster.createVM(CreateVM(name: "web", spec: haSpec()), by: .system)
            }
            #expect(try await cluster.repository.vm(project: "default", name: "web") == nil)
            // Without HA the same VM is fine.
            let plain = try await cluster.createVM(CreateVM(name: "plain", spec: kernelSpec(memory: 1024)), by: .system)
            #expect(plain.status.nodeID.isEmpty == false)
            // A second node makes room: the waiting VM is placed.
            try await joinNode(cluster, "b", memory: 4096)
            _ = try await cluster.schedulePending()
            #expect(try await cluster.repository.vm(id: early.meta.id)?.status.nodeID.isEmpty == false)
            // Turning HA on for a VM too big to fit beside the others is refused; the spec stays.
            let big = try await cluster.createVM(CreateVM(name: "big", spec: kernelSpec(memory: 3072)), by: .system)
            var spec = big.spec
            spec.ha = HAPolicy(enabled: true, priority: .highest)
            await expectLQXError(.resourceExhausted, containing: "HA VM big not started") {
                _ = try await cluster.updateVM(
                    "default", "big", spec: spec, labels: big.meta.labels, resourceVersion: big.meta.resourceVersion,
                    by: .system)
            }
            #expect(try await cluster.repository.vm(id: big.meta.id)?.spec.ha.enabled == false)
        }
    }
}
