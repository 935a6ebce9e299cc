import Foundation
import LQXModel
import Logging
import NodeCoreTesting
import Testing

@testable import NodeCore

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
