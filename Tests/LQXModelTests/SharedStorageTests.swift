import LQXModel
import Testing

@Suite("shared storage: ids, paths, which disks can follow a live migration")
struct SharedStorageTests {
    let id = "0123456789abcdef0123456789abcdef"

    @Test("ids are 32 lowercase hex digits; paths absolute, normalized, not /")
    func validation() throws {
        #expect(throws: Never.self) { try SharedStorage(id: id, path: "/srv/shared") }
        for bad in ["", "0123", String(id.uppercased()), String(id.dropLast()) + "g", id + "0"] {
            #expect(throws: LQXError.self) { try SharedStorage(id: bad, path: "/srv/shared") }
        }
        for bad in ["/", "relative", "/srv/", "/srv//x", "/srv/./x", "/srv/../etc", "/srv/\0x", ""] {
            do {
                _ = try SharedStorage(id: id, path: bad)
                Issue.record("accepted \(bad.debugDescription)")
            } catch {
                #expect(error.code == .invalidSpec && error.message.hasPrefix("shared storage path"))
            }
        }
    }

    @Test("holds files below its directory only, never by a prefix of a name or through ..")
    func holds() throws {
        let storage = try SharedStorage(id: id, path: "/srv/shared")
        #expect(storage.holds("/srv/shared/vm/disk.qcow2"))
        #expect(storage.holds("/srv/shared/d.img"))
        #expect(!storage.holds("/srv/shared"))
        #expect(!storage.holds("/srv/shared-not/d.img"))
        #expect(!storage.holds("/srv/shared/../etc/shadow"))
        #expect(!storage.holds("/srv/shared/./d.img"))
        #expect(!storage.holds("/srv/shared//d.img"))
        #expect(!storage.holds("/other/d.img"))
    }

    @Test("the storages a VM's writable disks need; nil when a disk cannot follow")
    func migrationStorages() throws {
        let a = try SharedStorage(id: id, path: "/srv/a")
        let b = try SharedStorage(id: String(repeating: "b", count: 32), path: "/srv/b")
        var spec = VMSpec(name: "vm", vcpus: 1, memoryMiB: 256, boot: .kernel(path: "/k", initrd: nil, cmdline: ""))
        #expect(spec.liveMigrationStorages(on: []) == [], "no disk: nothing needed")
        spec.disks = [DiskSpec(source: .path("/images/base.iso"), readOnly: true)]
        #expect(spec.liveMigrationStorages(on: []) == [], "a read-only path disk: only the file (placement checks it)")
        spec.disks.append(DiskSpec(source: .path("/srv/a/vm.img")))
        #expect(spec.liveMigrationStorages(on: [a, b]) == [a])
        #expect(spec.liveMigrationStorages(on: [b]) == nil, "writable, on storage the node does not share")
        spec.disks.append(DiskSpec(source: .path("/srv/b/data.img")))
        #expect(spec.liveMigrationStorages(on: [a, b]) == [a, b])
        spec.disks.append(DiskSpec(source: .new(sizeGiB: 1)))
        #expect(spec.liveMigrationStorages(on: [a, b]) == nil, "a disk the node created cannot leave it")
        spec.disks = [DiskSpec(source: .clone(backing: "/srv/a/base.qcow2"))]
        #expect(spec.liveMigrationStorages(on: [a]) == nil, "a clone's overlay is in the node's own storage")
    }
}
