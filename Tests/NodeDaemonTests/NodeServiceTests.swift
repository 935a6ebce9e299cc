import AgentProtocol
import Foundation
import GRPCCore
import GRPCInProcessTransport
import GRPCNIOTransportHTTP2Posix
import HostBroker
import LQXModel
import LQXServer
import LQXTestSupport
import LQXTypes
import Logging
import NodeAPI
import NodeCoreTesting
import NodeTestSupport
import SwiftProtobuf
import Testing

@testable import NodeCore
@testable import NodeDaemon

/// The gRPC layer over grpc-swift's in-process transport, against the fake hypervisor.
@Suite("node gRPC API in process")
struct NodeServiceInProcessTests {
    static func withClient(
        _ body: (FakeHypervisor, Limiquantix_Node_V1_Node.Client<InProcessTransport.Client>) async throws -> Void
    ) async throws {
        let fake = FakeHypervisor()
        var logger = Logger(label: "grpc-test")
        logger.logLevel = .critical
        let manager = VMManager(hypervisor: fake, logger: logger)
        let run = try await ManagerRun(manager)
        defer { run.task.cancel() }
        let transport = InProcessTransport()
        let server = GRPCServer(
            transport: transport.server,
            services: [
                NodeService(
                    controller: VMController(manager: manager), nodeName: "unit", epochs: try EpochLedger(path: nil))
            ])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.serve() }
            try await withGRPCClient(transport: transport.client) { client in
                try await body(fake, Limiquantix_Node_V1_Node.Client(wrapping: client))
            }
            server.beginGracefulShutdown()
            try await group.waitForAll()
        }
    }

    static func code(_ error: any Error) -> (RPCError.Code, String)? {
        guard let error = error as? RPCError else { return nil }
        for entry in error.metadata where entry.key == RPCErrorMapping.errorCodeKey {
            if case .string(let value) = entry.value { return (error.code, value) }
        }
        return (error.code, "")
    }

    @Test("the migration address, downtime and bandwidth reach the hypervisor")
    func migrationParameters() async throws {
        try await Self.withClient { fake, client in
            _ = try await client.createVM(
                .with {
                    $0.spec = .with {
                        $0.name = "m"; $0.kernel = .with { $0.kernel = "/k" }
                    }
                })
            _ = try await client.startVM(.with { $0.name = "m" })
            let request = Limiquantix_Node_V1_MigrateVMRequest.with {
                $0.name = "m"
                $0.destinationUri = "qemu+tcp://peer/system"
                $0.migrationAddress = "10.9.8.7"
                $0.maxDowntimeMs = 300
                $0.bandwidthMibps = 50
            }
            let done = try await client.migrateVM(request) { response in
                var done = false
                for try await progress in response.messages where progress.done { done = true }
                return done
            }
            #expect(done)
            let call = fake.calls.first { $0.method == "migrate" }
            #expect(call?.arguments == ["m", "qemu+tcp://peer/system", "10.9.8.7", "downtime=300", "bandwidth=50"])
        }
    }

    @Test("placement epochs: a command with a lower epoch than one seen is refused (stale_epoch); 0 passes")
    func epochs() async throws {
        try await Self.withClient { fake, client in
            _ = try await client.createVM(
                .with {
                    $0.spec = .with {
                        $0.name = "e"; $0.kernel = .with { $0.kernel = "/k" }
                    }
                    $0.epoch = 4
                })
            do {
                _ = try await client.startVM(
                    .with {
                        $0.name = "e"; $0.epoch = 3
                    })
                Issue.record("a stale epoch was obeyed")
            } catch {
                #expect(Self.code(error)! == (.failedPrecondition, "stale_epoch"))
                #expect("\(error)".contains("epoch 3 is stale (this node has seen epoch 4)"))
            }
            #expect(!fake.calls.contains { $0.method == "start" })
            _ = try await client.startVM(
                .with {
                    $0.name = "e"; $0.epoch = 4
                })
            do {
                _ = try await client.stopVM(
                    .with {
                        $0.name = "e"; $0.epoch = 2; $0.force = true
                    })
                Issue.record("a stale stop was obeyed")
            } catch { #expect(Self.code(error)! == (.failedPrecondition, "stale_epoch")) }
            // Without an epoch (an operator's call): obeyed.
            _ = try await client.stopVM(
                .with {
                    $0.name = "e"; $0.force = true
                })
            do {
                _ = try await client.deleteVM(
                    .with {
                        $0.name = "e"; $0.epoch = 1
                    })
                Issue.record("a stale delete was obeyed")
            } catch { #expect(Self.code(error)! == (.failedPrecondition, "stale_epoch")) }
            _ = try await client.deleteVM(
                .with {
                    $0.name = "e"; $0.epoch = 5
                })
        }
    }

    @Test("errors reach the client as status + stable code, hypervisor failures with their cause")
    func errors() async throws {
        try await Self.withClient { fake, client in
            do {
                _ = try await client.getVM(.with { $0.name = "ghost" })
                Issue.record("unknown VM answered")
            } catch { #expect(Self.code(error)! == (.notFound, "not_found")) }
            do {
                _ = try await client.createVM(
                    .with {
                        $0.spec = .with {
                            $0.name = "z"; $0.vcpus = 0; $0.kernel = .with { $0.kernel = "/k" }
                        }
                    })
                Issue.record("vcpus 0 accepted")
            } catch { #expect(Self.code(error)! == (.invalidArgument, "invalid_spec")) }
            struct Cause: Error, CustomStringConvertible { var description: String { "virDomainCreate: boom" } }
            _ = try await client.createVM(
                .with {
                    $0.spec = .with {
                        $0.name = "y"; $0.kernel = .with { $0.kernel = "/k" }
                    }
                })
            fake.fail("start", with: LQXError(.hypervisor, "starting y", cause: Cause()))
            do {
                _ = try await client.startVM(.with { $0.name = "y" })
                Issue.record("failed start answered")
            } catch {
                #expect(Self.code(error)! == (.internalError, "hypervisor"))
                #expect((error as? RPCError)?.message == "starting y: virDomainCreate: boom")
            }
            do {
                _ = try await client.getTelemetry(.with { $0.name = "y" })
                Issue.record("telemetry of a stopped VM answered")
            } catch { #expect(Self.code(error)! == (.failedPrecondition, "failed_precondition")) }
        }
    }
}

/// The migration RPC over real HTTP/2 on loopback, against the fake hypervisor.
@Suite("node gRPC API over TCP")
struct NodeServiceTCPTests {
    @Test("a client that goes away cancels the migration: the hypervisor's job is aborted")
    func migrationCancel() async throws {
        // Over TCP: a client going away resets its HTTP/2 stream, which cancels the RPC on the
        // server (the in-process transport has no such signal).
        let fake = FakeHypervisor()
        var logger = Logger(label: "cancel-test")
        logger.logLevel = .critical
        let node = try await RunningNode.start(
            NodeConfiguration(
                listen: HostPort(host: "127.0.0.1", port: 0), layout: fake.layout, nodeName: "cancel", memoryTrim: nil),
            hypervisor: fake, logger: logger)
        defer { Task { await node.stop() } }
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: node.api.port), transportSecurity: .plaintext)
        try await withGRPCClient(transport: transport) { grpc in
            let client = Limiquantix_Node_V1_Node.Client(wrapping: grpc)
            _ = try await client.createVM(
                .with {
                    $0.spec = .with {
                        $0.name = "n"; $0.kernel = .with { $0.kernel = "/k" }
                    }
                })
            _ = try await client.startVM(.with { $0.name = "n" })
            fake.setMigrationHangs(true)
            let call = Task {
                try await client.migrateVM(
                    .with {
                        $0.name = "n"; $0.destinationUri = "qemu+tcp://peer/system"
                    }
                ) {
                    response in for try await _ in response.messages {}
                }
            }
            for _ in 0..<200 where !fake.calls.contains(where: { $0.method == "migrate" }) {
                try await Task.sleep(for: .milliseconds(10))
            }
            call.cancel()
            _ = try? await call.value
            for _ in 0..<200 where !fake.calls.contains(where: { $0.method == "abortJob" }) {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(fake.calls.contains { $0.method == "abortJob" && $0.arguments == ["n"] }, "\(fake.calls)")
            #expect(try await client.getVM(.with { $0.name = "n" }).state == .running)
        }
    }

}

/// One version source for every binary.
@Suite("versions")
struct VersionTests {
    @Test("lqx, lqx-node and lqx-agent print LimiquantixVersion.current for --version")
    func versions() throws {
        for binary in ["lqx", "lqx-node", "lqx-agent"] {
            let result = try Command.run(Command.binary(binary), ["--version"])
            #expect(result.status == 0, "\(binary): \(result.stderr)")
            #expect(
                result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == LimiquantixVersion.current, "\(binary)"
            )
        }
    }

    @Test("module names qualify their types (no type named like its module)")
    func qualifiedNames() {
        // Before issue 12 `public enum HostBroker` shadowed the module, so `HostBroker.AgentClient`
        // did not compile; these lines are the test.
        let client: HostBroker.AgentClient.Type = HostBroker.AgentClient.self
        let manager: NodeCore.VMManager.Type = NodeCore.VMManager.self
        #expect("\(client)" == "AgentClient" && "\(manager)" == "VMManager")
    }
}

/// The node API's own in-guest messages carry what the agent sent, field for field.
@Suite("node.v1 in-guest messages")
struct NodeMessageTests {
    @Test("a telemetry sample with every field set reaches the node API unchanged (agent → broker → node.v1)")
    func telemetryRelay() throws {
        let wire = GuestFixtures.telemetry
        let relayed = Limiquantix_Types_V1_TelemetrySample(TelemetrySample(wire: wire))
        var options = JSONEncodingOptions()
        options.preserveProtoFieldNames = true
        #expect(try relayed.jsonString(options: options) == wire.jsonString(options: options))
        #expect(relayed.unknownFields.data.isEmpty)
        #expect(relayed.interfaces.first?.macAddress == "52:54:00:12:34:56" && relayed.cpuCount == 2)
    }
}

/// `lqx vm migrate` against a node daemon whose hypervisor records what it was asked.
@Suite("lqx sends what it parses")
struct CLIToNodeTests {
    @Test("--migration-address, --max-downtime and --bandwidth reach the node")
    func migrateFlags() async throws {
        let fake = FakeHypervisor()
        var logger = Logger(label: "cli-test")
        logger.logLevel = .critical
        let node = try await RunningNode.start(
            NodeConfiguration(
                listen: HostPort(host: "127.0.0.1", port: 0),
                layout: NodeLayout(stateDirectory: "/fake/state", runDirectory: "/fake/run"), nodeName: "cli",
                memoryTrim: nil),
            hypervisor: fake, logger: logger)
        _ = try await fake.create(VMSpec(name: "web", boot: VMSpec.Boot.kernel(path: "/k", initrd: nil, cmdline: "")))
        try await fake.start("web")
        let result = try await Command.output(
            Command.binary("lqx"),
            [
                "--node", node.api.description, "vm", "migrate", "web", "qemu+tcp://peer/system",
                "--migration-address", "192.0.2.7", "--max-downtime", "250", "--bandwidth", "40",
            ])
        await node.stop()
        #expect(result.status == 0, "\(result.stderr)")
        let call = fake.calls.first { $0.method == "migrate" }
        #expect(call?.arguments == ["web", "qemu+tcp://peer/system", "192.0.2.7", "downtime=250", "bandwidth=40"])
    }
}
