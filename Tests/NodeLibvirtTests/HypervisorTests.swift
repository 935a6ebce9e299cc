import Foundation
import LQXModel
import LQXTestSupport
import NodeTestSupport
import Testing

@testable import NodeCore
@testable import NodeLibvirt

/// Create/delete against the real libvirtd: what is refused, and that nothing is left behind.
@Suite("libvirt hypervisor: create and delete", .serialized)
struct HypervisorTests {
    static let kernelFile: String = {
        let path = NSTemporaryDirectory() + "lqx-node-test-kernel-\(getpid())"
        _ = FileManager.default.createFile(atPath: path, contents: Data("not a kernel".utf8))
        return path
    }()

    func spec(_ name: String, nics: [NICSpec] = [], vcpus: Int = 1) -> VMSpec {
        VMSpec(
            name: name, vcpus: vcpus, memoryMiB: 128, boot: .kernel(path: Self.kernelFile, initrd: nil, cmdline: ""),
            nics: nics)
    }

    @Test("create defines a stopped VM with its directories; delete removes all of it")
    func createAndDelete() async throws {
        guard LibvirtAvailability.available else { return }
        let node = try TestNode()
        defer { node.remove() }
        let hypervisor = try LibvirtHypervisor(layout: node.layout)
        let name = TestNode.vmName("create")
        let status = try await hypervisor.create(
            VMSpec(
                name: name, memoryMiB: 128, boot: .disk,
                disks: [.init(source: .new(sizeGiB: 1)), .init(source: .clone(backing: try makeImage(node)))]))
        #expect(status.state == .shutOff)
        #expect(try await hypervisor.list().map(\.name).contains(name))
        #expect(FileManager.default.fileExists(atPath: node.layout.vmState(name) + "/disk0.qcow2"))
        #expect(FileManager.default.fileExists(atPath: node.layout.vmState(name) + "/disk1.qcow2"))
        try await hypervisor.delete(name, force: false, deleteDisks: true)
        #expect(try await !hypervisor.list().map(\.name).contains(name))
        #expect(!FileManager.default.fileExists(atPath: node.layout.vmState(name)))
        #expect(!FileManager.default.fileExists(atPath: node.layout.vmRun(name)))
        let missing = await #expect(throws: LQXError.self) { try await hypervisor.status(name) }
        #expect(missing?.code == .notFound)
    }

    @Test(
        "delete keeping disks: a VM without node-created disks can be defined again; kept disks are never overwritten")
    func keepDisksThenCreateAgain() async throws {
        guard LibvirtAvailability.available else { return }
        let node = try TestNode()
        defer { node.remove() }
        let hypervisor = try LibvirtHypervisor(layout: node.layout)
        // A kernel-booted VM moving away and back (a drain, a NoExecute eviction): nothing kept.
        let moving = TestNode.vmName("moving")
        _ = try await hypervisor.create(spec(moving))
        try await hypervisor.delete(moving, force: false, deleteDisks: false)
        #expect(!FileManager.default.fileExists(atPath: node.layout.vmState(moving)))
        #expect(try await hypervisor.create(spec(moving)).state == .shutOff)
        try await hypervisor.delete(moving, force: false, deleteDisks: true)
        // A VM with a disk the node created: the kept image blocks a new definition by name.
        let kept = TestNode.vmName("kept")
        let withDisk = VMSpec(name: kept, memoryMiB: 128, boot: .disk, disks: [.init(source: .new(sizeGiB: 1))])
        _ = try await hypervisor.create(withDisk)
        try await hypervisor.delete(kept, force: false, deleteDisks: false)
        let image = node.layout.vmState(kept) + "/disk0.qcow2"
        #expect(FileManager.default.fileExists(atPath: image))
        let refused = await #expect(throws: LQXError.self) { try await hypervisor.create(withDisk) }
        #expect(refused?.code == .alreadyExists)
        #expect(refused?.message.contains("was not cleaned up") == true)
        #expect(FileManager.default.fileExists(atPath: image))
    }

    @Test("two nodes on one libvirtd: neither lists, reads or deletes the other's VM")
    func nodesSharingLibvirt() async throws {
        guard LibvirtAvailability.available else { return }
        let first = try TestNode(), second = try TestNode()
        defer {
            first.remove()
            second.remove()
        }
        let mine = try LibvirtHypervisor(layout: first.layout)
        let other = try LibvirtHypervisor(layout: second.layout)
        let name = TestNode.vmName("shared")
        _ = try await mine.create(spec(name))
        #expect(try await mine.list().map(\.name).contains(name))
        #expect(try await !other.list().map(\.name).contains(name))
        #expect(try await other.managedStatus(name) == nil)
        let read = await #expect(throws: LQXError.self) { try await other.status(name) }
        #expect(read?.code == .notFound)
        #expect(read?.message.contains("another node") == true)
        let deleted = await #expect(throws: LQXError.self) {
            try await other.delete(name, force: true, deleteDisks: true)
        }
        #expect(deleted?.code == .notFound)
        #expect(try await mine.status(name).state == .shutOff)
        try await mine.delete(name, force: false, deleteDisks: true)
    }

    private func makeImage(_ node: TestNode) throws -> String {
        let path = node.root + "/base.qcow2"
        let result = try Command.run("/usr/bin/qemu-img", ["create", "-q", "-f", "qcow2", path, "1G"])
        #expect(result.status == 0, "qemu-img create: \(result.stderr)")
        return path
    }

    @Test("bad specs, a duplicate name, an unknown network or file: clear errors and nothing left behind")
    func refusals() async throws {
        guard LibvirtAvailability.available else { return }
        let node = try TestNode()
        defer { node.remove() }
        let hypervisor = try LibvirtHypervisor(layout: node.layout)
        let name = TestNode.vmName("refusals")
        func expectError(_ code: LQXError.Code, _ text: String, _ spec: VMSpec) async {
            let error = await #expect(throws: LQXError.self) { _ = try await hypervisor.create(spec) }
            #expect(error?.code == code)
            #expect(error?.message.contains(text) == true, "\(String(describing: error))")
        }
        await expectError(.invalidSpec, "vcpus must be greater than 0", spec(name, vcpus: 0))
        var small = spec(name)
        small.memoryMiB = 64
        await expectError(.invalidSpec, "memory must be at least 128 MiB", small)
        await expectError(
            .notFound, "libvirt network lqx-no-such-net does not exist",
            spec(name, nics: [.init(.network("lqx-no-such-net"))]))
        await expectError(.notFound, "bridge lqxnobr0 does not exist", spec(name, nics: [.init(.bridge("lqxnobr0"))]))
        var missingKernel = spec(name)
        missingKernel.boot = .kernel(path: "/nonexistent/vmlinuz", initrd: nil, cmdline: "")
        await expectError(.notFound, "kernel: /nonexistent/vmlinuz does not exist", missingKernel)
        #expect(node.contents().isEmpty, "left behind: \(node.contents())")
        #expect(try await !hypervisor.list().map(\.name).contains(name))

        _ = try await hypervisor.create(spec(name))
        let before = node.contents()
        await expectError(.alreadyExists, "exists already", spec(name))
        #expect(node.contents() == before)
        try await hypervisor.delete(name, force: false, deleteDisks: true)
        #expect(try await !hypervisor.list().map(\.name).contains(name))
    }
}
