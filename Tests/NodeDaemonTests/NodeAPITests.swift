import AgentProtocol
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel
import LQXTypes
import Logging
import NodeAPI
import NodeTestSupport
import Testing

@testable import NodeCore
@testable import NodeDaemon
@testable import NodeLibvirt

@Suite("node API: pieces without a VM")
struct NodeAPIUnitTests {
    @Test("metrics: guest strings are escaped and cut, series per kind are bounded")
    func exposition() {
        var m = MetricsExposition()
        m.add("x", "gauge", "help", ["vm": "a\"b\\c\nd\u{1}e"], 1.5)
        m.add("x", "gauge", "help", ["vm": String(repeating: "é", count: 200)], 2)
        let text = m.text
        #expect(text.hasPrefix("# HELP x help\n# TYPE x gauge\n"))
        #expect(text.contains(#"x{vm="a\"b\\c\nd?e"} 1.5"#))
        let long = text.split(separator: "\n").last!
        let value = long[long.index(long.firstIndex(of: "\"")!, offsetBy: 1)...].split(separator: "\"").first!
        #expect(value.utf8.count <= MetricsExposition.maxLabelBytes + 3)
        #expect(MetricsExposition.format(.nan) == "NaN" && MetricsExposition.format(42) == "42")
    }

    @Test("a hostile exec duration saturates instead of trapping")
    func durations() {
        #expect(NodeService.microseconds(.microseconds(UInt64.max)) == UInt64.max)
        #expect(NodeService.microseconds(.milliseconds(1500)) == 1_500_000)
        #expect(NodeService.microseconds(.seconds(-1)) == 0)
    }

    @Test("spec ↔ API message: defaults for unset counts, explicit zero kept for validation to refuse")
    func conversions() throws {
        let spec = VMSpec(
            name: "web-1", vcpus: 4, topology: .init(sockets: 2, cores: 2, threads: 1), memoryMiB: 2048,
            firmware: .uefi, boot: .kernel(path: "/k", initrd: "/i", cmdline: "console=ttyS0"),
            disks: [.init(source: .new(sizeGiB: 8)), .init(source: .path("/iso"), bus: .sata, readOnly: true)],
            nics: [.init(.network("default"), mac: "52:54:00:00:00:01"), .init(.bridge("br0"))], watchdog: .poweroff)
        #expect(VMSpec(spec.proto) == spec)
        let unset = VMSpec(Limiquantix_Types_V1_VMSpec.with { $0.name = "a" })
        #expect(unset.vcpus == 1 && unset.memoryMiB == 512)
        let zero = VMSpec(
            Limiquantix_Types_V1_VMSpec.with {
                $0.name = "a"
                $0.vcpus = 0
            })
        #expect(throws: LQXError(.invalidSpec, "vcpus must be greater than 0 (got 0)")) { try zero.validate() }
    }

    @Test("libvirt XML reading and disk targets")
    func xml() {
        let xml = """
            <domain><devices>
            <disk type='file' device='disk'><source file='/s/vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
            <disk type='file' device='cdrom'><source file='/iso'/><target dev='sda' bus='sata'/></disk>
            <interface type='network'><target dev='vnet0'/></interface>
            </devices><description>a &amp; b</description></domain>
            """
        let disks = LibvirtHypervisor.diskTargets(in: xml)
        #expect(disks.map(\.target) == ["vda", "sda"])
        #expect(disks.map(\.source) == ["/s/vda.qcow2", "/iso"])
        #expect(XMLText.element("description", in: xml) == "a & b")
        let spec = VMSpec(
            name: "v",
            disks: [
                .init(source: .new(sizeGiB: 1)), .init(source: .path("/x"), bus: .sata),
                .init(source: .new(sizeGiB: 1)),
            ])
        #expect(LibvirtHypervisor.specIndex(of: "vdb", in: spec) == 2)
        #expect(LibvirtHypervisor.specIndex(of: "sda", in: spec) == 1)
        #expect(LibvirtHypervisor.specIndex(of: "vdc", in: spec) == nil)
    }
}

/// The gRPC API in process against real libvirtd: every refusal reaches the client as a status
/// with the stable code, and nothing is created.
@Suite("node API: errors over gRPC", .serialized)
struct NodeAPIErrorTests {
    @Test("bad specs, unknown VMs and malformed streams get clear statuses")
    func errors() async throws {
        guard LibvirtAvailability.available else { return }
        let node = try TestNode()
        defer { node.remove() }
        var logger = Logger(label: "node-test")
        logger.logLevel = .critical
        let server = try await RunningNode.start(
            // Idle memory is given back every 100 ms: the calls below must not notice.
            NodeConfiguration(
                listen: HostPort(host: "127.0.0.1", port: 0), metricsListen: HostPort(host: "127.0.0.1", port: 0),
                layout: node.layout, nodeName: "unit", memoryTrim: .milliseconds(100)),
            logger: logger)
        let port = server.api.port
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
        try await withGRPCClient(transport: transport) { grpc in
            let client = Limiquantix_Node_V1_Node.Client(wrapping: grpc)
            func status(_ body: () async throws -> Void) async -> (RPCError.Code, String, String)? {
                do {
                    try await body()
                    return nil
                } catch let error as RPCError {
                    var code = ""
                    for entry in error.metadata where entry.key == NodeService.errorCodeKey {
                        if case .string(let value) = entry.value { code = value }
                    }
                    return (error.code, code, error.message)
                } catch {
                    return nil
                }
            }
            let name = TestNode.vmName("grpc")
            let zero = await status {
                _ = try await client.createVM(
                    .with {
                        $0.spec = .with {
                            $0.name = name
                            $0.vcpus = 0
                            $0.kernel = .with { $0.kernel = "/boot/vmlinuz" }
                        }
                    })
            }
            #expect(zero?.0 == .invalidArgument && zero?.1 == "invalid_spec" && zero?.2.contains("vcpus") == true)
            let missingKernel = await status {
                _ = try await client.createVM(
                    .with {
                        $0.spec = .with {
                            $0.name = name
                            $0.kernel = .with { $0.kernel = "/no/such/kernel" }
                        }
                    })
            }
            #expect(missingKernel?.0 == .notFound && missingKernel?.2.contains("/no/such/kernel") == true)
            let unknown = await status { _ = try await client.getVM(.with { $0.name = "lqx-no-such-vm" }) }
            #expect(unknown?.0 == .notFound && unknown?.1 == "not_found")
            let telemetry = await status { _ = try await client.getTelemetry(.with { $0.name = "lqx-no-such-vm" }) }
            #expect(telemetry?.0 == .notFound)
            let noStart = await status {
                try await client.exec(
                    requestProducer: { writer in try await writer.write(.with { $0.stdin = Data("x".utf8) }) },
                    onResponse: { response in for try await _ in response.messages {} })
            }
            #expect(noStart?.0 == .invalidArgument, "\(String(describing: noStart))")
            let uploadNoVM = await status {
                _ = try await client.upload(
                    requestProducer: { writer in
                        try await writer.write(
                            .with {
                                $0.start = .with {
                                    $0.vm = "lqx-no-such-vm"
                                    $0.path = "/tmp/x"
                                    $0.size = 1
                                }
                            })
                        try await writer.write(.with { $0.data = Data("x".utf8) })
                    })
            }
            #expect(uploadNoVM?.0 == .notFound, "\(String(describing: uploadNoVM))")
            let snapshotNoVM = await status {
                _ = try await client.createSnapshot(.with { $0.vm = "lqx-no-such-vm" })
            }
            #expect(snapshotNoVM?.0 == .notFound)
            try await Task.sleep(for: .milliseconds(300))
            let info = try await client.getNodeInfo(Limiquantix_Node_V1_NodeInfoRequest())
            #expect(info.hostname == "unit" && !info.hypervisor.libvirtVersion.isEmpty)
            #expect(info.hypervisor.capabilitiesXml.contains("<capabilities>"))
            #expect(!info.hypervisor.machineTypes.isEmpty)
            let list = try await client.listVMs(Limiquantix_Node_V1_ListVMsRequest())
            #expect(!list.vms.contains { $0.name == name })
        }
        #expect(node.contents().filter { $0.contains("grpc") }.isEmpty, "left behind: \(node.contents())")
        await server.stop()
    }
}
