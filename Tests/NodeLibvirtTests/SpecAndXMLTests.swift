import Foundation
import LQXModel
import NodeTestSupport
import Testing

@testable import NodeCore
@testable import NodeLibvirt

@Suite("domain XML from VM specs")
struct SpecAndXMLTests {
    @Test("a good spec passes; generated MACs are stable, distinct per NIC and locally administered")
    func goodSpecAndMACs() throws {
        try Self.plans()[1].spec.validate()
        let uuid = "6f1c0d5e-8a8e-4c39-9c1e-5b9f7d1a2b3c"
        #expect(DomainPlan.generatedMAC(uuid: uuid, index: 0) == DomainPlan.generatedMAC(uuid: uuid, index: 0))
        #expect(DomainPlan.generatedMAC(uuid: uuid, index: 0) != DomainPlan.generatedMAC(uuid: uuid, index: 1))
        #expect(DomainPlan.generatedMAC(uuid: uuid, index: 0).hasPrefix("52:54:00:"))
        #expect(DomainPlan.generatedMAC(uuid: uuid, index: 0).count == 17)
    }

    @Test("XML escapes text and attributes")
    func escaping() {
        #expect(XMLWriter.escape("a<b>&'\"") == "a&lt;b&gt;&amp;&apos;&quot;")
    }

    /// Representative plans: direct kernel boot (TCG), a disk VM with UEFI, NICs and a SCSI disk,
    /// and a KVM VM with vsock and an explicit topology.
    static func plans() -> [(name: String, spec: VMSpec, plan: DomainPlan)] {
        let kernel = VMSpec(
            name: "kernel-boot", vcpus: 2, memoryMiB: 256,
            boot: .kernel(
                path: "/images/vmlinuz", initrd: "/images/initramfs.cpio", cmdline: "console=ttyS0 rdinit=/init"))
        let disk = VMSpec(
            name: "web-1", vcpus: 4, memoryMiB: 4096, firmware: .uefi, boot: .disk,
            disks: [
                .init(source: .clone(backing: "/images/debian-12.qcow2")), .init(source: .new(sizeGiB: 20), bus: .scsi),
                .init(source: .path("/images/seed.iso"), bus: .sata, readOnly: true),
            ],
            nics: [.init(.network("default")), .init(.bridge("br0"), mac: "52:54:00:aa:bb:cc")], watchdog: .poweroff)
        let kvm = VMSpec(
            name: "db.primary", vcpus: 8, topology: .init(sockets: 2, cores: 2, threads: 2), memoryMiB: 16384,
            boot: .disk, disks: [.init(source: .path("/var/lib/images/db.raw"))], watchdog: .none)
        let uuid = "6f1c0d5e-8a8e-4c39-9c1e-5b9f7d1a2b3c"
        func plan(
            _ spec: VMSpec, type: DomainPlan.DomainType, disks: [DomainPlan.PlannedDisk], cid: UInt32? = nil,
            uefi: Bool = false
        ) -> DomainPlan {
            DomainPlan(
                spec: spec, uuid: uuid, domainType: type, emulator: "/usr/bin/qemu-system-x86_64", disks: disks,
                macs: spec.nics.enumerated().map { $1.mac ?? DomainPlan.generatedMAC(uuid: uuid, index: $0) },
                agentSocket: "/run/limiquantix/node/vms/\(spec.name)/agent.sock",
                consoleLog: "/var/lib/limiquantix/node/vms/\(spec.name)/console.log", vsockCID: cid,
                uefi: uefi
                    ? .init(
                        code: "/usr/share/OVMF/OVMF_CODE.fd", varsTemplate: "/usr/share/OVMF/OVMF_VARS.fd",
                        nvram: "/var/lib/limiquantix/node/vms/\(spec.name)/VARS.fd") : nil)
        }
        return [
            ("kernel-boot-tcg", kernel, plan(kernel, type: .qemu, disks: [])),
            (
                "disk-uefi-nics", disk,
                plan(
                    disk, type: .qemu,
                    disks: [
                        .init(
                            path: "/var/lib/limiquantix/node/vms/web-1/disk0.qcow2", format: "qcow2", bus: .virtio,
                            readOnly: false),
                        .init(
                            path: "/var/lib/limiquantix/node/vms/web-1/disk1.qcow2", format: "qcow2", bus: .scsi,
                            readOnly: false),
                        .init(path: "/images/seed.iso", format: "raw", bus: .sata, readOnly: true),
                    ], uefi: true)
            ),
            (
                "kvm-vsock-topology", kvm,
                plan(
                    kvm, type: .kvm,
                    disks: [
                        .init(path: "/var/lib/images/db.raw", format: "raw", bus: .virtio, readOnly: false)
                    ], cid: 42)
            ),
        ]
    }

    static var goldenDirectory: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden").path
    }

    @Test("domain XML matches the golden files (LQX_UPDATE_GOLDEN=1 rewrites them)", arguments: plans().map(\.name))
    func golden(name: String) throws {
        let plan = try #require(Self.plans().first { $0.name == name }).plan
        let path = "\(Self.goldenDirectory)/\(name).xml"
        let xml = plan.domainXML()
        if ProcessInfo.processInfo.environment["LQX_UPDATE_GOLDEN"] != nil {
            try xml.write(toFile: path, atomically: true, encoding: .utf8)
        }
        let expected = try String(contentsOfFile: path, encoding: .utf8)
        #expect(xml == expected)
    }

    @Test("libvirt accepts every golden domain (defined, read back, undefined)", arguments: plans().map(\.name))
    func libvirtAccepts(name: String) throws {
        guard LibvirtAvailability.available else { return }
        var plan = try #require(Self.plans().first { $0.name == name }).plan
        plan.spec.name = TestNode.vmName(plan.spec.name)
        plan.uuid = UUID().uuidString.lowercased()
        let connection = try LibvirtConnection(uri: "qemu:///system")
        let domain = try connection.define(xml: plan.domainXML())
        defer { try? domain.undefine() }
        #expect(domain.name == plan.spec.name)
        #expect(domain.uuid == plan.uuid)
        #expect(try domain.state() == .shutOff)
        let back = try domain.xml(inactive: true)
        #expect(back.contains("name='\(DomainPlan.agentPort)'"))
        #expect(back.contains(DomainPlan.metadataNamespace))
    }
}
