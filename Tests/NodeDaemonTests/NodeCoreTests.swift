import Foundation
import GRPCCore
import GRPCInProcessTransport
import GRPCNIOTransportHTTP2Posix
import LQXModel
import LQXServer
import LQXTestSupport
import Logging
import NodeAPI
import NodeCoreTesting
import Testing

@testable import NodeCore
@testable import NodeDaemon

/// The node core against the in-memory hypervisor: decisions (graceful or forced, checks, waits)
/// are the core's, so they are tested without libvirtd.
@Suite("node core with a fake hypervisor")
struct NodeCoreTests {
    static let kernel = VMSpec.Boot.kernel(path: "/k", initrd: nil, cmdline: "")

    /// A controller whose manager runs for the duration of `body`.
    static func withController<T>(
        policy: LifecyclePolicy = LifecyclePolicy(settle: .seconds(2)),
        _ body: (FakeHypervisor, VMController) async throws -> T
    ) async throws -> T {
        let fake = FakeHypervisor()
        var logger = Logger(label: "core-test")
        logger.logLevel = .critical
        let manager = VMManager(hypervisor: fake, policy: policy, logger: logger)
        let run = try await ManagerRun(manager)
        defer { run.task.cancel() }
        return try await body(fake, VMController(manager: manager))
    }

    @Test("stop: ACPI when no agent; forced after the timeout when the guest ignores it; force skips ACPI")
    func stops() async throws {
        try await Self.withController { fake, controller in
            _ = try await controller.create(VMSpec(name: "a", boot: Self.kernel))
            #expect(try await controller.start("a").state == .running)
            let acpi = try await controller.stop("a", mode: .graceful(timeout: .seconds(5)))
            #expect(acpi.method == .acpi && acpi.status.state == .shutOff)
            #expect(try await controller.stop("a", mode: .graceful(timeout: nil)).method == .alreadyStopped)

            _ = try await controller.start("a")
            fake.setACPI("a", .ignore)
            let forced = try await controller.stop("a", mode: .graceful(timeout: .milliseconds(200)))
            #expect(forced.method == .forced && forced.status.state == .shutOff)
            #expect(fake.calls.suffix(2).map(\.method) == ["requestShutdown", "forceStop"])

            _ = try await controller.start("a")
            let before = fake.calls.count
            #expect(try await controller.stop("a", mode: .force).method == .forced)
            #expect(!fake.calls[before...].contains { $0.method == "requestShutdown" })
        }
    }

    @Test("refusals: unknown VMs, bad stop timeouts, deleting a running VM, bad specs, bad migrations")
    func refusals() async throws {
        try await Self.withController { fake, controller in
            await #expect(throws: LQXError(.notFound, "no VM named nope on this node")) {
                _ = try await controller.start("nope")
            }
            _ = try await controller.create(VMSpec(name: "b", boot: Self.kernel))
            _ = try await controller.start("b")
            do {
                _ = try await controller.stop("b", mode: .graceful(timeout: .zero))
                Issue.record("a zero stop timeout was accepted")
            } catch let error as LQXError { #expect(error.code == .invalidSpec) }
            do {
                try await controller.delete("b", force: false, keepDisks: false)
                Issue.record("deleting a running VM was accepted")
            } catch let error as LQXError { #expect(error.code == .failedPrecondition) }
            try await controller.delete("b", force: true, keepDisks: true)
            #expect(fake.calls.last?.arguments == ["b", "force=true", "deleteDisks=false"])
            do {
                _ = try await controller.create(VMSpec(name: "c", vcpus: 0, boot: Self.kernel))
                Issue.record("vcpus 0 was accepted")
            } catch let error as LQXError { #expect(error.code == .invalidSpec && error.message.contains("vcpus")) }
            #expect(!fake.calls.contains { $0.method == "create" && $0.arguments == ["c"] })
            #expect(throws: LQXError.self) { try MigrationRequest(destinationURI: "host") }
            #expect(throws: LQXError.self) {
                try MigrationRequest(destinationURI: "qemu+tcp://h/system", migrationAddress: "tcp://x:1 y")
            }
        }
    }

    @Test("the manager follows events: states, waits that end, a VM removed by an event")
    func events() async throws {
        try await Self.withController { fake, controller in
            _ = try await controller.create(VMSpec(name: "d", boot: Self.kernel))
            _ = try await controller.start("d")
            #expect(controller.manager.knownState("d") == .running)
            fake.guestChanged("d", to: .shutOff)
            #expect(await controller.manager.waitForState("d", timeout: .seconds(5)) { $0 == .shutOff })
            #expect(await controller.manager.waitForState("d", timeout: .milliseconds(50)) { $0 == .running } == false)
            try await controller.delete("d", force: false, keepDisks: false)
            #expect(await controller.manager.waitForState("d", timeout: .milliseconds(200)) { _ in true } == false)
            #expect(controller.manager.counts().vms == 0)
        }
    }
}

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
            services: [NodeService(controller: VMController(manager: manager), nodeName: "unit")])
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
        _ = try await fake.create(VMSpec(name: "web", boot: NodeCoreTests.kernel))
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
