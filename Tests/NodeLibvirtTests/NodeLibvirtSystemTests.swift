import AgentProtocol
import Foundation
import HostBroker
import LQXModel
import LQXTestSupport
import Logging
import NodeCoreTesting
import NodeTestSupport
import Testing

@testable import NodeCore
@testable import NodeLibvirt

/// A real VM through libvirtd: the test guest image (packaging/guest-image/build.sh) booted by
/// kernel + initramfs, its agent reached on the socket libvirt binds for the virtio-serial channel.
@Suite("node: a real VM under libvirt", .serialized)
struct NodeLibvirtSystemTests {
    static var imageDirectory: String { TestGuest.imageDirectory }
    static var cmdline: String { TestGuest.cmdline }

    @Test(
        "create → start → agent session → exec → pause/resume → running delete refused → ACPI stop → force stop → delete"
    )
    func lifecycle() async throws {
        guard LibvirtAvailability.available else { return }
        let kernel = Self.imageDirectory + "/vmlinuz", initrd = Self.imageDirectory + "/initramfs.cpio"
        try #require(
            FileManager.default.fileExists(atPath: kernel),
            "guest image missing: run packaging/guest-image/build.sh (scripts/test.sh does)")
        let node = try TestNode()
        defer { node.remove() }
        let hypervisor = try LibvirtHypervisor(layout: node.layout)
        let name = TestNode.vmName("life")
        let created = try await hypervisor.create(
            VMSpec(
                name: name, vcpus: 2, memoryMiB: 512,
                boot: .kernel(path: kernel, initrd: initrd, cmdline: NodeLibvirtSystemTests.cmdline)))
        do {
            try await hypervisor.start(name)
            #expect(try await hypervisor.status(name).state == .running)

            var logger = Logger(label: "node-test")
            logger.logLevel = .critical
            let client = AgentClient(
                address: .unix(path: created.agentSocket),
                configuration: BrokerConfiguration(reconnectBackoff: .milliseconds(50)...(.milliseconds(200))),
                logger: logger)
            let runner = Task { try await client.run() }
            defer { runner.cancel() }
            try #require(
                try await untilGuestReady(name, consoleLog: created.consoleLog) {
                    try await hypervisor.powerCycle(name)
                } ready: {
                    (try? await client.session(timeout: .seconds(1))) != nil
                }, "the agent of \(name) did not connect")
            let session = try await client.session(timeout: .seconds(5))
            let info = try await session.info()
            #expect(info.os.id == "lqx-guest")
            let (out, _, status) = try await session.exec(ExecOptions(["cat", "/proc/cmdline"])).collect()
            #expect(status.exitCode == 0)
            #expect(String(buffer: out).contains("rdinit=/init"))

            try await hypervisor.pause(name)
            #expect(try await hypervisor.status(name).state == .paused)
            try await hypervisor.resume(name)
            #expect(try await hypervisor.status(name).state == .running)
            _ = try await session.ping()

            let refused = await #expect(throws: LQXError.self) {
                try await hypervisor.delete(name, force: false, deleteDisks: true)
            }
            #expect(refused?.code == .failedPrecondition)
            #expect(try await hypervisor.status(name).state == .running)

            // The ACPI power button: the guest's acpid powers it off (the path a graceful stop takes
            // when no agent answers).
            try await hypervisor.requestShutdown(name)
            let deadline = ContinuousClock.now + .seconds(60)
            while try await hypervisor.status(name).state.isActive, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(try await hypervisor.status(name).state == .shutOff, "the guest ignored the ACPI power button")
            // Force stop: started again, then stopped at once.
            try await hypervisor.start(name)
            try await hypervisor.forceStop(name)
            #expect(try await hypervisor.status(name).state == .shutOff)
            let console = (try? String(contentsOfFile: created.consoleLog, encoding: .utf8)) ?? ""
            #expect(console.contains("rcS"), "console log: \(console.suffix(500))")
            #expect(console.contains("acpid: power button pressed"), "console log: \(console.suffix(500))")
        } catch {
            await abandon(name, hypervisor, console: created.consoleLog)
            throw error
        }
        try await hypervisor.delete(name, force: false, deleteDisks: true)
        let leftovers = node.contents().filter { $0.contains(name) }
        #expect(leftovers.isEmpty, "left behind: \(leftovers)")
    }
}

extension NodeLibvirtSystemTests {
    @Test("UEFI boot with a NIC on a libvirt network: the guest sees EFI and the MAC from the spec")
    func uefiAndNetwork() async throws {
        guard LibvirtAvailability.available else { return }
        let image = Self.imageDirectory
        try #require(FileManager.default.fileExists(atPath: image + "/vmlinuz"), "guest image missing")
        let node = try TestNode()
        defer { node.remove() }
        let hypervisor = try LibvirtHypervisor(layout: node.layout)
        try #require(hypervisor.facts.ovmf != nil, "OVMF is not installed (scripts/setup.sh installs ovmf)")
        // An isolated network (a bridge, no addresses, so no dnsmasq): created for this test only.
        let network = "lqx-test-\(getpid())"
        let bridge = "lqxt\(getpid() % 100_000)"
        let definition = node.root + "/network.xml"
        try "<network><name>\(network)</name><bridge name='\(bridge)' stp='off'/></network>".write(
            toFile: definition, atomically: true, encoding: .utf8)
        let created = virsh(["net-create", definition])
        try #require(created.contains("created"), "net-create: \(created)")
        defer { _ = virsh(["net-destroy", network]) }
        let name = TestNode.vmName("uefi")
        let mac = "52:54:00:6c:71:78"
        let status = try await hypervisor.create(
            VMSpec(
                name: name, vcpus: 2, memoryMiB: 512, firmware: .uefi,
                boot: .kernel(path: image + "/vmlinuz", initrd: image + "/initramfs.cpio", cmdline: Self.cmdline),
                nics: [NICSpec(.network(network), mac: mac)]))
        do {
            try await hypervisor.start(name)
            let client = AgentClient(
                address: .unix(path: status.agentSocket),
                configuration: BrokerConfiguration(reconnectBackoff: .milliseconds(50)...(.milliseconds(200))))
            let runner = Task { try await client.run() }
            defer { runner.cancel() }
            try #require(
                try await untilGuestReady(name, consoleLog: status.consoleLog, timeout: .seconds(180)) {
                    try await hypervisor.powerCycle(name)
                } ready: {
                    (try? await client.session(timeout: .seconds(1))) != nil
                }, "the agent of \(name) did not connect")
            let session = try await client.session(timeout: .seconds(5))
            let (efi, _, efiStatus) = try await session.exec(ExecOptions(["ls", "/sys/firmware/efi"])).collect()
            #expect(efiStatus.exitCode == 0 && String(buffer: efi).contains("efivars"), "no EFI in the guest")
            let (address, _, _) = try await session.exec(ExecOptions(["cat", "/sys/class/net/eth0/address"])).collect()
            #expect(String(buffer: address) == mac + "\n")
            #expect(virsh(["domiflist", name]).contains(network))
            try await hypervisor.forceStop(name)
        } catch {
            await abandon(name, hypervisor, console: status.consoleLog)
            throw error
        }
        try await hypervisor.delete(name, force: false, deleteDisks: true)
        #expect(node.contents().filter { $0.contains(name) }.isEmpty, "left behind (NVRAM?): \(node.contents())")
    }
}

@Suite("node: events, agents and re-adoption under libvirt", .serialized)
struct NodeManagerSystemTests {
    @Test(
        "events drive the state; the agent follows the VM; a restarted daemon re-adopts it; graceful stop goes through the agent"
    )
    func managerLifecycle() async throws {
        guard LibvirtAvailability.available else { return }
        let image = NodeLibvirtSystemTests.imageDirectory
        try #require(FileManager.default.fileExists(atPath: image + "/vmlinuz"), "guest image missing")
        let node = try TestNode()
        defer { node.remove() }
        var logger = Logger(label: "node-test")
        logger.logLevel = .critical
        let broker = BrokerConfiguration(reconnectBackoff: .milliseconds(50)...(.milliseconds(200)))
        let hypervisor = try LibvirtHypervisor(layout: node.layout, logger: logger)
        let name = TestNode.vmName("managed")
        let created = try await hypervisor.create(
            VMSpec(
                name: name, vcpus: 2, memoryMiB: 512,
                boot: .kernel(
                    path: image + "/vmlinuz", initrd: image + "/initramfs.cpio",
                    cmdline: NodeLibvirtSystemTests.cmdline)))
        do {
            let first = VMManager(
                hypervisor: hypervisor, broker: broker, telemetryInterval: .seconds(1), logger: logger)
            let firstRun = try await ManagerRun(first)
            #expect(first.knownState(name) == .shutOff)
            #expect(first.agent(name) == nil)
            try await hypervisor.start(name)
            #expect(await first.waitForState(name, timeout: .seconds(10)) { $0 == .running })
            try #require(
                try await untilGuestReady(name, consoleLog: created.consoleLog) {
                    try await hypervisor.powerCycle(name)
                } ready: {
                    (try? await first.agentSession(name, timeout: .seconds(1))) != nil
                }, "the agent of \(name) did not connect")
            let session = try await first.agentSession(name, timeout: .seconds(5))
            let bootID = try await session.info().bootID
            let (out, _, status) = try await session.exec(ExecOptions(["echo", "hello"])).collect()
            #expect(status.exitCode == 0)
            #expect(String(buffer: out) == "hello\n")

            // The daemon goes away and comes back: the VM keeps running and is adopted again.
            await firstRun.stop()
            let second = VMManager(
                hypervisor: try LibvirtHypervisor(layout: node.layout, logger: logger), broker: broker,
                telemetryInterval: .seconds(1), logger: logger)
            let secondRun = try await ManagerRun(second)
            defer { secondRun.task.cancel() }
            #expect(second.knownState(name) == .running)
            // A wait whose timeout has already run out ends at once, every time. Its timer once
            // raced its registration and the wait never ended; that showed as `vm stop --timeout 3`
            // of a paused VM hanging in the node API test (2 of 2 runs), while this loop alone
            // did not hit the window: it guards the common path, the API test the race.
            let (finished, finish) = AsyncStream.makeStream(of: Bool.self, bufferingPolicy: .bufferingNewest(2))
            let waits = Task {
                for _ in 0..<500 { _ = await second.waitForState(name, timeout: .zero) { $0 == .shutOff } }
                finish.yield(true)
            }
            let limit = Task {
                try? await Task.sleep(for: .seconds(30))
                finish.yield(false)
            }
            var outcome = finished.makeAsyncIterator()
            #expect(await outcome.next() == true, "a zero-timeout waitForState never returned")
            waits.cancel()
            limit.cancel()
            let again = try await second.agentSession(name, timeout: .seconds(30))
            #expect(try await again.info().bootID == bootID)

            // In-guest telemetry flows per VM: memory close to the spec's 512 MiB.
            let deadline = ContinuousClock.now + .seconds(30)
            while second.telemetry(name) == nil, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            let sample = try #require(second.telemetry(name))
            let totalMiB = Double(sample.memory.totalBytes) / 1_048_576
            #expect(totalMiB > 400 && totalMiB <= 512, "MemTotal \(totalMiB) MiB")

            // Paused and resumed from outside the manager: events keep its state current.
            try await hypervisor.pause(name)
            #expect(await second.waitForState(name, timeout: .seconds(10)) { $0 == .paused })
            try await hypervisor.resume(name)
            #expect(await second.waitForState(name, timeout: .seconds(10)) { $0 == .running })

            let method = try await second.stop(name, timeout: .seconds(30))
            #expect(method == .agent)
            #expect(second.knownState(name) == .shutOff)
            #expect(second.agent(name) == nil)
        } catch {
            await abandon(name, hypervisor, console: created.consoleLog)
            throw error
        }
        try await hypervisor.delete(name, force: false, deleteDisks: true)
    }
}

extension LibvirtHypervisor {
    /// Force stop, then start (a test guest whose kernel stalled while booting).
    func powerCycle(_ name: String) async throws {
        try await forceStop(name)
        try await start(name)
    }
}
