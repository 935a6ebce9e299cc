import ControlPlaneAPI
import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel
import LQXServer
import LQXTestSupport
import LQXTypes
import NodeTestSupport
import Testing

/// The cluster end to end on real parts: `lqx-controlplane` (SQLite) and two `lqx-node`
/// daemons joined with tokens on this host's libvirtd, the test guest with its agent booted
/// through the control plane, exec and file transfer relayed control plane → node → agent.
@Suite("cluster end to end (libvirtd, guests)", .serialized)
struct ClusterSystemTests {
    typealias VMs = Limiquantix_Compute_V1_VMService.Client<HTTP2ClientTransport.Posix>

    func vms<T: Sendable>(_ cp: ControlPlaneProcess, _ body: @Sendable @escaping (VMs) async throws -> T)
        async throws -> T
    {
        try await ClientTransport.with(cp.api, security: .tls(caFile: cp.caFile)) { client in
            try await body(VMs(wrapping: client))
        }
    }

    /// Runs `argv` in the VM through the control plane: (exit code, stdout).
    func exec(_ cp: ControlPlaneProcess, token: String, _ vm: String, _ argv: [String]) async throws -> (Int32?, String)
    {
        let metadata = bearer(token)
        return try await vms(cp) { client in
            try await client.exec(
                metadata: metadata, options: ClientTransport.failFast,
                requestProducer: { writer in
                    try await writer.write(
                        .with {
                            $0.start = .with {
                                $0.vm.name = vm
                                $0.request.argv = argv
                            }
                        })
                },
                onResponse: { response in
                    var out = Data()
                    var code: Int32?
                    for try await output in response.messages {
                        switch output.kind {
                        case .stdout(let data): out.append(data)
                        case .exit(let exit):
                            if case .exitCode(let value)? = exit.status { code = value }
                        default: break
                        }
                    }
                    return (code, String(decoding: out, as: UTF8.self))
                })
        }
    }

    /// Creates a VM booting the test guest's kernel through the control plane (its domain
    /// recorded for the test script's cleanup).
    func createGuest(
        _ cp: ControlPlaneProcess, token: String, _ name: String, kernel: String, initrd: String, memory: UInt64,
        placement: Limiquantix_Compute_V1_Placement = .init(), disks: [String] = []
    ) async throws -> Limiquantix_Compute_V1_VM {
        let metadata = bearer(token)
        let vm = try await vms(cp) { client in
            try await client.createVM(
                .with {
                    $0.name = name
                    $0.spec.placement = placement
                    $0.spec.machine = .with {
                        $0.vcpus = 1
                        $0.memoryMib = memory
                        $0.kernel = .with {
                            $0.kernel = kernel
                            $0.initrd = initrd
                            $0.cmdline = TestGuest.cmdline
                        }
                        $0.disks = disks.map { path in .with { $0.path = path } }
                    }
                }, metadata: metadata)
        }
        TestRun.record(domain: vm.metadata.id)
        return vm
    }

    func waitFor(
        _ cp: ControlPlaneProcess, token: String, _ name: String, timeout: Duration = .seconds(180),
        _ condition: @Sendable (Limiquantix_Compute_V1_VM) -> Bool
    ) async throws -> Limiquantix_Compute_V1_VM? {
        let metadata = bearer(token)
        let deadline = ContinuousClock.now + timeout
        var last: Limiquantix_Compute_V1_VM?
        while ContinuousClock.now < deadline {
            last = try? await vms(cp) { try await $0.getVM(.with { $0.name = name }, metadata: metadata) }
            if let last, condition(last) { return last }
            try await Task.sleep(for: .milliseconds(250))
        }
        Issue.record("\(name) did not get there: \(last.map { "\($0.status)" } ?? "no VM")")
        return nil
    }

    /// The control plane's telemetry: the latest sample in `vm get`, a history for `--since`, the
    /// series on /metrics labelled vm/project/node — scraped by a real Prometheus and read back
    /// through its query API.
    func telemetry(_ cp: ControlPlaneProcess, admin: String, root: String, nodeOf node: String) async throws {
        let metadata = bearer(admin)
        var samples = 0
        for _ in 0..<40 where samples < 2 {
            let history = try await vms(cp) { client in
                try await client.getTelemetry(
                    .with {
                        $0.vm.name = "web"
                        $0.sinceSeconds = 120
                    }, metadata: metadata)
            }
            samples = history.samples.count
            try await Task.sleep(for: .milliseconds(500))
        }
        #expect(samples >= 2, "history of web: \(samples) samples")
        let vm = try await vms(cp) { try await $0.getVM(.with { $0.name = "web" }, metadata: metadata) }
        #expect(vm.status.usage.memoryTotalBytes > 100 << 20, "\(vm.status.usage)")
        let exposition = try await httpGet(cp.metrics, "/metrics").body
        let series = "lqx_vm_memory_total_bytes{vm=\"web\",project=\"default\",node=\"\(node)\"}"
        #expect(exposition.contains(series), "\(exposition.suffix(1500))")
        guard FileManager.default.fileExists(atPath: "/usr/bin/prometheus") else {
            if ProcessInfo.processInfo.environment["LQX_REQUIRE_LIBVIRT"] != nil {
                Issue.record("prometheus is not installed (scripts/setup.sh installs it)")
            }
            return
        }
        let port = Daemon.freePort()
        let config = root + "/prometheus.yml"
        try """
        global:
          scrape_interval: 1s
        scrape_configs:
          - job_name: limiquantix
            static_configs:
              - targets: ["\(cp.metrics)"]
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let prometheus = try Daemon(
            "/usr/bin/prometheus",
            [
                "--config.file=\(config)", "--storage.tsdb.path=\(root)/prometheus",
                "--web.listen-address=127.0.0.1:\(port)",
            ], logPath: root + "/prometheus.log")
        defer { prometheus.kill() }
        let query = "/api/v1/query?query=lqx_vm_memory_total_bytes%7Bvm%3D%22web%22%7D"
        var answer = ""
        for _ in 0..<60 {
            answer = (try? await httpGet("127.0.0.1:\(port)", query).body) ?? ""
            if answer.contains("\"project\":\"default\"") { break }
            try await Task.sleep(for: .milliseconds(500))
        }
        #expect(
            answer.contains("\"vm\":\"web\"") && answer.contains("\"node\":\"\(node)\""),
            "\(answer) \(prometheus.log.suffix(1000))")
        let cli = try await Command.output(
            Command.binary("lqx"),
            ["--server", cp.api.description, "--token", admin, "--ca", cp.caFile, "metrics", "web", "--since", "2m"])
        #expect(cli.status == 0 && cli.stdout.contains("CPU%"), "\(cli)")
    }

    /// The same path through the `lqx` binary: login pinning the CA, lists, exec with its exit
    /// status, cp both ways, metrics, explain, audit.
    func throughCLI(_ cp: ControlPlaneProcess, admin: String, root: String) async throws {
        setenv("XDG_CONFIG_HOME", root + "/config", 1)
        defer { unsetenv("XDG_CONFIG_HOME") }
        func lqx(_ arguments: [String]) async throws -> CommandResult {
            try await Command.output(Command.binary("lqx"), arguments)
        }
        let wrongPin = try await lqx([
            "login", cp.api.description, "--token", admin, "--ca-sha256", String(repeating: "0", count: 64),
        ])
        #expect(wrongPin.status == 255 && wrongPin.stderr.contains("not saved"), "\(wrongPin)")
        let login = try await lqx(["login", cp.api.description, "--token", admin, "--ca-sha256", cp.fingerprint])
        #expect(login.status == 0, "\(login)")
        let mode = try FileManager.default.attributesOfItem(atPath: root + "/config/limiquantix/config")[
            .posixPermissions]
        #expect(mode as? Int == 0o600)
        let nodes = try await lqx(["node", "list", "-o", "json"])
        #expect(
            nodes.status == 0 && nodes.stdout.components(separatedBy: "\"NODE_PHASE_READY\"").count == 3, "\(nodes)")
        let list = try await lqx(["vm", "list"])
        #expect(list.stdout.contains("web") && list.stdout.contains("RUNNING"), "\(list)")
        let failing = try await lqx(["exec", "web", "--", "sh", "-c", "echo out; exit 3"])
        #expect(failing.status == 3 && failing.stdout == "out\n", "\(failing)")
        let local = root + "/cli-payload", back = root + "/cli-back"
        try Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 * 7) }).write(to: URL(fileURLWithPath: local))
        let up = try await lqx(["cp", "--no-progress", local, "db:/tmp/cli-payload"])
        #expect(up.status == 0, "\(up)")
        let down = try await lqx(["cp", "--no-progress", "db:/tmp/cli-payload", back])
        #expect(down.status == 0, "\(down)")
        #expect(FileManager.default.contentsEqual(atPath: local, andPath: back))
        let metrics = try await lqx(["metrics", "web", "-o", "json"])
        #expect(metrics.status == 0 && metrics.stdout.contains("\"total_bytes\""), "\(metrics)")
        let explain = try await lqx(["vm", "explain", "web"])
        #expect(explain.status == 0 && explain.stdout.contains("nodes fit"), "\(explain)")
        let audit = try await lqx(["audit", "--vm", "web"])
        #expect(audit.stdout.contains("exec") && audit.stdout.contains("exit 3"), "\(audit)")
        // HA policy and admission control through the CLI (two real nodes with room to spare).
        let settings = try await lqx(["cluster", "get"])
        #expect(settings.status == 0 && settings.stdout.contains("ha.tolerate-failures  0"), "\(settings)")
        let haOn = try await lqx(["vm", "set", "web", "--ha=true", "--ha-priority", "high"])
        #expect(haOn.status == 0 && haOn.stdout.contains("HA on (priority high, 3 restarts per 3600 s)"), "\(haOn)")
        let shown = try await lqx(["vm", "get", "web"])
        #expect(shown.stdout.contains("ha:        on, priority high, at most 3 restarts in 3600 s"), "\(shown)")
        let one = try await lqx(["cluster", "set", "ha.tolerate-failures", "1"])
        #expect(one.status == 0 && one.stdout == "ha.tolerate-failures = 1\n", "\(one)")
        // Both nodes failing leaves web nowhere.
        let two = try await lqx(["cluster", "set", "ha.tolerate-failures", "2"])
        #expect(
            two.status == 255 && two.stderr.contains("if nodes") && two.stderr.contains("[resource_exhausted]"),
            "\(two)")
        let badPriority = try await lqx(["vm", "set", "web", "--ha-priority", "urgent"])
        #expect(badPriority.status != 0 && badPriority.stderr.contains("--ha-priority is one of"), "\(badPriority)")
        #expect(try await lqx(["cluster", "set", "ha.tolerate-failures", "0"]).status == 0)
        let haOff = try await lqx(["vm", "set", "web", "--ha=false"])
        #expect(haOff.status == 0 && haOff.stdout.contains("HA off"), "\(haOff)")
        // Several replicas: one that cannot be reached is skipped.
        let replicas = try await lqx(["--server", "127.0.0.1:9,\(cp.api.description)", "--ca", cp.caFile, "vm", "list"])
        #expect(replicas.status == 0 && replicas.stdout.contains("web"), "\(replicas)")
        let unknown = try await lqx(["vm", "get", "nope"])
        #expect(unknown.status == 255 && unknown.stderr.contains("[not_found]"), "\(unknown)")
    }

    /// Placement through real nodes (their heartbeats, capacity and answers about paths): pack
    /// goes to the busier node, hard anti-affinity separates, a NoSchedule taint repels, a
    /// kernel no node has leaves the VM PENDING with the reason. Each VM is deleted after.
    func placements(
        _ cp: ControlPlaneProcess, admin: String, kernel: String, initrd: String, busy: String, empty: String,
        ids: inout [String]
    ) async throws {
        let metadata = bearer(admin)
        let lqx = ["--server", cp.api.description, "--token", admin, "--ca", cp.caFile]
        func create(_ name: String, kernel: String = kernel, _ placement: Limiquantix_Compute_V1_Placement)
            async throws -> Limiquantix_Compute_V1_VM
        {
            try await createGuest(
                cp, token: admin, name, kernel: kernel, initrd: initrd, memory: 128, placement: placement)
        }
        var names: [String] = []
        func placed(_ name: String, _ placement: Limiquantix_Compute_V1_Placement) async throws -> String {
            ids.append(try await create(name, placement).metadata.id)
            names.append(name)
            return try await waitFor(cp, token: admin, name, timeout: .seconds(30)) { !$0.status.node.isEmpty }?
                .status.node ?? ""
        }
        #expect(try await placed("packed", .with { $0.strategy = .pack }) == busy)
        let apart = Limiquantix_Compute_V1_Placement.with {
            $0.strategy = .pack
            $0.antiAffinity = [.with { $0.group = "ha" }]  // hard: soft is false
        }
        #expect(try await placed("apart-1", apart) == busy)
        #expect(try await placed("apart-2", apart) == empty, "hard anti-affinity")
        let taint = try await Command.output(
            Command.binary("lqx"), lqx + ["node", "taint", busy, "dedicated=db:NoSchedule"])
        #expect(taint.status == 0, "\(taint)")
        #expect(try await placed("repelled", .with { $0.strategy = .pack }) == empty, "NoSchedule taint")
        let untaint = try await Command.output(Command.binary("lqx"), lqx + ["node", "taint", busy, "dedicated-"])
        #expect(untaint.status == 0, "\(untaint)")
        // A kernel no node has: asked in the next heartbeat replies, answered, explained.
        let missing = "/nonexistent-\(getpid())/vmlinuz"
        ids.append(try await create("nowhere", kernel: missing, .init()).metadata.id)
        names.append("nowhere")
        let pending = try await waitFor(cp, token: admin, "nowhere", timeout: .seconds(30)) {
            $0.status.conditions.contains { $0.type == "Scheduled" && $0.message.contains("2 missing \(missing)") }
        }
        #expect(pending?.status.phase == .pending && pending?.status.node == "")
        let explain = try await Command.output(Command.binary("lqx"), lqx + ["vm", "explain", "nowhere"])
        #expect(explain.stdout.contains("no \(missing) on the node"), "\(explain)")
        for name in names {
            _ = try await vms(cp) { try await $0.deleteVM(.with { $0.name = name }, metadata: metadata) }
        }
    }

    @Test(
        "create → scheduled (spread: one per node) → running with the agent → exec, cp both ways, metrics, Prometheus → drain → stop → delete"
    )
    func endToEnd() async throws {
        guard LibvirtAvailability.available else { return }
        let image = TestGuest.imageDirectory
        let kernel = image + "/vmlinuz", initrd = image + "/initramfs.cpio"
        try #require(FileManager.default.fileExists(atPath: kernel), "guest image missing")
        let (root, cp) = try await startedControlPlane()
        defer { tearDown(root, cp) }
        let admin = try cp.adminToken
        let metadata = bearer(admin)
        var nodes: [Daemon] = []
        defer { for node in nodes { node.kill() } }
        for name in ["e2e-\(getpid())-a", "e2e-\(getpid())-b"] {
            let token = try await cp.nodeService { try await $0.createJoinToken(.init(), metadata: metadata) }.token
            let node = try startNode(
                root, name, port: Daemon.freePort(), controlPlane: cp, token: token, libvirt: "qemu:///system",
                extra: ["--telemetry-interval", "1"])
            nodes.append(node)
            #expect(await node.line()?.hasPrefix("lqx-node listening") == true, "\(node.log)")
        }
        // Both nodes READY before the VMs are created, so spread has two to choose from.
        for _ in 0..<100 {
            let listed = try await cp.nodeService { try await $0.listNodes(.init(), metadata: metadata).nodes }
            if listed.count(where: { $0.status.phase == .ready }) == 2 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        var ids: [String] = []
        // Whatever happens, no domain of this test outlives it.
        defer {
            for id in ids {
                _ = virsh(["destroy", id])
                _ = virsh(["undefine", "--nvram", id])
            }
        }
        for name in ["web", "db"] {
            // The node names its domain by the VM's id.
            ids.append(
                try await createGuest(cp, token: admin, name, kernel: kernel, initrd: initrd, memory: 384).metadata.id)
        }
        func dump() {
            for node in nodes { print(node.log.suffix(3000)) }
            print(cp.daemon.log.suffix(3000))
            for id in ids {
                let console =
                    (try? String(
                        contentsOfFile: "\(root)/e2e-\(getpid())-a/state/vms/\(id)/console.log", encoding: .utf8)) ?? ""
                print("console of \(id):\n\(console.suffix(2000))")
            }
        }
        var placed: [String: String] = [:]
        for name in ["web", "db"] {
            guard
                let vm = try await waitFor(
                    cp, token: admin, name,
                    {
                        // The facts follow the session by one round trip to the agent.
                        $0.status.phase == .running && $0.status.agent.connected && !$0.status.agent.version.isEmpty
                    })
            else {
                dump()
                return
            }
            placed[name] = vm.status.node
            // What the agent said of itself, relayed by the node's heartbeat.
            #expect(vm.status.agent.osPrettyName == "limiquantix test guest (busybox)", "\(vm.status.agent)")
            #expect(!vm.status.agent.version.isEmpty && !vm.status.agent.hostname.isEmpty, "\(vm.status.agent)")
        }
        #expect(Set(placed.values).count == 2, "spread puts the two VMs on two nodes: \(placed)")
        // A page names each VM's node as a get does (the page's names come from one read of them all).
        let page = try await vms(cp) { try await $0.listVMs(.init(), metadata: metadata).vms }
        #expect(Dictionary(uniqueKeysWithValues: page.map { ($0.metadata.name, $0.status.node) }) == placed)

        let (code, out) = try await exec(cp, token: admin, "web", ["sh", "-c", "echo hello from $(hostname)"])
        #expect(code == 0)
        #expect(out.hasPrefix("hello from"), "\(out)")

        // cp both ways through the control plane, hashed.
        let payload = Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) })
        let uploaded = try await vms(cp) { client in
            try await client.upload(
                metadata: metadata, options: ClientTransport.failFast,
                requestProducer: { writer in
                    try await writer.write(
                        .with {
                            $0.start = .with {
                                $0.vm.name = "db"
                                $0.path = "/tmp/payload"
                                $0.size = UInt64(payload.count)
                                $0.mode = 0o644
                            }
                        })
                    var offset = 0
                    while offset < payload.count {
                        let end = min(offset + 256 * 1024, payload.count)
                        try await writer.write(.with { $0.data = payload[offset..<end] })
                        offset = end
                    }
                })
        }
        let expected = SHA256.hash(data: payload).map { String(format: "%02x", $0) }.joined()
        #expect(uploaded.sha256 == expected)
        let downloaded = try await vms(cp) { client in
            try await client.download(
                .with {
                    $0.vm.name = "db"
                    $0.path = "/tmp/payload"
                }, metadata: metadata, options: ClientTransport.failFast
            ) { response in
                var data = Data()
                for try await output in response.messages {
                    if case .data(let chunk)? = output.kind { data.append(chunk) }
                }
                return data
            }
        }
        #expect(downloaded == payload)
        let audit = try await cp.events { try await $0.listAudit(.init(), metadata: metadata).records }
        #expect(audit.contains { $0.action == "exec" && $0.detail.contains("echo hello") && $0.result == "exit 0" })
        #expect(audit.contains { $0.action == "upload" && $0.result == "sha256 \(expected)" })
        #expect(audit.contains { $0.action == "download" && $0.detail == "/tmp/payload" })

        try await throughCLI(cp, admin: admin, root: root)
        try await telemetry(cp, admin: admin, root: root, nodeOf: placed["web"] ?? "")

        // Drain web's node: web is stopped there, removed, and started on the other node; the
        // drained node ends in MAINTENANCE.
        let drained = placed["web"] ?? ""
        let lqx = ["--server", cp.api.description, "--token", admin, "--ca", cp.caFile]
        let drain = try await Command.output(Command.binary("lqx"), lqx + ["node", "drain", drained])
        #expect(drain.status == 0 && drain.stdout.contains("MAINTENANCE"), "\(drain)")
        let moved = try await waitFor(cp, token: admin, "web") {
            $0.status.phase == .running && $0.status.agent.connected && $0.status.node != drained
        }
        #expect(moved?.status.epoch == 2)
        let (after, hello) = try await exec(cp, token: admin, "web", ["sh", "-c", "echo moved"])
        #expect(after == 0 && hello == "moved\n")
        let uncordon = try await Command.output(Command.binary("lqx"), lqx + ["node", "uncordon", drained])
        #expect(uncordon.status == 0, "\(uncordon)")
        let busy = moved?.status.node ?? ""
        try await placements(cp, admin: admin, kernel: kernel, initrd: initrd, busy: busy, empty: drained, ids: &ids)

        // A NoExecute taint on the node both VMs run on now: each is stopped there and started
        // on the other node (web: epoch 3, db: 2); a tolerating VM would stay (core test).
        let taint = try await Command.output(
            Command.binary("lqx"), lqx + ["node", "taint", busy, "evict=now:NoExecute"])
        #expect(taint.status == 0, "\(taint)")
        for (name, epoch) in [("web", 3), ("db", 2)] {
            let evicted = try await waitFor(cp, token: admin, name) {
                $0.status.phase == .running && $0.status.agent.connected && $0.status.node == drained
            }
            #expect(evicted?.status.epoch == Int64(epoch), "\(name): \(evicted.map { "\($0.status)" } ?? "")")
        }
        let (evictedCode, evictedOut) = try await exec(cp, token: admin, "db", ["sh", "-c", "echo evicted"])
        #expect(evictedCode == 0 && evictedOut == "evicted\n")
        let untaint = try await Command.output(Command.binary("lqx"), lqx + ["node", "taint", busy, "evict-"])
        #expect(untaint.status == 0, "\(untaint)")

        // A viewer reads but cannot exec.
        let viewer = try await cp.tokens { client in
            try await client.createToken(
                .with {
                    $0.user = "watcher"
                    $0.role = .viewer
                }, metadata: metadata
            ).token
        }
        await expectLQXError(.permissionDenied) { _ = try await exec(cp, token: viewer, "web", ["true"]) }

        // Stop through the agent, then delete: gone from the store and from libvirtd.
        _ = try await vms(cp) { try await $0.stopVM(.with { $0.vm.name = "web" }, metadata: metadata) }
        #expect(
            try await waitFor(cp, token: admin, "web", timeout: .seconds(90)) { $0.status.phase == .stopped } != nil)
        for name in ["web", "db"] {
            _ = try await vms(cp) { try await $0.deleteVM(.with { $0.name = name }, metadata: metadata) }
        }
        let deadline = ContinuousClock.now + .seconds(60)
        var left = ["web", "db"]
        while !left.isEmpty, ContinuousClock.now < deadline {
            let listed = try await vms(cp) { try await $0.listVMs(.init(), metadata: metadata).vms }
            left = listed.map(\.metadata.name)
            try await Task.sleep(for: .milliseconds(250))
        }
        #expect(left.isEmpty, "still listed: \(left)")
        for id in ids {
            #expect(
                virsh(["domstate", id]).contains("failed to get domain")
                    || !virsh(["list", "--all", "--name"]).contains(id))
        }
        let reasons = try await cp.events { try await $0.listEvents(.init(), metadata: metadata).events.map(\.reason) }
        for reason in [
            "Created", "Scheduled", "Defined", "Running", "AgentConnected", "Evicting", "Evicted", "Stopped", "Deleted",
        ] {
            #expect(reasons.contains(reason), "\(reason) in \(reasons)")
        }
    }
}
