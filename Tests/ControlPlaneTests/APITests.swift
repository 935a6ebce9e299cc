import ControlPlane
import ControlPlaneAPI
import ControlPlaneServer
import GRPCCore
import GRPCInProcessTransport
import LQXModel
import LQXTestSupport
import Testing

/// The cluster API over grpc-swift's in-process transport, against a cluster on SQLite.
@Suite("cluster API: projects, tokens, nodes, events over gRPC")
struct APITests {
    /// A cluster with the API served in process; `body` gets a client and the admin token.
    func withAPI(_ body: (GRPCClient<InProcessTransport.Client>, Cluster, String) async throws -> Void) async throws {
        try await withStore(.sqlite) { store, _ in
            let cluster = try await makeCluster(store, clock: TestClock())
            let admin = try #require(try await cluster.bootstrapAdminToken())
            let transport = InProcessTransport()
            let server = GRPCServer(transport: transport.server, services: ControlPlaneServer.services(cluster))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await server.serve() }
                try await withGRPCClient(transport: transport.client) { client in
                    try await body(client, cluster, admin)
                }
                server.beginGracefulShutdown()
                try await group.waitForAll()
            }
        }
    }

    func bearer(_ token: String) -> Metadata { ["authorization": "Bearer \(token)"] }

    /// The status code and the stable `lqx-error-code` of a failed call.
    func failure(_ body: () async throws -> Void) async -> (RPCError.Code, String, String)? {
        do {
            try await body()
            return nil
        } catch let error as RPCError {
            var code = ""
            for entry in error.metadata where entry.key == "lqx-error-code" {
                if case .string(let value) = entry.value { code = value }
            }
            return (error.code, code, error.message)
        } catch {
            return nil
        }
    }

    @Test("a token is required and checked; roles decide; errors carry status, code and message")
    func authentication() async throws {
        try await withAPI { grpc, _, admin in
            let projects = Limiquantix_Compute_V1_ProjectService.Client(wrapping: grpc)
            let tokens = Limiquantix_Compute_V1_TokenService.Client(wrapping: grpc)
            let missing = await failure { _ = try await projects.listProjects(.init()) }
            #expect(missing?.0 == .unauthenticated && missing?.1 == "unauthenticated")
            #expect(missing?.2.contains("authorization: Bearer") == true)
            let wrong = await failure {
                _ = try await projects.listProjects(
                    .init(), metadata: bearer("lqx_0123456789abcdef_" + String(repeating: "0", count: 48)))
            }
            #expect(wrong?.0 == .unauthenticated && wrong?.2 == "the token is not valid")
            let listed = try await projects.listProjects(.init(), metadata: bearer(admin))
            #expect(listed.projects.map(\.metadata.name) == ["default"])
            let viewer = try await tokens.createToken(
                .with {
                    $0.user = "val"
                    $0.role = .viewer
                }, metadata: bearer(admin))
            #expect(viewer.info.role == .viewer && viewer.token.hasPrefix("lqx_"))
            let denied = await failure {
                _ = try await projects.createProject(.with { $0.name = "team" }, metadata: bearer(viewer.token))
            }
            #expect(denied?.0 == .permissionDenied && denied?.1 == "permission_denied")
            let team = try await projects.createProject(
                .with {
                    $0.name = "team"
                    $0.quota = .with { $0.vcpus = 8 }
                }, metadata: bearer(admin))
            #expect(team.quota.vcpus == 8 && !team.quota.hasMemoryMib)
            let bad = await failure {
                _ = try await projects.createProject(.with { $0.name = "Bad Name" }, metadata: bearer(admin))
            }
            #expect(bad?.0 == .invalidArgument && bad?.2.contains("project") == true)
            _ = try await tokens.revokeToken(.with { $0.id = viewer.info.id }, metadata: bearer(admin))
            let revoked = await failure { _ = try await projects.listProjects(.init(), metadata: bearer(viewer.token)) }
            #expect(revoked?.0 == .unauthenticated && revoked?.2 == "the token was revoked")
            let all = try await tokens.listTokens(.init(), metadata: bearer(admin))
            #expect(all.tokens.count == 2 && all.tokens.contains { $0.revoked })
        }
    }

    @Test("HA: the policy round-trips with its defaults; cluster settings; admission refusals carry status and code")
    func haPolicyAndSettings() async throws {
        try await withAPI { grpc, cluster, admin in
            let vms = Limiquantix_Compute_V1_VMService.Client(wrapping: grpc)
            let settings = Limiquantix_Compute_V1_ClusterService.Client(wrapping: grpc)
            try await joinNode(cluster, "a", memory: 4096)
            func spec(_ memory: UInt64) -> Limiquantix_Compute_V1_VMSpec {
                .with {
                    $0.machine = .with {
                        $0.vcpus = 1
                        $0.memoryMib = memory
                        $0.kernel = .with { $0.kernel = "/k" }
                    }
                    $0.ha = .with {
                        $0.enabled = true
                        $0.priority = .high
                    }
                }
            }
            let web = try await vms.createVM(
                .with {
                    $0.name = "web"
                    $0.spec = spec(1024)
                }, metadata: bearer(admin))
            #expect(web.spec.ha.enabled && web.spec.ha.priority == .high)
            #expect(web.spec.ha.maxRestarts == 3 && web.spec.ha.restartWindowSeconds == 3600)
            let current = try await settings.getClusterSettings(.init(), metadata: bearer(admin))
            #expect(current.haTolerateFailures == 0 && current.settings.map(\.key) == ["ha.tolerate-failures"])
            #expect(current.settings.first?.help.contains("admission control") == true)
            let refused = await failure {
                _ = try await settings.setClusterSetting(
                    .with {
                        $0.key = "ha.tolerate-failures"
                        $0.value = "1"
                    }, metadata: bearer(admin))
            }
            #expect(refused?.0 == .resourceExhausted && refused?.1 == "resource_exhausted")
            #expect(
                refused?.2.contains("if node a failed, HA VM default/web would have no node") == true,
                "\(String(describing: refused))")
            let unknown = await failure {
                _ = try await settings.setClusterSetting(.with { $0.key = "ha.nope" }, metadata: bearer(admin))
            }
            #expect(unknown?.0 == .invalidArgument && unknown?.2.contains("no cluster setting ha.nope") == true)
            try await joinNode(cluster, "b", memory: 4096)
            let set = try await settings.setClusterSetting(
                .with {
                    $0.key = "ha.tolerate-failures"
                    $0.value = "1"
                }, metadata: bearer(admin))
            #expect(set.haTolerateFailures == 1 && set.settings.first?.value == "1")
            // 3584 MiB on b beside web on a: if b failed, a (3072 MiB free) could not take it.
            let big = await failure {
                _ = try await vms.createVM(
                    .with {
                        $0.name = "big"
                        $0.spec = spec(3584)
                    }, metadata: bearer(admin))
            }
            #expect(big?.0 == .resourceExhausted && big?.2.contains("HA VM big not started") == true)
            let bad = await failure {
                var tooMany = spec(512)
                tooMany.ha.maxRestarts = 1000
                _ = try await vms.createVM(
                    .with {
                        $0.name = "bad"
                        $0.spec = tooMany
                    }, metadata: bearer(admin))
            }
            #expect(bad?.0 == .invalidArgument && bad?.2 == "ha.max_restarts: 0 to 100 (got 1000)")
        }
    }

    @Test("nodes: join token, list with allocation, cordon, label, taint; events are listed and followed")
    func nodesAndEvents() async throws {
        try await withAPI { grpc, cluster, admin in
            let nodes = Limiquantix_Compute_V1_NodeService.Client(wrapping: grpc)
            let events = Limiquantix_Compute_V1_EventService.Client(wrapping: grpc)
            let join = try await nodes.createJoinToken(.with { $0.ttlSeconds = 60 }, metadata: bearer(admin))
            #expect(join.token.hasPrefix("lqxjoin_"))
            let node = try await cluster.registerNode(
                joinToken: join.token,
                NodeRegistration(
                    name: "n1", address: "127.0.0.1:7443", capacity: Node.Resources(cpus: 4, memoryMiB: 8192)))
            try await cluster.heartbeat(nodeID: node.meta.id)
            _ = try await cluster.createVM(CreateVM(name: "web", spec: kernelSpec(cpus: 2, memory: 1024)), by: .system)
            let listed = try await nodes.listNodes(.init(), metadata: bearer(admin))
            let n1 = try #require(listed.nodes.first)
            #expect(n1.status.phase == .ready && n1.status.vmCount == 1)
            #expect(n1.status.allocated.cpus == 2 && n1.status.allocated.memoryMib == 1024)
            #expect(n1.status.capacity.cpus == 4 && n1.status.allocatable.cpus == 16)  // 4× CPU overcommit by default
            let cordoned = try await nodes.cordonNode(.with { $0.name = "n1" }, metadata: bearer(admin))
            #expect(cordoned.spec.unschedulable)
            let labelled = try await nodes.labelNode(
                .with {
                    $0.name = "n1"
                    $0.key = "zone"
                    $0.value = "a"
                }, metadata: bearer(admin))
            #expect(labelled.spec.labels == ["zone": "a"])
            let tainted = try await nodes.taintNode(
                .with {
                    $0.name = "n1"
                    $0.key = "gpu"
                    $0.value = "true"
                    $0.effect = .noSchedule
                }, metadata: bearer(admin))
            #expect(tainted.spec.taints.map(\.key) == ["gpu"])
            let missing = await failure {
                _ = try await nodes.getNode(.with { $0.name = "ghost" }, metadata: bearer(admin))
            }
            #expect(missing?.0 == .notFound && missing?.2 == "node ghost does not exist")
            let history = try await events.listEvents(.with { $0.node = "n1" }, metadata: bearer(admin))
            #expect(history.events.map(\.reason) == ["Joined", "NodeReady", "Cordoned", "Labelled", "Tainted"])
            let vmEvents = try await events.listEvents(.with { $0.vm = "web" }, metadata: bearer(admin))
            #expect(vmEvents.events.map(\.reason) == ["Created", "Scheduled"])
            // Following: the history, then what happens next.
            try await events.watchEvents(.with { $0.vm = "web" }, metadata: bearer(admin)) { response in
                var reasons: [String] = []
                for try await event in response.messages {
                    reasons.append(event.reason)
                    if reasons.count == 2 {
                        _ = try await cluster.setRunState("default", "web", .stopped, by: .system)
                    }
                    if reasons.count == 3 { break }
                }
                #expect(reasons == ["Created", "Scheduled", "SpecChanged"])
            }
        }
    }

    @Test(
        "VM lists come in pages ordered by project and name; creates meanwhile neither repeat nor shift; bad paging refused"
    )
    func paging() async throws {
        try await withAPI { grpc, cluster, admin in
            let vms = Limiquantix_Compute_V1_VMService.Client(wrapping: grpc)
            for index in 0..<7 {
                _ = try await cluster.createVM(
                    CreateVM(name: "vm-\(index)", spec: kernelSpec()), by: .system)
            }
            var names: [String] = []
            var request = Limiquantix_Compute_V1_ListVMsRequest.with { $0.pageSize = 3 }
            var pages = 0
            while true {
                let reply = try await vms.listVMs(request, metadata: bearer(admin))
                pages += 1
                names += reply.vms.map(\.metadata.name)
                if pages == 1 {
                    // Before the current page and after it: only the later one is listed.
                    _ = try await cluster.createVM(CreateVM(name: "vm-0a", spec: kernelSpec()), by: .system)
                    _ = try await cluster.createVM(CreateVM(name: "vm-9", spec: kernelSpec()), by: .system)
                }
                guard !reply.nextPageToken.isEmpty else { break }
                request.pageToken = reply.nextPageToken
            }
            #expect(names == ["vm-0", "vm-1", "vm-2", "vm-3", "vm-4", "vm-5", "vm-6", "vm-9"])
            #expect(pages == 3)
            let all = try await vms.listVMs(.init(), metadata: bearer(admin))
            #expect(all.vms.count == 9 && all.nextPageToken.isEmpty)
            let tooLarge = await failure {
                _ = try await vms.listVMs(.with { $0.pageSize = 5000 }, metadata: bearer(admin))
            }
            #expect(tooLarge?.1 == "invalid_spec" && tooLarge?.2.contains("page_size") == true)
            let garbage = await failure {
                _ = try await vms.listVMs(.with { $0.pageToken = "not a token" }, metadata: bearer(admin))
            }
            #expect(garbage?.1 == "invalid_spec" && garbage?.2.contains("page_token") == true)

            // Nodes page the same way, by name, each with what its VMs take.
            let nodes = Limiquantix_Compute_V1_NodeService.Client(wrapping: grpc)
            for name in ["n3", "n1", "n5", "n2", "n4"] { try await joinNode(cluster, name) }
            var nodeNames: [String] = []
            var nodePage = Limiquantix_Compute_V1_ListNodesRequest.with { $0.pageSize = 2 }
            var nodePages = 0
            var vmCount: UInt32 = 0
            while true {
                let reply = try await nodes.listNodes(nodePage, metadata: bearer(admin))
                nodePages += 1
                nodeNames += reply.nodes.map(\.metadata.name)
                vmCount += reply.nodes.reduce(0) { $0 + $1.status.vmCount }
                guard !reply.nextPageToken.isEmpty else { break }
                nodePage.pageToken = reply.nextPageToken
            }
            #expect(nodeNames == ["n1", "n2", "n3", "n4", "n5"] && nodePages == 3)
            #expect(vmCount == 9, "every VM placed, counted once on its node")
            let nodesTooLarge = await failure {
                _ = try await nodes.listNodes(.with { $0.pageSize = 1001 }, metadata: bearer(admin))
            }
            #expect(nodesTooLarge?.1 == "invalid_spec" && nodesTooLarge?.2.contains("page_size") == true)
        }
    }
}
