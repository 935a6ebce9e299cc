import ArgumentParser
import ControlPlaneAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel
import LQXServer
import LQXTestSupport
import NodeAPI
import NodeTestSupport

/// The in-guest path's cost through the cluster: one real `lqx-node` joined to an
/// `lqx-controlplane`, one test guest with its agent, and the same exec and file transfers sent
/// straight to the node's API (mutual TLS with an operator certificate of the cluster CA) and
/// through the control plane (TLS + bearer token, relayed to the node over mutual TLS),
/// interleaved in the same run.
struct RelayBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Exec round trip and cp throughput: through the control plane vs. straight to the node.")

    @Option(help: "The test guest image directory (packaging/guest-image/build.sh).")
    var image = TestGuest.imageDirectory
    @Option(help: "libvirt URI of the node.")
    var libvirt = "qemu:///system"
    @Option(help: "Exec round trips measured per path.")
    var execs = 200
    @Option(help: "MiB per file transfer.")
    var mib = 32
    @Option(help: "Transfers per direction and path.")
    var rounds = 3

    typealias NodeClient = Limiquantix_Node_V1_Node.Client<HTTP2ClientTransport.Posix>

    func run() async throws {
        let directory = try TempDir()
        defer { directory.remove() }
        let (controlPlane, api) = try await ControlPlaneProcess.start(
            nil, db: "sqlite:" + directory.file("store.db"), in: directory)
        defer { _ = controlPlane.kill() }
        let metadata = api.metadata
        let caPEM = try String(contentsOfFile: api.caFile, encoding: .utf8)
        let fingerprint = PKIFiles.fingerprint(of: try PKIFiles.certificate(pem: caPEM))
        let joinToken = try await api.nodes { try await $0.createJoinToken(.init(), metadata: metadata).token }
        let port = Daemon.freePort()
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let node = try Daemon(
            here.appendingPathComponent("lqx-node").path,
            [
                "--listen", "127.0.0.1:\(port)", "--libvirt-uri", libvirt, "--state-dir", directory.file("node/state"),
                "--run-dir", directory.file("node/run"), "--node-name", "relay-bench", "--memory-trim", "0",
                "--control-plane", api.address.description, "--join-token", joinToken, "--ca-sha256", fingerprint,
            ], logPath: directory.file("node.log"))
        defer { _ = node.kill() }
        guard await node.line()?.hasPrefix("lqx-node listening") == true else {
            throw ValidationError("lqx-node did not start: \(node.log)")
        }
        try await waitUntil("the node is READY") {
            try await api.nodes { try await $0.listNodes(.init(), metadata: metadata).nodes }
                .contains { $0.status.phase == .ready }
        }
        let created = try await api.vms { client in
            try await client.createVM(
                .with {
                    $0.name = "relay"
                    $0.spec.machine = .with {
                        $0.vcpus = 1
                        $0.memoryMib = 512
                        $0.kernel = .with {
                            $0.kernel = image + "/vmlinuz"
                            $0.initrd = image + "/initramfs.cpio"
                            $0.cmdline = TestGuest.cmdline
                        }
                    }
                }, metadata: metadata)
        }
        let id = created.metadata.id
        defer {
            _ = try? Command.run("virsh", ["-c", libvirt, "destroy", id])
            _ = try? Command.run("virsh", ["-c", libvirt, "undefine", "--nvram", id])
        }
        try await waitUntil("the guest's agent is connected", timeout: .seconds(180)) {
            let vm = try await api.vms { try await $0.getVM(.with { $0.name = "relay" }, metadata: metadata) }
            return vm.status.phase == .running && vm.status.agent.connected
        }
        // An operator certificate of the cluster CA, as `lqx node operator-cert create` gets one.
        let operatorKey = try KeyAndRequest.generate(commonName: "operator")
        let issued = try await api.nodes { client in
            try await client.issueOperatorCertificate(
                .with { $0.certificateRequest = Data(operatorKey.requestDER) }, metadata: metadata)
        }
        try PKIFiles.write(operatorKey.keyPEM, to: directory.file("operator.key"))
        try PKIFiles.write(issued.certificatePem, to: directory.file("operator.crt"))
        let direct = ClientSecurity.mutualTLS(
            certificateChain: directory.file("operator.crt"), privateKey: directory.file("operator.key"),
            caFile: api.caFile)
        let nodeAddress = HostPort(host: "127.0.0.1", port: port)

        let payload = [UInt8]((0..<(mib << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) })
        let results = try await ClientTransport.with(nodeAddress, security: direct) { nodeConnection in
            let nodeClient = NodeClient(wrapping: nodeConnection)
            return try await api.vms { relay in
                // Warm both paths (connections, the guest's page cache, the agent's first exec).
                for _ in 0..<5 {
                    _ = try await Self.exec(direct: nodeClient, id)
                    _ = try await Self.exec(relay: relay, metadata)
                }
                var directRTT = Samples(), relayRTT = Samples()
                // The floor of any extra hop here: one unary call's round trip to each process.
                var directUnary = Samples(), relayUnary = Samples()
                for _ in 0..<execs {
                    directRTT.add(try await timed { try await Self.exec(direct: nodeClient, id) }.1)
                    relayRTT.add(try await timed { try await Self.exec(relay: relay, metadata) }.1)
                    directUnary.add(try await timed { _ = try await nodeClient.getVM(.with { $0.name = id }) }.1)
                    relayUnary.add(
                        try await timed {
                            _ = try await relay.getVM(.with { $0.name = "relay" }, metadata: metadata)
                        }.1)
                }
                var upload = (direct: Samples(), relay: Samples()), download = (direct: Samples(), relay: Samples())
                for _ in 0..<rounds {
                    upload.direct.add(try await timed { try await Self.upload(direct: nodeClient, id, payload) }.1)
                    upload.relay.add(try await timed { try await Self.upload(relay: relay, metadata, payload) }.1)
                    download.direct.add(
                        try await timed { try await Self.download(direct: nodeClient, id, payload.count) }.1)
                    download.relay.add(
                        try await timed { try await Self.download(relay: relay, metadata, payload.count) }.1)
                }
                return (directRTT, relayRTT, upload, download, directUnary, relayUnary)
            }
        }
        let (directRTT, relayRTT, upload, download, directUnary, relayUnary) = results
        let added = (relayRTT.percentile(0.5) - directRTT.percentile(0.5)) * 1000
        print("| measure | straight to the node | through the control plane | relay's share | target |")
        print("|---|---|---|---|---|")
        print(
            String(
                format:
                    "| exec `true` round trip, p50 / p99 (n=%d each, interleaved) | %.2f / %.2f ms | %.2f / %.2f ms | +%.2f ms at p50 | ≤ +1 ms (ratio %.2f) |",
                execs, directRTT.percentile(0.5) * 1000, directRTT.percentile(0.99) * 1000,
                relayRTT.percentile(0.5) * 1000, relayRTT.percentile(0.99) * 1000, added, added / 1.0))
        print(
            String(
                format:
                    "| floor: one unary call (`GetVM`), p50 / p99 (n=%d each, interleaved with the execs) | %.2f / %.2f ms | %.2f / %.2f ms | the relay adds %.1f× a control-plane round trip | — |",
                execs, directUnary.percentile(0.5) * 1000, directUnary.percentile(0.99) * 1000,
                relayUnary.percentile(0.5) * 1000, relayUnary.percentile(0.99) * 1000,
                added / (relayUnary.percentile(0.5) * 1000)))
        func throughput(_ label: String, _ pair: (direct: Samples, relay: Samples)) {
            let megabytes = Double(mib)
            let straight = megabytes / pair.direct.percentile(0.5), relayed = megabytes / pair.relay.percentile(0.5)
            print(
                String(
                    format:
                        "| %@ %d MiB, median of %d | %.1f MiB/s | %.1f MiB/s | %.0f %% of straight | ≥ 80 %% (ratio %.2f) |",
                    label, mib, rounds, straight, relayed, relayed / straight * 100, relayed / straight / 0.8))
        }
        throughput("cp to the guest (upload)", upload)
        throughput("cp from the guest (download)", download)
    }

    func waitUntil(_ what: String, timeout: Duration = .seconds(60), _ check: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await check()) == true { return }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw ValidationError("timed out waiting until \(what)")
    }

    static func exec(direct client: NodeClient, _ id: String) async throws {
        let code = try await client.exec(
            requestProducer: { writer in
                try await writer.write(
                    .with {
                        $0.start = .with {
                            $0.vm = id
                            $0.request.argv = ["true"]
                        }
                    })
            },
            onResponse: { response in
                var code: Int32?
                for try await output in response.messages {
                    if case .exit(let exit)? = output.kind, case .exitCode(let value)? = exit.status { code = value }
                }
                return code
            })
        guard code == 0 else {
            throw ValidationError("exec straight to the node ended with \(String(describing: code))")
        }
    }

    static func exec(relay client: API.VMClient, _ metadata: Metadata) async throws {
        let code = try await client.exec(
            metadata: metadata,
            requestProducer: { writer in
                try await writer.write(
                    .with {
                        $0.start = .with {
                            $0.vm.name = "relay"
                            $0.request.argv = ["true"]
                        }
                    })
            },
            onResponse: { response in
                var code: Int32?
                for try await output in response.messages {
                    if case .exit(let exit)? = output.kind, case .exitCode(let value)? = exit.status { code = value }
                }
                return code
            })
        guard code == 0 else {
            throw ValidationError("exec through the control plane ended with \(String(describing: code))")
        }
    }

    static let chunk = 256 * 1024
    static let path = "/tmp/relay-bench"

    static func upload(direct client: NodeClient, _ id: String, _ payload: [UInt8]) async throws {
        _ = try await client.upload(requestProducer: { writer in
            try await writer.write(
                .with {
                    $0.start = .with {
                        $0.vm = id
                        $0.path = path
                        $0.size = UInt64(payload.count)
                        $0.mode = 0o644
                    }
                })
            for offset in stride(from: 0, to: payload.count, by: chunk) {
                try await writer.write(.with { $0.data = Data(payload[offset..<min(offset + chunk, payload.count)]) })
            }
        })
    }

    static func upload(relay client: API.VMClient, _ metadata: Metadata, _ payload: [UInt8]) async throws {
        _ = try await client.upload(
            metadata: metadata,
            requestProducer: { writer in
                try await writer.write(
                    .with {
                        $0.start = .with {
                            $0.vm.name = "relay"
                            $0.path = path
                            $0.size = UInt64(payload.count)
                            $0.mode = 0o644
                        }
                    })
                for offset in stride(from: 0, to: payload.count, by: chunk) {
                    try await writer.write(
                        .with { $0.data = Data(payload[offset..<min(offset + chunk, payload.count)]) })
                }
            })
    }

    static func download(direct client: NodeClient, _ id: String, _ expected: Int) async throws {
        let received = try await client.download(
            .with {
                $0.vm = id
                $0.path = path
            }
        ) { response in
            var count = 0
            for try await output in response.messages { if case .data(let data)? = output.kind { count += data.count } }
            return count
        }
        guard received == expected else { throw ValidationError("downloaded \(received) of \(expected) bytes") }
    }

    static func download(relay client: API.VMClient, _ metadata: Metadata, _ expected: Int) async throws {
        let received = try await client.download(
            .with {
                $0.vm.name = "relay"
                $0.path = path
            }, metadata: metadata
        ) { response in
            var count = 0
            for try await output in response.messages { if case .data(let data)? = output.kind { count += data.count } }
            return count
        }
        guard received == expected else { throw ValidationError("downloaded \(received) of \(expected) bytes") }
    }
}
