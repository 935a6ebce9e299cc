import ControlPlane
import LQXModel
import LQXTestSupport
import Logging
import Synchronization
import Testing

/// A clock tests move by hand.
final class TestClock: Sendable {
    private let time = Mutex<Int64>(1_800_000_000_000)
    var now: Int64 { time.withLock { $0 } }
    func advance(seconds: Int64) { time.withLock { $0 += seconds * 1000 } }
}

func makeCluster(_ store: any Store, clock: TestClock, strategy: Placement.Strategy = .spread) async throws -> Cluster {
    var logger = Logger(label: "cluster-test")
    logger.logLevel = .warning
    let cluster = Cluster(
        store: store, scheduler: Scheduler(strategy: strategy), heartbeatGrace: .seconds(15), logger: logger,
        now: { clock.now })
    try await cluster.bootstrap()
    return cluster
}

func kernelSpec(cpus: Int = 1, memory: Int = 512, placement: Placement = Placement()) -> VirtualMachine.Spec {
    VirtualMachine.Spec(
        machine: VMSpec(name: "x", vcpus: cpus, memoryMiB: memory, boot: .kernel(path: "/k", initrd: nil, cmdline: "")),
        placement: placement)
}

/// Joins a READY node with that many CPUs and MiB (no overcommit, nothing reserved).
@discardableResult
func joinNode(_ cluster: Cluster, _ name: String, cpus: Int = 8, memory: Int = 8192) async throws -> Node {
    let token = try await cluster.createJoinToken(ttl: .seconds(3600), by: .system).token
    let node = try await cluster.registerNode(
        joinToken: token,
        NodeRegistration(name: name, address: "127.0.0.1:7443", capacity: Node.Resources(cpus: cpus, memoryMiB: memory))
    )
    _ = try await cluster.setResources(
        name, cpuOvercommit: 1, memoryOvercommit: 1, reservedCPUs: 0, reservedMemoryMiB: 0, by: .system)
    try await cluster.heartbeat(nodeID: node.meta.id)
    return node
}

func expectLQXError(
    _ code: LQXError.Code, containing text: String = "", sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async {
    do {
        try await body()
        Issue.record("expected \(code)", sourceLocation: sourceLocation)
    } catch let error as LQXError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        #expect(
            text.isEmpty || error.fullMessage.contains(text), "\(error.fullMessage)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("cluster core: VMs, nodes, tokens, scheduling (SQLite)")
struct ClusterTests {
    @Test("first start: the default project and one admin token; tokens authenticate with specific refusals")
    func tokens() async throws {
        try await withStore(.sqlite) { store, _ in
            let clock = TestClock()
            let cluster = try await makeCluster(store, clock: clock)
            #expect(try await cluster.projects(by: .system).map(\.meta.name) == ["default"])
            let admin = try #require(try await cluster.bootstrapAdminToken())
            #expect(try await cluster.bootstrapAdminToken() == nil)
            let principal = try await cluster.authenticate(bearer: admin)
            #expect(principal.role == .admin && principal.user == "admin")
            let (viewer, record) = try await cluster.createToken(
                user: "val", role: .viewer, project: "", ttl: .seconds(60), by: principal)
            #expect(try await cluster.authenticate(bearer: viewer).role == .viewer)
            await expectLQXError(.unauthenticated, containing: "malformed") {
                _ = try await cluster.authenticate(bearer: "Bearer nonsense")
            }
            await expectLQXError(.unauthenticated, containing: "not valid") {
                _ = try await cluster.authenticate(bearer: String(viewer.dropLast()) + (viewer.last == "0" ? "1" : "0"))
            }
            clock.advance(seconds: 61)
            await expectLQXError(.unauthenticated, containing: "expired") {
                _ = try await cluster.authenticate(bearer: viewer)
            }
            try await cluster.revokeToken(id: principal.tokenID, by: principal)
            await expectLQXError(.unauthenticated, containing: "revoked") {
                _ = try await cluster.authenticate(bearer: admin)
            }
            #expect(try await cluster.tokens(by: .system).count == 2 && record.secretHash.count == 64)
            #expect(!(try await cluster.tokens(by: .system).contains { viewer.contains($0.secretHash) }))
        }
    }

    @Test("roles: viewers read, operators run VMs in their project, admins manage nodes")
    func roles() async throws {
        try await withStore(.sqlite) { store, _ in
            let cluster = try await makeCluster(store, clock: TestClock())
            _ = try await cluster.createProject("team", quota: Project.Quota(), by: .system)
            let viewer = Principal(user: "v", role: .viewer)
            let teamOperator = Principal(user: "o", role: .operator, project: "team")
            await expectLQXError(.permissionDenied, containing: "operator role") {
                _ = try await cluster.createVM(CreateVM(name: "web", spec: kernelSpec()), by: viewer)
            }
            await expectLQXError(.permissionDenied, containing: "limited to project team") {
                _ = try await cluster.createVM(
                    CreateVM(project: "default", name: "web", spec: kernelSpec()), by: teamOperator)
            }
            _ = try await cluster.createVM(CreateVM(project: "team", name: "web", spec: kernelSpec()), by: teamOperator)
            #expect(try await cluster.vms(project: nil, by: teamOperator).map(\.meta.name) == ["web"])
            #expect(try await cluster.vms(project: "team", by: viewer).count == 1)
            await expectLQXError(.permissionDenied, containing: "admin role") {
                _ = try await cluster.createJoinToken(ttl: .seconds(60), by: Principal(user: "o", role: .operator))
            }
        }
    }

    @Test("bad input: invalid spec names the field, a taken name, over quota, an unknown VM — nothing is written")
    func badInput() async throws {
        try await withStore(.sqlite) { store, _ in
            let cluster = try await makeCluster(store, clock: TestClock())
            await expectLQXError(.invalidSpec, containing: "memory must be at least 128 MiB") {
                _ = try await cluster.createVM(CreateVM(name: "web", spec: kernelSpec(memory: 64)), by: .system)
            }
            await expectLQXError(.invalidSpec, containing: "labels") {
                _ = try await cluster.createVM(
                    CreateVM(name: "web", labels: try Labels(["Bad": "x"]), spec: kernelSpec()), by: .system)
            }
            _ = try await cluster.setQuota("default", Project.Quota(vcpus: 4, memoryMiB: 2048, vms: 3), by: .system)
            _ = try await cluster.createVM(CreateVM(name: "web", spec: kernelSpec(cpus: 2)), by: .system)
            await expectLQXError(.alreadyExists, containing: "web") {
                _ = try await cluster.createVM(CreateVM(name: "web", spec: kernelSpec()), by: .system)
            }
            await expectLQXError(.resourceExhausted, containing: "4 vCPUs allowed, 5 would be in use") {
                _ = try await cluster.createVM(CreateVM(name: "big", spec: kernelSpec(cpus: 3)), by: .system)
            }
            await expectLQXError(.resourceExhausted, containing: "2048 MiB allowed, 2560 MiB") {
                _ = try await cluster.createVM(CreateVM(name: "fat", spec: kernelSpec(memory: 2048)), by: .system)
            }
            await expectLQXError(.notFound, containing: "VM ghost does not exist") {
                _ = try await cluster.vm("default", "ghost", by: .system)
            }
            await expectLQXError(.notFound, containing: "project nope") {
                _ = try await cluster.createVM(CreateVM(project: "nope", name: "a", spec: kernelSpec()), by: .system)
            }
            #expect(try await cluster.vms(project: nil, by: .system).map(\.meta.name) == ["web"])
        }
    }

    @Test(
        "spec and status: the same spec twice changes nothing; a stale resource_version is refused with the current one"
    )
    func applyTwice() async throws {
        try await withStore(.sqlite) { store, _ in
            let cluster = try await makeCluster(store, clock: TestClock())
            try await joinNode(cluster, "n1")
            let vm = try await cluster.createVM(CreateVM(name: "web", spec: kernelSpec()), by: .system)
            #expect(vm.status.phase == .scheduled && !vm.status.nodeID.isEmpty && vm.status.epoch == 1)
            let again = try await cluster.updateVM(
                "default", "web", spec: vm.spec, labels: vm.meta.labels, resourceVersion: 1, by: .system)
            #expect(again.meta.resourceVersion == vm.meta.resourceVersion)
            var changed = vm.spec
            changed.runState = .stopped
            let stopped = try await cluster.updateVM(
                "default", "web", spec: changed, labels: vm.meta.labels, resourceVersion: vm.meta.resourceVersion,
                by: .system)
            #expect(stopped.meta.resourceVersion > vm.meta.resourceVersion && stopped.spec.runState == .stopped)
            do {
                _ = try await cluster.updateVM(
                    "default", "web", spec: vm.spec, labels: vm.meta.labels, resourceVersion: vm.meta.resourceVersion,
                    by: .system)
                Issue.record("a stale write was accepted")
            } catch let error as LQXError {
                #expect(
                    error.code == .conflict && (error.cause as? StaleVersion)?.current == stopped.meta.resourceVersion)
            }
            var bigger = stopped.spec
            bigger.machine.memoryMiB = 1024
            await expectLQXError(.failedPrecondition, containing: "stop it before changing") {
                _ = try await cluster.updateVM(
                    "default", "web", spec: bigger, labels: [:], resourceVersion: stopped.meta.resourceVersion,
                    by: .system)
            }
            let events = try await cluster.events(LogQuery(object: vm.meta.id), by: .system).map(\.reason)
            #expect(events == ["Created", "Scheduled", "SpecChanged"])
        }
    }

    @Test("a VM that fits nowhere stays PENDING with the reasons, and is placed when a node joins")
    func pendingUntilCapacity() async throws {
        try await withStore(.sqlite) { store, _ in
            let cluster = try await makeCluster(store, clock: TestClock())
            try await joinNode(cluster, "small", cpus: 2, memory: 1024)
            let vm = try await cluster.createVM(
                CreateVM(name: "big", spec: kernelSpec(cpus: 4, memory: 4096)), by: .system)
            #expect(vm.status.phase == .pending && vm.status.nodeID.isEmpty)
            let condition = try #require(vm.status.conditions["Scheduled"])
            #expect(!condition.status && condition.reason == "Unschedulable")
            #expect(condition.message == "0/1 nodes fit: 1 insufficient vCPUs (need 4, largest free 2)")
            let explained = try await cluster.explain("default", "big", by: .system)
            #expect(explained.verdicts.map(\.rejection) == [.insufficientCPU(need: 4, free: 2)])
            let large = try await joinNode(cluster, "large", cpus: 8, memory: 8192)
            let placed = try await cluster.vm("default", "big", by: .system)
            #expect(placed.status.nodeID == large.meta.id && placed.status.phase == .scheduled)
        }
    }

    @Test("spread puts two VMs on two nodes, pack on one; hard anti-affinity separates; a taint repels")
    func placementThroughTheCluster() async throws {
        for strategy in [Placement.Strategy.spread, .pack] {
            try await withStore(.sqlite) { store, _ in
                let cluster = try await makeCluster(store, clock: TestClock(), strategy: strategy)
                try await joinNode(cluster, "n1")
                try await joinNode(cluster, "n2")
                let a = try await cluster.createVM(CreateVM(name: "a", spec: kernelSpec()), by: .system)
                let b = try await cluster.createVM(CreateVM(name: "b", spec: kernelSpec()), by: .system)
                #expect((a.status.nodeID == b.status.nodeID) == (strategy == .pack), "\(strategy)")
                let apart = Placement(antiAffinity: [.init(group: "db")])
                let c = try await cluster.createVM(CreateVM(name: "c", spec: kernelSpec(placement: apart)), by: .system)
                let d = try await cluster.createVM(CreateVM(name: "d", spec: kernelSpec(placement: apart)), by: .system)
                #expect(c.status.nodeID != d.status.nodeID && !c.status.nodeID.isEmpty && !d.status.nodeID.isEmpty)
            }
        }
        try await withStore(.sqlite) { store, _ in
            let cluster = try await makeCluster(store, clock: TestClock())
            let tainted = try await joinNode(cluster, "gpu")
            _ = try await cluster.setTaint("gpu", key: "gpu", value: "true", effect: .noSchedule, by: .system)
            let plain = try await cluster.createVM(CreateVM(name: "plain", spec: kernelSpec()), by: .system)
            #expect(plain.status.conditions["Scheduled"]?.message == "0/1 nodes fit: 1 taint gpu=true:NoSchedule")
            let tolerant = Placement(tolerations: [try Placement.Toleration(parsing: "gpu=true:NoSchedule")])
            let ok = try await cluster.createVM(
                CreateVM(name: "ok", spec: kernelSpec(placement: tolerant)), by: .system)
            #expect(ok.status.nodeID == tainted.meta.id)
            _ = try await cluster.setTaint("gpu", key: "gpu", value: "", effect: nil, by: .system)
            #expect(try await cluster.vm("default", "plain", by: .system).status.nodeID == tainted.meta.id)
        }
    }

    @Test(
        "a VM is placed only on a node that has its paths: nodes are asked in heartbeat replies, unknown waits, missing is explained"
    )
    func pathsOnNodes() async throws {
        try await withStore(.sqlite) { store, _ in
            let clock = TestClock()
            let cluster = try await makeCluster(store, clock: clock)
            let first = try await joinNode(cluster, "n1")
            let second = try await joinNode(cluster, "n2")
            // Both check paths and were asked nothing yet.
            for node in [first, second] { #expect(try await cluster.heartbeat(nodeID: node.meta.id, paths: [:]) == []) }
            var spec = kernelSpec()
            spec.machine.disks = [DiskSpec(source: .clone(backing: "/images/base.qcow2"))]
            let vm = try await cluster.createVM(CreateVM(name: "needs", spec: spec), by: .system)
            #expect(vm.status.nodeID.isEmpty)
            #expect(vm.status.conditions["Scheduled"]?.message == "0/2 nodes fit: 2 not yet checked /k")
            // The next replies ask about the VM's paths.
            let asked = try await cluster.heartbeat(nodeID: first.meta.id, paths: [:])
            #expect(asked == ["/images/base.qcow2", "/k"])
            try await cluster.heartbeat(nodeID: first.meta.id, paths: ["/k": true, "/images/base.qcow2": false])
            var explained = try await cluster.explain("default", "needs", by: .system)
            #expect(explained.verdicts.map(\.rejection) == [.missingPath("/images/base.qcow2"), .pathNotChecked("/k")])
            #expect(explained.summary.contains("1 missing /images/base.qcow2"), "\(explained.summary)")
            // An answer nobody asked for is not kept.
            try await cluster.heartbeat(nodeID: second.meta.id, paths: ["/k": true, "/etc/shadow": true])
            explained = try await cluster.explain("default", "needs", by: .system)
            #expect(explained.verdicts.last?.rejection == .pathNotChecked("/images/base.qcow2"))
            // The node that has both takes it, by itself.
            try await cluster.heartbeat(nodeID: second.meta.id, paths: ["/k": true, "/images/base.qcow2": true])
            let placed = try await cluster.vm("default", "needs", by: .system)
            #expect(placed.status.nodeID == second.meta.id && placed.status.phase == .scheduled)
            // A node that does not check paths (nil) is taken to have them.
            try await cluster.heartbeat(nodeID: first.meta.id, paths: nil)
            let other = try await cluster.createVM(
                CreateVM(name: "other", spec: kernelSpec(placement: Placement(nodeSelector: [:]))), by: .system)
            #expect(!other.status.nodeID.isEmpty)
            // While a node that checks has not answered a path asked about less than a grace
            // ago, the VM waits (the first node to answer would otherwise take every VM).
            try await cluster.heartbeat(nodeID: first.meta.id, paths: [:])
            spec.machine.disks = [DiskSpec(source: .clone(backing: "/images/two.qcow2"))]
            _ = try await cluster.createVM(CreateVM(name: "twin", spec: spec), by: .system)
            try await cluster.heartbeat(nodeID: second.meta.id, paths: ["/k": true, "/images/two.qcow2": true])
            var twin = try await cluster.vm("default", "twin", by: .system)
            #expect(twin.status.nodeID.isEmpty && twin.status.phase == .pending)
            #expect(twin.status.conditions["Scheduled"]?.reason == "WaitingForNodes")
            #expect(
                twin.status.conditions["Scheduled"]?.message
                    == "waiting for 1 node (n1) to say whether it has /k (asked in its next heartbeat)")
            // A node silent past the grace is not waited for.
            clock.advance(seconds: 16)
            try await cluster.schedulePending()
            twin = try await cluster.vm("default", "twin", by: .system)
            #expect(twin.status.nodeID == second.meta.id)
        }
    }

    @Test("join tokens work once and expire; heartbeats keep a node READY, silence makes it NOT_READY")
    func joinAndHeartbeat() async throws {
        try await withStore(.sqlite) { store, _ in
            let clock = TestClock()
            let cluster = try await makeCluster(store, clock: clock)
            let token = try await cluster.createJoinToken(ttl: .seconds(3600), by: .system).token
            let registration = NodeRegistration(
                name: "n1", address: "10.0.0.1:7443", capacity: Node.Resources(cpus: 4, memoryMiB: 4096))
            let node = try await cluster.registerNode(joinToken: token, registration)
            #expect(node.status.phase == .pending)
            await expectLQXError(.unauthenticated, containing: "already used") {
                var other = registration
                other.name = "n2"
                _ = try await cluster.registerNode(joinToken: token, other)
            }
            let late = try await cluster.createJoinToken(ttl: .seconds(60), by: .system).token
            clock.advance(seconds: 61)
            await expectLQXError(.unauthenticated, containing: "expired") {
                _ = try await cluster.registerNode(joinToken: late, registration)
            }
            await expectLQXError(.unauthenticated, containing: "malformed") {
                _ = try await cluster.registerNode(joinToken: "lqx_abc", registration)
            }
            let started = clock.now
            try await cluster.heartbeat(nodeID: node.meta.id)
            #expect(try await cluster.node("n1", by: .system).status.phase == .ready)
            clock.advance(seconds: 10)
            try await cluster.checkHeartbeats(startedUnixMs: started)
            #expect(try await cluster.node("n1", by: .system).status.phase == .ready)
            clock.advance(seconds: 10)
            try await cluster.checkHeartbeats(startedUnixMs: started)
            #expect(try await cluster.node("n1", by: .system).status.phase == .notReady)
            try await cluster.heartbeat(nodeID: node.meta.id)
            #expect(try await cluster.node("n1", by: .system).status.phase == .ready)
            let reasons = try await cluster.events(LogQuery(object: node.meta.id), by: .system).map(\.reason)
            #expect(reasons == ["Joined", "NodeReady", "NodeNotReady", "NodeReady"])
        }
    }

    @Test("silent nodes: DRAINING → NOT_READY and back to DRAINING; MAINTENANCE → OFFLINE (not a failure) and back")
    func silentDrainingAndMaintenance() async throws {
        try await withStore(.sqlite) { store, _ in
            let clock = TestClock()
            let cluster = try await makeCluster(store, clock: clock)
            var ids: [String: String] = [:]
            for name in ["busy", "idle"] {
                let token = try await cluster.createJoinToken(ttl: .seconds(3600), by: .system).token
                let node = try await cluster.registerNode(
                    joinToken: token,
                    NodeRegistration(
                        name: name, address: "10.0.0.\(ids.count + 1):7443",
                        capacity: Node.Resources(cpus: 4, memoryMiB: 4096)))
                ids[name] = node.meta.id
                try await cluster.heartbeat(nodeID: node.meta.id)
            }
            _ = try await cluster.setSchedulable("idle", false, by: .system)
            let vm = try await cluster.createVM(CreateVM(name: "stuck", spec: kernelSpec()), by: .system)
            #expect(try await cluster.repository.vm(id: vm.meta.id)?.status.nodeID == ids["busy"])
            _ = try await cluster.setSchedulable("idle", true, by: .system)
            // No reconciler runs: the VM stays on busy, evicting.
            #expect(try await cluster.drainNode("busy", by: .system).map(\.meta.name) == ["stuck"])
            #expect(try await cluster.drainNode("idle", by: .system).isEmpty)
            func phase(_ name: String) async throws -> Node.Phase? {
                try await cluster.node(name, by: .system).status.phase
            }
            #expect(try await phase("busy") == .draining)
            #expect(try await phase("idle") == .maintenance)
            let started = clock.now
            clock.advance(seconds: 20)
            try await cluster.checkHeartbeats(startedUnixMs: started)
            #expect(try await phase("busy") == .notReady)
            #expect(try await phase("idle") == .offline)
            try await cluster.heartbeat(nodeID: ids["busy"] ?? "")
            try await cluster.heartbeat(nodeID: ids["idle"] ?? "")
            #expect(try await phase("busy") == .draining)
            #expect(try await phase("idle") == .maintenance)
            // Uncordoning a node that is switched off: NOT_READY until it heartbeats.
            clock.advance(seconds: 20)
            try await cluster.checkHeartbeats(startedUnixMs: started)
            #expect(try await phase("idle") == .offline)
            #expect(try await cluster.setSchedulable("idle", true, by: .system).status.phase == .notReady)
            try await cluster.heartbeat(nodeID: ids["idle"] ?? "")
            #expect(try await phase("idle") == .ready)
            let idle = try await cluster.events(LogQuery(object: ids["idle"] ?? ""), by: .system)
            #expect(
                idle.map(\.reason) == [
                    "Joined", "NodeReady", "Cordoned", "Uncordoned", "Draining", "NodeOffline", "NodeReady",
                    "NodeOffline", "Uncordoned", "NodeReady",
                ], "\(idle.map(\.reason))")
            #expect(
                idle.first { $0.reason == "NodeOffline" }?.message.contains("in maintenance: not a failure") == true)
        }
    }

    @Test(
        "deleting a node: refused while READY or with VMs placed (named), by non-admins; then gone, heartbeats refused")
    func deleteNode() async throws {
        try await withStore(.sqlite) { store, _ in
            let clock = TestClock()
            let cluster = try await makeCluster(store, clock: clock)
            let busy = try await joinNode(cluster, "busy")
            let idle = try await joinNode(cluster, "idle")
            _ = try await cluster.setSchedulable("idle", false, by: .system)
            _ = try await cluster.createVM(CreateVM(name: "web", spec: kernelSpec()), by: .system)
            await expectLQXError(.permissionDenied) {
                try await cluster.deleteNode("idle", by: Principal(user: "o", role: .operator))
            }
            await expectLQXError(.failedPrecondition, containing: "is READY: drain it first") {
                try await cluster.deleteNode("idle", by: .system)
            }
            await expectLQXError(.notFound, containing: "node nosuch does not exist") {
                try await cluster.deleteNode("nosuch", by: .system)
            }
            // Silent nodes: NOT_READY; the one with a VM is still refused, naming it.
            let started = clock.now
            clock.advance(seconds: 20)
            try await cluster.checkHeartbeats(startedUnixMs: started)
            await expectLQXError(.failedPrecondition, containing: "1 VM placed on it (default/web)") {
                try await cluster.deleteNode("busy", by: .system)
            }
            #expect(try await cluster.node("busy", by: .system).status.phase == .notReady)
            try await cluster.deleteNode("idle", by: .system)
            await expectLQXError(.notFound) { _ = try await cluster.node("idle", by: .system) }
            #expect(try await cluster.repository.nodes().map(\.meta.name) == ["busy"])
            await expectLQXError(.notFound, containing: "has not joined") {
                try await cluster.heartbeat(nodeID: idle.meta.id)
            }
            let events = try await cluster.events(LogQuery(object: idle.meta.id), by: .system)
            #expect(events.last?.reason == "NodeDeleted", "\(events.map(\.reason))")
            _ = busy
        }
    }
}

/// Two control planes (replicas, or one before and after a restart) on one store.
@Suite("cluster core: concurrent creates from two control planes never overcommit")
struct ConcurrentPlacementTests {
    @Test(
        "60 creates of 1 vCPU from two control planes onto 10 free vCPUs: 10 placed, 50 pending",
        arguments: StoreKind.allCases)
    func concurrentCreates(kind: StoreKind) async throws {
        try await withStore(kind) { store, location in
            let clock = TestClock()
            let first = try await makeCluster(store, clock: clock)
            try await joinNode(first, "n1", cpus: 6, memory: 65536)
            try await joinNode(first, "n2", cpus: 4, memory: 65536)
            try await withStore(at: location) { otherStore in
                let second = try await makeCluster(otherStore, clock: clock)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<60 {
                        let cluster = index.isMultiple(of: 2) ? first : second
                        group.addTask {
                            _ = try await cluster.createVM(
                                CreateVM(name: "vm\(index)", spec: kernelSpec()), by: .system)
                        }
                    }
                    try await group.waitForAll()
                }
            }
            let vms = try await first.vms(project: nil, by: .system)
            let nodes = try await first.nodes(by: .system)
            #expect(vms.count == 60)
            for node in nodes {
                let used = vms.filter { $0.status.nodeID == node.meta.id }.count
                #expect(used == node.status.capacity.cpus, "\(node.meta.name): \(used) placed")
            }
            #expect(vms.filter { $0.status.phase == .pending }.count == 50)
        }
    }
}
