import ControlPlaneAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel
import LQXServer
import LQXTestSupport
import NodeAPI
import Testing

/// The real binaries: `lqx-controlplane` on SQLite and `lqx-node` daemons (on libvirt's test
/// driver: joining needs no VM) joining with tokens over TLS, heartbeating with mutual TLS, and
/// the node API refusing every client without a cluster certificate.
@Suite("nodes join the control plane", .serialized)
struct ClusterJoinTests {
    /// Polls the node list until `name` is in `phase` (or 15 s pass).
    func waitFor(
        _ name: String, _ phase: Limiquantix_Compute_V1_NodePhase, _ cp: ControlPlaneProcess, token: String
    ) async throws -> Limiquantix_Compute_V1_Node? {
        let deadline = ContinuousClock.now + .seconds(15)
        let metadata = bearer(token)
        while ContinuousClock.now < deadline {
            let nodes = try await cp.nodeService { try await $0.listNodes(.init(), metadata: metadata).nodes }
            if let node = nodes.first(where: { $0.metadata.name == name }), node.status.phase == phase { return node }
            try await Task.sleep(for: .milliseconds(100))
        }
        return nil
    }

    @Test("first start: CA, certificate and admin token written 0600; nodes join, heartbeat, go NOT_READY and back")
    func joinAndHeartbeat() async throws {
        let (root, cp) = try await startedControlPlane()
        defer { tearDown(root, cp) }
        for file in ["pki/ca.key", "pki/controlplane.key", "admin.token"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: cp.stateDirectory + "/" + file)
            #expect((attributes[.posixPermissions] as? Int) == 0o600, "\(file)")
        }
        let admin = try cp.adminToken
        let metadata = bearer(admin)
        let issued = try await cp.nodeService {
            try await $0.createJoinToken(.with { $0.ttlSeconds = 600 }, metadata: metadata)
        }
        #expect(issued.caSha256 == cp.fingerprint)
        #expect(issued.token.hasPrefix("lqxjoin_"))

        let port = Daemon.freePort()
        var node = try startNode(root, "node-a", port: port, controlPlane: cp, token: issued.token)
        guard let line = await node.line(), line.hasPrefix("lqx-node listening") else {
            Issue.record("lqx-node did not start: \(node.log)")
            return
        }
        let ready = try await waitFor("node-a", .ready, cp, token: admin)
        #expect(ready != nil, "node-a never READY: \(node.log) \(cp.daemon.log)")
        #expect(ready?.status.address == "127.0.0.1:\(port)")
        #expect((ready?.status.capacity.cpus ?? 0) > 0)
        let membership = root + "/node-a/state/cluster"
        for file in ["node.key", "membership.json"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: membership + "/" + file)
            #expect((attributes[.posixPermissions] as? Int) == 0o600, "\(file)")
        }

        // The token was single-use.
        let second = try startNode(root, "node-b", port: Daemon.freePort(), controlPlane: cp, token: issued.token)
        #expect(await second.child.exit(timeout: .seconds(20)) == 1)
        #expect(second.log.contains("already used"), "\(second.log)")

        // Killed, the node goes NOT_READY after the grace period; restarted without a token it
        // reuses its identity and is READY again.
        node.kill()
        #expect(try await waitFor("node-a", .notReady, cp, token: admin) != nil)
        node = try startNode(root, "node-a", port: port, controlPlane: cp, token: nil)
        defer { node.kill() }
        #expect(await node.line()?.hasPrefix("lqx-node listening") == true, "\(node.log)")
        let back = try await waitFor("node-a", .ready, cp, token: admin)
        #expect(back?.metadata.id == ready?.metadata.id)
        let nodes = try await cp.nodeService { try await $0.listNodes(.init(), metadata: metadata).nodes }
        #expect(nodes.count == 1)

        // Decommissioned: refused while READY; stopped and NOT_READY, `lqx node delete` removes it.
        let lqx = ["--server", cp.api.description, "--token", admin, "--ca", cp.caFile]
        let refused = try await Command.output(Command.binary("lqx"), lqx + ["node", "delete", "node-a"])
        #expect(refused.status == 255 && refused.stderr.contains("drain it first"), "\(refused)")
        node.kill()
        #expect(try await waitFor("node-a", .notReady, cp, token: admin) != nil)
        let deleted = try await Command.output(Command.binary("lqx"), lqx + ["node", "delete", "node-a"])
        #expect(deleted.status == 0 && deleted.stdout == "node node-a deleted\n", "\(deleted)")
        let left = try await cp.nodeService { try await $0.listNodes(.init(), metadata: metadata).nodes }
        #expect(left.isEmpty)
    }

    @Test("a wrong CA fingerprint, a malformed or expired join token: refused, nothing joined, token kept")
    func badJoins() async throws {
        let (root, cp) = try await startedControlPlane()
        defer { tearDown(root, cp) }
        let admin = try cp.adminToken
        let metadata = bearer(admin)
        let issued = try await cp.nodeService { try await $0.createJoinToken(.init(), metadata: metadata) }

        let wrongPin = String(repeating: "ab", count: 32)
        let pinned = try startNode(
            root, "pinned", port: Daemon.freePort(), controlPlane: cp, token: issued.token, pin: wrongPin)
        #expect(await pinned.child.exit(timeout: .seconds(20)) == 1)
        #expect(pinned.log.contains("not joining"), "\(pinned.log)")

        let malformed = try startNode(root, "malformed", port: Daemon.freePort(), controlPlane: cp, token: "nope")
        #expect(await malformed.child.exit(timeout: .seconds(20)) == 1)
        #expect(malformed.log.contains("malformed"), "\(malformed.log)")

        let shortLived = try await cp.nodeService {
            try await $0.createJoinToken(.with { $0.ttlSeconds = 1 }, metadata: metadata)
        }
        try await Task.sleep(for: .milliseconds(1500))
        let late = try startNode(root, "late", port: Daemon.freePort(), controlPlane: cp, token: shortLived.token)
        #expect(await late.child.exit(timeout: .seconds(20)) == 1)
        #expect(late.log.contains("expired"), "\(late.log)")

        // The token survived both refusals: it still joins a node.
        let good = try startNode(root, "good", port: Daemon.freePort(), controlPlane: cp, token: issued.token)
        defer { good.kill() }
        #expect(await good.line()?.hasPrefix("lqx-node listening") == true, "\(good.log)")
        let nodes = try await cp.nodeService { try await $0.listNodes(.init(), metadata: metadata).nodes }
        #expect(nodes.map(\.metadata.name) == ["good"])

        // Without a bearer token, no join tokens are issued.
        await expectLQXError(.unauthenticated) {
            _ = try await cp.nodeService { try await $0.createJoinToken(.init()) }
        }
    }

    /// The JSON form of unary calls, exactly as curl sends it.
    func jsonForm(_ cp: ControlPlaneProcess, admin: String) async throws {
        func curl(_ path: String, token: String?, body: String = "{}", type: String = "application/json") async throws
            -> (Int, String)
        {
            var arguments = [
                "-s", "-o", "-", "-w", "\n%{http_code}", "--cacert", cp.caFile, "-X", "POST",
                "https://\(cp.https)\(path)", "-H", "Content-Type: \(type)", "-d", body,
            ]
            if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
            let result = try await Command.output("/usr/bin/curl", arguments)
            let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
        }
        guard FileManager.default.fileExists(atPath: "/usr/bin/curl") else {
            Issue.record("curl is not installed (scripts/setup.sh installs it)")
            return
        }
        let nodes = "/limiquantix.compute.v1.NodeService/ListNodes"
        let (status, body) = try await curl(nodes, token: admin)
        #expect(
            status == 200 && body.contains("\"nodes\"") && body.contains("\"NODE_PHASE_READY\""), "\(status) \(body)")
        let (anonymous, refusal) = try await curl(nodes, token: nil)
        #expect(anonymous == 401 && refusal.contains("\"code\":\"unauthenticated\""), "\(anonymous) \(refusal)")
        let (missing, _) = try await curl("/limiquantix.compute.v1.NodeService/Nope", token: admin)
        #expect(missing == 404)
        let (bad, invalid) = try await curl(
            "/limiquantix.compute.v1.VMService/GetVM", token: admin, body: "{\"name\": 7")
        #expect(bad == 400 && invalid.contains("invalid_argument"), "\(bad) \(invalid)")
        let (unknown, notFound) = try await curl(
            "/limiquantix.compute.v1.VMService/GetVM", token: admin, body: "{\"name\": \"nope\"}")
        #expect(unknown == 404 && notFound.contains("nope"), "\(unknown) \(notFound)")

        // Wrong tokens: 20 from one address, then that address is refused (its valid token too,
        // over gRPC as well) until a failure's worth of time (3 s) has passed.
        var failures = 0
        var limited = (0, "")
        while failures <= 25 {
            let (code, answer) = try await curl(nodes, token: "lqx_0123456789abcdef_wrong")
            guard code == 401 else {
                limited = (code, answer)
                break
            }
            failures += 1
        }
        #expect(failures == 20)
        #expect(
            limited.0 == 429 && limited.1.contains("too many failed authentications from 127.0.0.1"), "\(limited)")
        await expectLQXError(.resourceExhausted) {
            _ = try await cp.nodeService { try await $0.listNodes(.init(), metadata: bearer(admin)) }
        }
        try await Task.sleep(for: .milliseconds(3_300))
        let (again, _) = try await curl(nodes, token: admin)
        #expect(again == 200)
        let (form, _) = try await curl(nodes, token: admin, type: "application/x-www-form-urlencoded")
        #expect(form == 415)
        let health = try await Command.output(
            "/usr/bin/curl", ["-s", "--cacert", cp.caFile, "https://\(cp.https)/health"])
        #expect(health.stdout.contains("\"ok\""), "\(health)")
    }

    @Test("a joined node's API admits only cluster certificates, and never another node's")
    func nodeAPIMutualTLS() async throws {
        let (root, cp) = try await startedControlPlane()
        defer { tearDown(root, cp) }
        let admin = try cp.adminToken
        let metadata = bearer(admin)
        var nodes: [Daemon] = []
        defer { for node in nodes { node.kill() } }
        var ports: [Int] = []
        for name in ["one", "two"] {
            let token = try await cp.nodeService { try await $0.createJoinToken(.init(), metadata: metadata) }.token
            let port = Daemon.freePort()
            let node = try startNode(root, name, port: port, controlPlane: cp, token: token)
            nodes.append(node)
            ports.append(port)
            #expect(await node.line()?.hasPrefix("lqx-node listening") == true, "\(node.log)")
        }
        let address = HostPort(host: "127.0.0.1", port: ports[0])
        func info(_ security: ClientSecurity) async throws -> String {
            try await ClientTransport.with(address, security: security) { client in
                try await Limiquantix_Node_V1_Node.Client(wrapping: client).getNodeInfo(
                    .init(), options: ClientTransport.failFast
                ).hostname
            }
        }
        // The control plane's certificate is let in.
        let cpState = cp.stateDirectory + "/pki"
        #expect(
            try await info(
                .mutualTLS(
                    certificateChain: cpState + "/controlplane.crt", privateKey: cpState + "/controlplane.key",
                    caFile: cp.caFile)) == "one")
        // No TLS, TLS without a client certificate, another node's certificate: refused.
        await expectLQXError(.unavailable) { _ = try await info(.plaintext) }
        await expectLQXError(.unavailable) { _ = try await info(.tls(caFile: cp.caFile)) }
        let other = root + "/two/state/cluster"
        await expectLQXError(.permissionDenied) {
            _ = try await info(
                .mutualTLS(certificateChain: other + "/node.crt", privateKey: other + "/node.key", caFile: cp.caFile))
        }
        try await operatorCertificates(cp, admin: admin, root: root, node: address)
        // A node cannot heartbeat in another's name.
        await expectLQXError(.permissionDenied) {
            _ = try await ClientTransport.with(
                cp.nodes,
                security: .mutualTLS(
                    certificateChain: other + "/node.crt", privateKey: other + "/node.key", caFile: cp.caFile)
            ) { client in
                let data = try Data(contentsOf: URL(fileURLWithPath: root + "/one/state/cluster/membership.json"))
                let id = (try JSONSerialization.jsonObject(with: data) as? [String: Any])?["nodeID"] as? String
                return try await Limiquantix_Compute_V1_NodeAgentService.Client(wrapping: client).heartbeat(
                    .with { $0.nodeID = id ?? "" })
            }
        }
        // Heartbeats on the API port (no client certificate) are refused too.
        await expectLQXError(.unauthenticated) {
            _ = try await ClientTransport.with(cp.api, security: .tls(caFile: cp.caFile)) { client in
                try await Limiquantix_Compute_V1_NodeAgentService.Client(wrapping: client).heartbeat(
                    .with { $0.nodeID = "x" })
            }
        }
        try await jsonForm(cp, admin: admin)
        let health = try await httpGet(cp.metrics, "/health")
        #expect(health.status == 200)
        let exposition = try await httpGet(cp.metrics, "/metrics")
        #expect(exposition.body.contains("lqx_controlplane_nodes{phase=\"READY\"}"))
    }

    /// `lqx node operator-cert create` → a key made here and a certificate naming the admin, with
    /// which `lqx --node … --node-credentials DIR` calls the joined node; plaintext gets a hint;
    /// a viewer gets none; a TTL past 30 days is refused; every issue is audited.
    func operatorCertificates(_ cp: ControlPlaneProcess, admin: String, root: String, node: HostPort) async throws {
        let lqx = Command.binary("lqx")
        let server = ["--server", cp.api.description, "--ca", cp.caFile]
        let out = root + "/operator"
        let created = try await Command.output(
            lqx, server + ["--token", admin, "node", "operator-cert", "create", "--ttl", "1h", "--out", out])
        #expect(created.status == 0 && created.stdout == out + "\n", "\(created)")
        #expect(created.stderr.contains("operator:admin, valid until"), "\(created)")
        let mode = try FileManager.default.attributesOfItem(atPath: out + "/operator.key")[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let certificate = try PKIFiles.certificate(
            pem: try String(contentsOfFile: out + "/operator.crt", encoding: .utf8))
        #expect(ClusterIdentity(certificate: certificate) == .operator("admin"))
        let lifetime = certificate.notValidAfter.timeIntervalSince(certificate.notValidBefore)
        #expect(lifetime == 3600 + 300, "valid \(lifetime) s")

        let info = try await Command.output(
            lqx, ["--node", node.description, "--node-credentials", out, "node", "info", "-o", "json"])
        #expect(info.status == 0 && info.stdout.contains("\"hostname\":\"one\""), "\(info)")
        let plaintext = try await Command.output(lqx, ["--node", node.description, "node", "info"])
        #expect(plaintext.status != 0 && plaintext.stderr.contains("--node-credentials DIR"), "\(plaintext)")
        let missing = try await Command.output(
            lqx, ["--node", node.description, "--node-credentials", root + "/nowhere", "node", "info"])
        #expect(missing.status != 0 && missing.stderr.contains("operator.crt is missing"), "\(missing)")

        let viewer = try await cp.tokens { client in
            try await client.createToken(
                .with {
                    $0.user = "watcher"
                    $0.role = .viewer
                }, metadata: bearer(admin)
            ).token
        }
        let refused = try await Command.output(
            lqx, server + ["--token", viewer, "node", "operator-cert", "create", "--out", root + "/viewer"])
        #expect(refused.status != 0 && refused.stderr.contains("needs the admin role"), "\(refused)")
        #expect(!FileManager.default.fileExists(atPath: root + "/viewer/operator.key"))
        let tooLong = try await Command.output(
            lqx, server + ["--token", admin, "node", "operator-cert", "create", "--ttl", "31d", "--out", out])
        #expect(tooLong.status != 0 && tooLong.stderr.contains("at most 30 days"), "\(tooLong)")
        let audit = try await cp.events { try await $0.listAudit(.init(), metadata: bearer(admin)).records }
        let fingerprint = PKIFiles.fingerprint(of: certificate)
        #expect(
            audit.contains {
                $0.action == "operator-certificate" && $0.user == "admin" && $0.result == "sha256 \(fingerprint)"
            }, "\(audit)")
    }

    @Test("a control plane killed with -9 after acknowledging a create (its node frozen) finishes it once restarted")
    func restartMidCreate() async throws {
        let ports = (api: Daemon.freePort(), nodes: Daemon.freePort())
        let (root, first) = try await startedControlPlane(ports: ports)
        var cp = first
        defer { tearDown(root, cp) }
        let admin = try cp.adminToken
        let metadata = bearer(admin)
        let token = try await cp.nodeService { try await $0.createJoinToken(.init(), metadata: metadata).token }
        let node = try startNode(root, "node-a", port: Daemon.freePort(), controlPlane: cp, token: token)
        defer { node.kill() }
        #expect(await node.line()?.hasPrefix("lqx-node listening") == true, "\(node.log)")
        #expect(try await waitFor("node-a", .ready, cp, token: admin) != nil, "\(node.log)")
        func create(_ name: String) async throws -> Limiquantix_Compute_V1_VM {
            try await cp.client { client in
                try await Limiquantix_Compute_V1_VMService.Client(wrapping: client).createVM(
                    .with {
                        $0.name = name
                        $0.spec.machine = .with {
                            $0.vcpus = 1
                            $0.memoryMib = 128
                            $0.kernel = .with { $0.kernel = "/bin/true" }
                        }
                    }, metadata: metadata)
            }
        }
        // A first VM naming the kernel waits for the node to answer whether it has it (the next
        // heartbeat round), then is placed by itself.
        let warm = try await create("warm")
        #expect(
            warm.status.node == ""
                && warm.status.conditions.first?.message.contains("not yet checked /bin/true") == true)
        var placed = warm
        for _ in 0..<50 where placed.status.node.isEmpty {
            try await Task.sleep(for: .milliseconds(100))
            placed = try await cp.client { client in
                try await Limiquantix_Compute_V1_VMService.Client(wrapping: client).getVM(
                    .with { $0.name = "warm" }, metadata: metadata)
            }
        }
        #expect(placed.status.node == "node-a", "\(placed.status)")
        // The node is frozen while the create is acknowledged and the control plane dies: the
        // first control plane cannot have defined the VM there, the restarted one must.
        node.child.signal(SIGSTOP)
        let created = try await create("survivor")
        #expect(created.status.node == "node-a")
        try await Task.sleep(for: .milliseconds(300))
        cp.daemon.kill()
        cp = try await ControlPlaneProcess.start(root, ports: ports)
        node.child.signal(SIGCONT)
        let restarted = cp
        func survivor() async throws -> Limiquantix_Compute_V1_VM {
            try await restarted.client { client in
                try await Limiquantix_Compute_V1_VMService.Client(wrapping: client).getVM(
                    .with { $0.name = "survivor" }, metadata: metadata)
            }
        }
        var vm = try await survivor()
        for _ in 0..<150 where vm.status.phase != .running {
            try await Task.sleep(for: .milliseconds(200))
            vm = try await survivor()
        }
        #expect(vm.status.phase == .running, "\(vm.status) \(cp.daemon.log.suffix(3000)) \(node.log.suffix(3000))")
        // The same placement (epoch 1): the restarted control plane continued, it did not start over.
        #expect(vm.metadata.id == created.metadata.id && vm.status.node == "node-a" && vm.status.epoch == 1)
    }
}
