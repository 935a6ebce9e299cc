import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXTestSupport
import Logging
import NodeAPI
import Testing

@testable import NodeDaemon

/// 20 small VMs on one node: every agent connected, telemetry flowing from each, an exec in each.
/// (The daemon's CPU and RSS under this load are measured by benchmarks/node-load.sh.)
@Suite("node: 20 VMs on one node", .serialized)
struct NodeLoadSystemTests {
    static let vms = Int(ProcessInfo.processInfo.environment["LQX_LOAD_VMS"] ?? "") ?? 20

    @Test("all agents connect, telemetry flows from every VM, each answers an exec")
    func twentyVMs() async throws {
        guard LibvirtAvailability.available else { return }
        let image = NodeLibvirtSystemTests.imageDirectory
        try #require(FileManager.default.fileExists(atPath: image + "/vmlinuz"), "guest image missing")
        let node = try TestNode()
        defer { node.remove() }
        var logger = Logger(label: "node-load")
        logger.logLevel = .warning
        let server = try await NodeServer.start(
            NodeConfiguration(
                listen: ("127.0.0.1", 0), metricsListen: ("127.0.0.1", 0), layout: node.layout, nodeName: "load",
                telemetryInterval: .seconds(5)),
            logger: logger)
        let names = (1...Self.vms).map { TestNode.vmName("load\($0)") }
        let port = Int(server.apiAddress.split(separator: ":").last!)!
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
        do {
            try await withGRPCClient(transport: transport) { grpc in
                let client = Limiquantix_Node_V1_Node.Client(wrapping: grpc)
                for name in names {
                    _ = try await client.createVM(
                        .with {
                            $0.spec = .with {
                                $0.name = name
                                $0.vcpus = 1
                                $0.memoryMib = 384
                                $0.kernel = .with {
                                    $0.kernel = image + "/vmlinuz"
                                    $0.initrd = image + "/initramfs.cpio"
                                    $0.cmdline = "console=ttyS0 loglevel=4 no_timer_check rdinit=/init"
                                }
                            }
                        })
                    _ = try await client.startVM(.with { $0.name = name })
                }
                // 20 TCG boots share the machine's cores: minutes, not seconds.
                let metrics = try #require(server.metricsAddress)
                let deadline = ContinuousClock.now + .seconds(600)
                var exposition = ""
                while ContinuousClock.now < deadline {
                    exposition = try await httpGet(metrics, "/metrics").body
                    let connected = exposition.split(separator: "\n").filter {
                        $0.hasPrefix("lqx_vm_agent_connected{") && $0.hasSuffix(" 1")
                    }
                    let sampled = exposition.split(separator: "\n").filter {
                        $0.hasPrefix("lqx_guest_telemetry_age_seconds{")
                    }
                    if connected.count == names.count, sampled.count == names.count { break }
                    try await Task.sleep(for: .seconds(2))
                }
                let missing = names.filter {
                    !exposition.contains("lqx_vm_agent_connected{node=\"load\",vm=\"\($0)\"} 1")
                }
                #expect(missing.isEmpty, "agents not connected: \(missing)")
                // Telemetry keeps flowing: a fresh sample from every VM within 3 intervals.
                try await Task.sleep(for: .seconds(6))
                for name in names {
                    let telemetry = try await client.getTelemetry(.with { $0.name = name })
                    let age = Date().timeIntervalSince1970 - Double(telemetry.receivedUnixMs) / 1000
                    #expect(age < 15, "\(name): last sample \(age) s old")
                    #expect(telemetry.sample.memory.totalBytes > 200 << 20)
                }
                // And every agent answers through the node.
                try await withThrowingTaskGroup(of: (String, Int32?).self) { group in
                    for name in names {
                        group.addTask {
                            try await client.exec(
                                requestProducer: { writer in
                                    try await writer.write(
                                        .with {
                                            $0.start = .with {
                                                $0.vm = name
                                                $0.request = .with { $0.argv = ["hostname"] }
                                            }
                                        })
                                },
                                onResponse: { response in
                                    for try await output in response.messages {
                                        if case .exit(let exit) = output.kind { return (name, exit.exitCode) }
                                    }
                                    return (name, nil)
                                })
                        }
                    }
                    for try await (name, code) in group { #expect(code == 0, "exec in \(name)") }
                }
            }
        } catch {
            await cleanUp(names, server)
            throw error
        }
        await cleanUp(names, server)
        #expect(node.contents().filter { $0.contains("load") }.isEmpty, "left behind: \(node.contents())")
    }

    func cleanUp(_ names: [String], _ server: NodeServer) async {
        for name in names { try? await server.manager.hypervisor.delete(name, force: true, deleteDisks: true) }
        await server.shutdown()
    }
}
