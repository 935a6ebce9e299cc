import ControlPlaneAPI
import Foundation
import LQXModel
import LQXServer
import LQXTestSupport
import NodeTestSupport
import Testing

extension ClusterSystemTests {
    @Test(
        "drain by live migration: a node on this host's libvirtd → a node on another (the peer libvirtd), a writable disk on their shared storage: the same boot, epoch 2, never stopped, the disk's writes kept"
    )
    func drainByLiveMigration() async throws {
        guard LibvirtAvailability.available else { return }
        let image = TestGuest.imageDirectory
        let kernel = image + "/vmlinuz", initrd = image + "/initramfs.cpio"
        try #require(FileManager.default.fileExists(atPath: kernel), "guest image missing")
        let peer = try LibvirtPeer.start()
        let (root, cp) = try await startedControlPlane()
        defer { tearDown(root, cp) }
        let admin = try cp.adminToken
        let metadata = bearer(admin)
        let source = "mig-\(getpid())-a", target = "mig-\(getpid())-b"
        // Another host keeps its node's directories at the same paths (the defaults everywhere):
        // in the peer's mount namespace the target's own directories are mounted at the source's.
        let shared = (state: root + "/\(source)/state", run: root + "/\(source)/run")
        let own = (state: root + "/\(target)/state", run: root + "/\(target)/run")
        for directory in [shared.state, shared.run, own.state, own.run] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            chmod(directory, 0o755)
        }
        for (from, to) in [(own.state, shared.state), (own.run, shared.run)] {
            let mounted = try peer.inNamespace(["mount", "--bind", from, to])
            try #require(mounted.status == 0, "bind mount in the peer's namespace: \(mounted.stderr)")
        }
        defer {
            _ = try? peer.inNamespace(["umount", shared.state])
            _ = try? peer.inNamespace(["umount", shared.run])
        }
        // Storage both hosts mount at the same path (the peer's namespace sees this directory):
        // declared with --shared-storage by both nodes, the VM's writable disk lies on it.
        let storage = root + "/shared-storage"
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        chmod(storage, 0o755)
        let disk = storage + "/mover.img"
        #expect(FileManager.default.createFile(atPath: disk, contents: Data(count: 4 << 20)))
        var nodes: [Daemon] = []
        defer { for node in nodes { node.kill() } }
        let first = try await cp.nodeService { try await $0.createJoinToken(.init(), metadata: metadata) }.token
        nodes.append(
            try startNode(
                root, source, port: Daemon.freePort(), controlPlane: cp, token: first, libvirt: "qemu:///system",
                extra: ["--telemetry-interval", "1", "--shared-storage", storage]))
        let second = try await cp.nodeService { try await $0.createJoinToken(.init(), metadata: metadata) }.token
        nodes.append(
            try Daemon(
                "/usr/bin/nsenter",
                [
                    "-t", String(peer.pid), "-m", "--", Command.binary("lqx-node"), "--listen",
                    "127.0.0.1:\(Daemon.freePort())", "--libvirt-uri", "qemu:///system", "--state-dir", shared.state,
                    "--run-dir", shared.run, "--node-name", target, "--memory-trim", "0", "--telemetry-interval", "1",
                    "--migration-uri", peer.uri, "--migration-address", "127.0.0.1", "--shared-storage", storage,
                    "--control-plane",
                    cp.api.description, "--join-token", second, "--ca-sha256", cp.fingerprint,
                ], logPath: root + "/\(target).log"))
        for node in nodes {
            #expect(await node.line()?.hasPrefix("lqx-node listening") == true, "\(node.log)")
        }
        var listed: [Limiquantix_Compute_V1_Node] = []
        for _ in 0..<100 {
            listed = try await cp.nodeService { try await $0.listNodes(.init(), metadata: metadata).nodes }
            if listed.count(where: { $0.status.phase == .ready }) == 2 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        // The first node wrote the storage's id, the second read it: the same storage.
        let storageID = try String(contentsOfFile: storage + "/" + SharedStorage.markerName, encoding: .utf8)
            .trimmingCharacters(in: .newlines)
        let storages = listed.map { $0.status.sharedStorage.map { "\($0.id) \($0.path)" } }
        #expect(storages == [["\(storageID) \(storage)"], ["\(storageID) \(storage)"]], "\(storages)")
        let lqx = ["--server", cp.api.description, "--token", admin, "--ca", cp.caFile]
        // Created on the source: the target is cordoned meanwhile.
        let cordon = try await Command.output(Command.binary("lqx"), lqx + ["node", "cordon", target])
        #expect(cordon.status == 0, "\(cordon)")
        let id = try await createGuest(
            cp, token: admin, "mover", kernel: kernel, initrd: initrd, memory: 384, disks: [disk]
        ).metadata.id
        defer {
            _ = virsh(["destroy", id])
            _ = peer.virsh(["destroy", id])
            _ = virsh(["undefine", "--nvram", id])
            _ = peer.virsh(["undefine", "--nvram", id])
        }
        let running = try await waitFor(cp, token: admin, "mover") {
            $0.status.phase == .running && $0.status.agent.connected
        }
        #expect(running?.status.node == source)
        let uncordon = try await Command.output(Command.binary("lqx"), lqx + ["node", "uncordon", target])
        #expect(uncordon.status == 0, "\(uncordon)")
        let (code, bootID) = try await exec(cp, token: admin, "mover", ["cat", "/proc/sys/kernel/random/boot_id"])
        #expect(code == 0 && bootID.count == 37, "\(bootID)")
        let (wrote, _) = try await exec(
            cp, token: admin, "mover",
            ["sh", "-c", "printf BEFORE | dd of=/dev/vda bs=6 count=1 conv=notrunc,fsync 2>/dev/null"])
        #expect(wrote == 0)

        let drain = try await Command.output(Command.binary("lqx"), lqx + ["node", "drain", source])
        #expect(drain.status == 0 && drain.stdout.contains("MAINTENANCE"), "\(drain)")
        let moved = try await waitFor(cp, token: admin, "mover", timeout: .seconds(120)) {
            $0.status.phase == .running && $0.status.agent.connected && $0.status.node == target
        }
        #expect(moved?.status.epoch == 2, "\(moved.map { "\($0.status)" } ?? "")")
        let (after, sameBoot) = try await exec(cp, token: admin, "mover", ["cat", "/proc/sys/kernel/random/boot_id"])
        #expect(after == 0 && sameBoot == bootID, "live: the same boot (\(bootID)) → \(sameBoot)")
        // The target's QEMU has the same file: what was written before is read back past the
        // guest's cache, what is written now reaches the file on the shared storage.
        let (read, before) = try await exec(
            cp, token: admin, "mover",
            [
                "sh", "-c",
                "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=6 count=1 status=none; printf AFTER! | dd of=/dev/vda bs=6 seek=1 count=1 conv=notrunc,fsync 2>/dev/null",
            ])
        #expect(read == 0 && before == "BEFORE", "\(before)")
        let written = try FileHandle(forReadingFrom: URL(fileURLWithPath: disk)).read(upToCount: 12)
        #expect(written.map { String(decoding: $0, as: UTF8.self) } == "BEFOREAFTER!")
        #expect(peer.virsh(["domstate", id]).contains("running"))
        #expect(!virsh(["list", "--all", "--name"]).contains(id), "the source no longer has it")
        let events = try await Command.output(Command.binary("lqx"), lqx + ["events", "--vm", "mover"])
        #expect(events.stdout.contains("Migrating") && events.stdout.contains("Migrated"), "\(events)")
        #expect(!events.stdout.contains("Evicted"), "moved live, not by stop and start: \(events)")

        _ = try await vms(cp) { try await $0.deleteVM(.with { $0.name = "mover" }, metadata: metadata) }
        var gone = false
        for _ in 0..<120 where !gone {
            gone = !peer.virsh(["list", "--all", "--name"]).contains(id)
            if !gone { try await Task.sleep(for: .milliseconds(500)) }
        }
        #expect(gone, "deleted on the target's libvirt too")
    }
}
