import Foundation
import LQXModel
import Testing

@Suite("VM spec validation")
struct VMSpecTests {
    @Test(
        "bad specs get an error naming the field",
        arguments: [
            (
                VMSpec(name: "a", vcpus: 0, boot: .kernel(path: "/k", initrd: nil, cmdline: "")),
                "vcpus must be greater than 0"
            ),
            (
                VMSpec(name: "a", memoryMiB: 64, boot: .kernel(path: "/k", initrd: nil, cmdline: "")),
                "memory must be at least 128 MiB"
            ),
            (VMSpec(name: "", boot: .kernel(path: "/k", initrd: nil, cmdline: "")), "name must be 1 to 64"),
            (VMSpec(name: "../etc", boot: .kernel(path: "/k", initrd: nil, cmdline: "")), "may only use letters"),
            (VMSpec(name: "a b", boot: .kernel(path: "/k", initrd: nil, cmdline: "")), "may only use letters"),
            (
                VMSpec(
                    name: "a", vcpus: 4, topology: .init(sockets: 1, cores: 3, threads: 1), boot: .disk,
                    disks: [.init(source: .new(sizeGiB: 1))]), "topology"
            ),
            (VMSpec(name: "a", boot: .disk), "needs at least one disk"),
            (
                VMSpec(name: "a", boot: .kernel(path: "relative", initrd: nil, cmdline: "")),
                "kernel must be an absolute path"
            ),
            (
                VMSpec(name: "a", boot: .disk, disks: [.init(source: .new(sizeGiB: 0))]),
                "disks[0].size must be greater than 0"
            ),
            (
                VMSpec(
                    name: "a", boot: .kernel(path: "/k", initrd: nil, cmdline: ""),
                    nics: [.init(.network("default"), mac: "zz:00:00:00:00:00")]), "nics[0].mac"
            ),
            (
                VMSpec(
                    name: "a", boot: .kernel(path: "/k", initrd: nil, cmdline: ""),
                    nics: [.init(.network("default"), mac: "01:00:00:00:00:01")]), "multicast"
            ),
        ])
    func badSpecs(spec: VMSpec, expected: String) {
        #expect {
            try spec.validate()
        } throws: { error in
            guard let error = error as? LQXError else { return false }
            return error.code == .invalidSpec && error.message.contains(expected)
        }
    }

    @Test("limits: vcpus, memory, disks, NICs, duplicate MACs, names")
    func limits() {
        let kernel = VMSpec.Boot.kernel(path: "/k", initrd: nil, cmdline: "")
        let cases: [(VMSpec, String)] = [
            (VMSpec(name: "a", vcpus: 289, boot: kernel), "vcpus must be at most 288"),
            (VMSpec(name: "a", memoryMiB: 17 << 20, boot: kernel), "too large"),
            (
                VMSpec(name: "a", boot: .disk, disks: Array(repeating: .init(source: .new(sizeGiB: 1)), count: 27)),
                "at most 26 disks"
            ),
            (
                VMSpec(
                    name: "a", boot: kernel,
                    nics: [
                        .init(.network("default"), mac: "52:54:00:00:00:01"),
                        .init(.bridge("br0"), mac: "52:54:00:00:00:01"),
                    ]), "is used twice"
            ),
            (VMSpec(name: "-a", boot: kernel), "must start with a letter or digit"),
            (VMSpec(name: String(repeating: "a", count: 65), boot: kernel), "1 to 64"),
            (VMSpec(name: "a", boot: .kernel(path: "/k", initrd: nil, cmdline: "a\0b")), "cmdline"),
        ]
        for (spec, expected) in cases {
            #expect(throws: LQXError.self) { try spec.validate() }
            do { try spec.validate() } catch {
                #expect(error.code == .invalidSpec)
                #expect(error.message.contains(expected), "\(error.message) should contain \(expected)")
            }
        }
        #expect(throws: Never.self) { try VMSpec(name: "ok-1.a_b", boot: kernel).validate() }
    }

    @Test("a spec survives JSON (the node keeps it in spec.json)")
    func codable() throws {
        let spec = VMSpec(
            name: "web", vcpus: 2, topology: .init(sockets: 1, cores: 2, threads: 1), memoryMiB: 1024,
            firmware: .uefi, boot: .disk, disks: [.init(source: .clone(backing: "/i.qcow2"), bus: .scsi)],
            nics: [.init(.bridge("br0"), mac: "52:54:00:aa:bb:cc")], watchdog: .poweroff)
        let data = try JSONEncoder().encode(spec)
        #expect(try JSONDecoder().decode(VMSpec.self, from: data) == spec)
    }
}
