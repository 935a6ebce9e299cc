import Foundation
import HostBroker
import LQXModel
import LQXTestSupport
import NodeDaemon
import NodeTestSupport
import Testing

@testable import NodeCore
@testable import NodeLibvirt

/// `lqx-node` as a process and `lqx --node` as operators run them, against real libvirtd + QEMU.
@Suite("node: lqx-node and lqx --node end to end", .serialized)
struct NodeAPISystemTests {
    @Test(
        "bad specs refused cleanly; create → start → exec → cp → metrics → disks → reboot → snapshot → daemon restart → delete"
    )
    func endToEnd() async throws {
        guard LibvirtAvailability.available else { return }
        let image = TestGuest.imageDirectory
        let kernel = image + "/vmlinuz", initrd = image + "/initramfs.cpio"
        try #require(FileManager.default.fileExists(atPath: kernel), "guest image missing")
        let node = try TestNode()
        defer { node.remove() }
        var daemon = try await NodeDaemonProcess.start(node)
        defer { daemon.stop() }
        let name = TestNode.vmName("api")
        func lqx(_ arguments: [String], stdin: String? = nil) async throws -> CommandResult {
            try await Command.output(Command.binary("lqx"), ["--node", daemon.api] + arguments, stdin: stdin)
        }
        let boot = ["--kernel", kernel, "--initrd", initrd, "--cmdline", TestGuest.cmdline]
        let consoleLog = node.layout.vmState(name) + "/console.log"

        // Bad specs: a clear error naming the problem, exit status 255, nothing left behind.
        let zeroCPUs = try await lqx(["vm", "create", name] + boot + ["--cpus", "0"])
        #expect(zeroCPUs.status == 255)
        #expect(zeroCPUs.stderr.contains("vcpus must be greater than 0") && zeroCPUs.stderr.contains("[invalid_spec]"))
        let tinyMemory = try await lqx(["vm", "create", name] + boot + ["--memory", "64"])
        #expect(tinyMemory.status == 255)
        #expect(tinyMemory.stderr.contains("memory must be at least 128 MiB (got 64 MiB)"), "\(tinyMemory.stderr)")
        let badNetwork = try await lqx(["vm", "create", name] + boot + ["--network", "lqx-no-such-net"])
        #expect(badNetwork.status == 255)
        #expect(
            badNetwork.stderr.contains("lqx-no-such-net does not exist") && badNetwork.stderr.contains("[not_found]"))
        let emptyList = try await lqx(["vm", "list", "-o", "json"])
        #expect(emptyList.status == 0 && !emptyList.stdout.contains(name), "\(emptyList)")
        #expect(node.contents().filter { $0.contains(name) }.isEmpty, "left behind: \(node.contents())")

        let created = try await lqx(
            ["vm", "create", name] + boot + ["--cpus", "2", "--memory", "512", "--new-disk", "1"])
        try #require(created.status == 0, "\(created.stderr)")
        let duplicate = try await lqx(["vm", "create", name] + boot)
        #expect(duplicate.status == 255 && duplicate.stderr.contains("[already_exists]"), "\(duplicate.stderr)")
        do {
            try #require(try await lqx(["vm", "start", name]).status == 0)
            try await waitForAgent(name, lqx, console: consoleLog)

            // exec: output, exit status, stdin.
            let cmdline = try await lqx(["exec", name, "--", "cat", "/proc/cmdline"])
            #expect(cmdline.status == 0 && cmdline.stdout.contains("rdinit=/init"), "\(cmdline)")
            #expect(try await lqx(["exec", name, "--", "sh", "-c", "exit 7"]).status == 7)
            let echoed = try await lqx(["exec", name, "--", "cat"], stdin: "through the node\n")
            #expect(echoed.stdout == "through the node\n", "\(echoed)")
            let tty = try await lqx(["exec", name, "-t", "-n", "--", "sh", "-c", "test -t 1 && echo on-a-tty"])
            #expect(tty.status == 0 && tty.stdout.contains("on-a-tty"), "\(tty)")
            let missingVM = try await lqx(["exec", "lqx-no-such-vm", "--", "true"])
            #expect(missingVM.status == 255 && missingVM.stderr.contains("[not_found]"), "\(missingVM.stderr)")

            // cp both ways, byte for byte.
            let local = node.root + "/payload.bin", back = node.root + "/back.bin"
            let payload = Data((0..<(3 << 20) + 123).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) })
            try payload.write(to: URL(fileURLWithPath: local))
            let up = try await lqx(["cp", local, "\(name):/tmp/payload.bin"])
            #expect(up.status == 0, "\(up.stderr)")
            let down = try await lqx(["cp", "\(name):/tmp/payload.bin", back])
            #expect(down.status == 0, "\(down.stderr)")
            #expect(FileManager.default.contents(atPath: back) == payload)
            let missingFile = try await lqx(["cp", "\(name):/no/such/file", back])
            #expect(
                missingFile.status == 255 && missingFile.stderr.contains("[agent.not_found]"), "\(missingFile.stderr)")
            #expect(FileManager.default.contents(atPath: back) == payload, "a failed download must not touch the file")

            // Telemetry through the node, the metrics endpoint, node info.
            let metrics = try await lqx(["metrics", name, "-o", "json"])
            #expect(metrics.status == 0 && metrics.stdout.contains("\"total_bytes\""), "\(metrics)")
            let health = try await httpGet(daemon.metrics, "/health")
            #expect(health.status == 200 && health.body.contains("\"running\":1"), "\(health)")
            let exposition = try await httpGet(daemon.metrics, "/metrics")
            #expect(exposition.status == 200)
            #expect(exposition.body.contains("lqx_guest_memory_total_bytes{node=\"test-node\",vm=\"\(name)\"}"))
            #expect(exposition.body.contains("lqx_vm_agent_connected{node=\"test-node\",vm=\"\(name)\"} 1"))
            #expect(exposition.body.contains("lqx_node_daemon_resident_bytes{node=\"test-node\"}"))
            let info = try await lqx(["node", "info", "-o", "json"])
            #expect(
                info.status == 0 && info.stdout.contains("\"libvirt_version\"")
                    && info.stdout.contains("\"vms_running\":1"))

            // A disk hot-plugged into the running guest, then removed again.
            let attached = try await lqx(["vm", "attach-disk", name, "--new", "1"])
            #expect(attached.status == 0, "\(attached.stderr)")
            #expect(try await waitForGuest(name, lqx, "test -e /sys/block/vdb"), "vdb never appeared in the guest")
            let detached = try await lqx(["vm", "detach-disk", name, "vdb", "--delete-image"])
            #expect(detached.status == 0, "\(detached.stderr)")
            #expect(try await waitForGuest(name, lqx, "test ! -e /sys/block/vdb"), "vdb still in the guest")
            #expect(!node.contents().contains { $0.hasSuffix("vdb.qcow2") })

            // Reboot through the agent: a new boot id.
            let bootID = try await lqx(["exec", name, "--", "cat", "/proc/sys/kernel/random/boot_id"]).stdout
            #expect(try await lqx(["vm", "reboot", name]).status == 0)
            var newBootID = bootID
            _ = try await untilGuestReady(name, consoleLog: consoleLog, timeout: .seconds(120)) {
                try await powerCycle(name, lqx)
            } ready: {
                let r = try await lqx(["exec", name, "--", "cat", "/proc/sys/kernel/random/boot_id"])
                if r.status == 0 { newBootID = r.stdout }
                return newBootID != bootID
            }
            #expect(newBootID != bootID && !newBootID.isEmpty, "the guest did not reboot")

            // Snapshot of the stopped VM's disk, changed afterwards, reverted.
            let write = { (marker: String) in
                try await lqx([
                    "exec", name, "--", "sh", "-c",
                    "printf \(marker) | dd of=/dev/vda bs=4 count=1 conv=notrunc,fsync 2>/dev/null",
                ])
            }
            #expect(try await write("AAAA").status == 0)
            let stopped = try await lqx(["vm", "stop", name])
            #expect(stopped.status == 0 && stopped.stdout.contains("powered off by its agent"), "\(stopped)")
            #expect(
                try await lqx(["vm", "snapshot", "create", name, "s1", "--description", "marker AAAA"]).status == 0)
            #expect(try await lqx(["vm", "start", name]).status == 0)
            try await waitForAgent(name, lqx, console: consoleLog)
            #expect(try await write("BBBB").status == 0)
            #expect(try await lqx(["vm", "stop", name, "--force"]).stdout.contains("stopped at once"))
            let reverted = try await lqx(["vm", "snapshot", "revert", name, "s1"])
            #expect(reverted.status == 0, "\(reverted.stderr)")
            let snapshots = try await lqx(["vm", "snapshot", "list", name, "-o", "json"])
            #expect(snapshots.stdout.contains("\"s1\"") && snapshots.stdout.contains("marker AAAA"), "\(snapshots)")
            #expect(try await lqx(["vm", "start", name]).status == 0)
            try await waitForAgent(name, lqx, console: consoleLog)
            let marker = try await lqx(["exec", name, "--", "dd", "if=/dev/vda", "bs=4", "count=1", "status=none"])
            #expect(marker.stdout == "AAAA", "after revert: \(marker)")
            #expect(try await lqx(["vm", "snapshot", "delete", name, "s1"]).status == 0)
            let noSnapshot = try await lqx(["vm", "snapshot", "revert", name, "nosuch"])
            #expect(noSnapshot.status == 255 && noSnapshot.stderr.contains("[not_found]"), "\(noSnapshot.stderr)")
            #expect(noSnapshot.stderr.contains("nosuch") && !noSnapshot.stderr.contains("unknown libvirt error"))

            // The daemon restarts; the VM keeps running and its agent is adopted again.
            daemon.stop()
            #expect(virsh(["domstate", name]).contains("running"))
            daemon = try await NodeDaemonProcess.start(node)
            try await waitForAgent(name, lqx, console: consoleLog)
            #expect(try await lqx(["exec", name, "--", "true"]).status == 0)

            let refused = try await lqx(["vm", "delete", name])
            #expect(refused.status == 255 && refused.stderr.contains("[failed_precondition]"), "\(refused.stderr)")
            #expect(try await lqx(["vm", "pause", name]).stdout.contains("paused"))
            #expect(try await lqx(["vm", "resume", name]).stdout.contains("running"))

            // Console info: the serial log on the node, with what the guest printed.
            let console = try await lqx(["vm", "console", name])
            #expect(console.status == 0 && console.stdout.contains("serial log: \(consoleLog)"), "\(console)")
            #expect((try? String(contentsOfFile: consoleLog, encoding: .utf8))?.contains("rcS") == true)
            // A guest that cannot answer (paused) is stopped at once when the timeout runs out.
            #expect(try await lqx(["vm", "pause", name]).status == 0)
            let hung = try await lqx(["vm", "stop", name, "--timeout", "3"])
            #expect(hung.status == 0 && hung.stdout.contains("stopped at once"), "\(hung)")
            #expect(try await lqx(["vm", "start", name]).status == 0)
        } catch {
            print("lqx-node log:\n\(daemon.log.suffix(4000))")
            let layout = node.layout
            let hypervisor = try LibvirtHypervisor(layout: layout)
            await abandon(name, hypervisor, console: "\(layout.vmState(name))/console.log")
            throw error
        }
        // Deleted while running (--force); --keep-disks keeps the image the node created, only it.
        let deleted = try await lqx(["vm", "delete", name, "--force", "--keep-disks"])
        #expect(deleted.status == 0, "\(deleted.stderr)")
        let kept = node.contents().filter { $0.contains(name) }
        #expect(kept == ["state/vms/\(name)", "state/vms/\(name)/disk0.qcow2"], "after delete: \(kept)")
        #expect(try await lqx(["vm", "get", name]).stderr.contains("[not_found]"))
    }

    /// Until `vm get` reports the agent connected (boot under TCG takes seconds); a guest whose kernel
    /// stalls while booting is power-cycled once (`untilGuestReady`).
    func waitForAgent(_ name: String, _ lqx: (([String], String?) async throws -> CommandResult), console: String)
        async throws
    {
        var last = ""
        let connected = try await untilGuestReady(name, consoleLog: console) {
            try await powerCycle(name, lqx)
        } ready: {
            let result = try await lqx(["vm", "get", name, "-o", "json"], nil)
            last = result.stdout + result.stderr
            return result.status == 0 && result.stdout.contains("\"connected\":true")
        }
        if connected { return }
        Issue.record("the agent of \(name) did not connect: \(last)")
        throw CancellationError()
    }

    /// `vm stop --force`, then `vm start`.
    func powerCycle(_ name: String, _ lqx: (([String], String?) async throws -> CommandResult)) async throws {
        _ = try await lqx(["vm", "stop", name, "--force"], nil)
        let started = try await lqx(["vm", "start", name], nil)
        try #require(started.status == 0, "\(started.stderr)")
    }

    /// Until a shell condition holds in the guest (20 s).
    func waitForGuest(_ name: String, _ lqx: (([String], String?) async throws -> CommandResult), _ condition: String)
        async throws -> Bool
    {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if try await lqx(["exec", name, "--", "sh", "-c", condition], nil).status == 0 { return true }
            try await Task.sleep(for: .milliseconds(300))
        }
        return false
    }
}

/// `lqx-node` running as a child process on free ports.
struct NodeDaemonProcess {
    let child: Child
    /// Our end of the daemon's stdout (kept open so its later writes never fail).
    let stdout: Int32
    let api: String
    let metrics: String
    let logPath: String

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    static func start(_ node: TestNode, telemetryInterval: Int = 1, name: String = "test-node") async throws
        -> NodeDaemonProcess
    {
        let logPath = node.root + "/lqx-node.log"
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard logFD >= 0 else { throw LQXError(.io, "cannot open \(logPath)") }
        defer { close(logFD) }
        let out = try Child.pipe()
        let child: Child
        do {
            child = try Child.spawn(
                Command.binary("lqx-node"),
                [
                    "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--state-dir",
                    node.layout.stateDirectory, "--run-dir", node.layout.runDirectory, "--telemetry-interval",
                    "\(telemetryInterval)", "--node-name", name,
                ], stdout: out.write, stderr: logFD)
        } catch {
            close(out.read)
            close(out.write)
            throw error
        }
        TestRun.record(pid: child.pid)
        close(out.write)
        // The first stdout line says where it listens.
        let reader = out.read
        let line: String = await withCheckedContinuation { continuation in
            Thread {
                var data = [UInt8]()
                var byte: UInt8 = 0
                while byte != 0x0A, read(reader, &byte, 1) == 1 { data.append(byte) }
                continuation.resume(
                    returning: String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
            }.start()
        }
        func field(_ key: String) -> String? {
            line.split(separator: " ").first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
        }
        guard let api = field("grpc"), let metrics = field("metrics") else {
            child.signal(SIGKILL)
            _ = child.wait()
            close(reader)
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            throw LQXError(.io, "lqx-node did not start: \(line) \(log)")
        }
        return NodeDaemonProcess(child: child, stdout: reader, api: api, metrics: metrics, logPath: logPath)
    }

    /// The daemon's peak resident memory so far (VmHWM), in bytes.
    var peakResidentBytes: Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(child.pid)/status", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
            let kib = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return nil }
        return kib * 1024
    }

    /// SIGTERM and wait (the VMs keep running); a daemon that has not exited after 20 s is a
    /// failure and gets SIGKILL.
    func stop() {
        defer { close(stdout) }
        guard child.isRunning else { return }
        child.signal(SIGTERM)
        let deadline = Date().addingTimeInterval(20)
        while child.isRunning, Date() < deadline { usleep(50_000) }
        if child.isRunning {
            Issue.record("lqx-node did not exit within 20 s of SIGTERM")
            child.signal(SIGKILL)
            _ = child.wait()
        }
    }
}

extension NodeAPISystemTests {
    @Test("live migration to another libvirt: the guest keeps running (same boot id) and leaves this node")
    func migration() async throws {
        guard LibvirtAvailability.available else { return }
        let image = TestGuest.imageDirectory
        try #require(FileManager.default.fileExists(atPath: image + "/vmlinuz"), "guest image missing")
        let peer = try LibvirtPeer.start()
        let node = try TestNode()
        defer { node.remove() }
        let daemon = try await NodeDaemonProcess.start(node)
        defer { daemon.stop() }
        let name = TestNode.vmName("migrate")
        func lqx(_ arguments: [String]) async throws -> CommandResult {
            try await Command.output(Command.binary("lqx"), ["--node", daemon.api] + arguments)
        }
        // Another host has its own run directory at the same path: the peer's QEMU binds the agent
        // socket in a directory of its own (else the source QEMU, exiting, would unlink it).
        let peerRun = node.root + "/peer-run"
        try FileManager.default.createDirectory(atPath: peerRun + "/vms/\(name)", withIntermediateDirectories: true)
        if let user = getpwnam("libvirt-qemu") {
            chown(peerRun + "/vms/\(name)", user.pointee.pw_uid, user.pointee.pw_gid)
        }
        chmod(peerRun, 0o755)
        chmod(peerRun + "/vms", 0o755)
        let mounted = try peer.inNamespace(["mount", "--bind", peerRun, node.layout.runDirectory])
        try #require(mounted.status == 0, "bind mount in the peer's namespace: \(mounted.stderr)")
        defer {
            _ = try? peer.inNamespace(["umount", node.layout.runDirectory])
            _ = peer.virsh(["destroy", name])
            _ = peer.virsh(["undefine", name])
        }
        let created = try await lqx([
            "vm", "create", name, "--kernel", image + "/vmlinuz", "--initrd", image + "/initramfs.cpio", "--cmdline",
            TestGuest.cmdline, "--memory", "384", "--start",
        ])
        try #require(created.status == 0, "\(created.stderr)")
        let bootID = try await waitForBootID(name, daemon.api)
        // A migration whose client goes away (Ctrl-C of lqx) aborts the libvirt job: the VM stays
        // here, running, and no job is left.
        let errPath = node.root + "/migrate-cancel.err"
        let errFD = open(errPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let slow = try Child.spawn(
            Command.binary("lqx"),
            [
                "--node", daemon.api, "vm", "migrate", name, peer.uri, "--migration-address", "127.0.0.1",
                "--bandwidth", "1",
            ], stderr: errFD)
        close(errFD)
        for _ in 0..<100 {
            if (try? String(contentsOfFile: errPath, encoding: .utf8))?.contains("migrating") == true { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        slow.signal(SIGINT)
        #expect(await slow.exit(timeout: .seconds(10)) == 130)
        var jobGone = false
        for _ in 0..<100 {
            if virsh(["domjobinfo", name]).contains("None") {
                jobGone = true
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(jobGone, "the migration job of \(name) was not aborted: \(virsh(["domjobinfo", name]))")
        let stayed = try await lqx(["vm", "get", name])
        #expect(stayed.status == 0 && stayed.stdout.contains("running"), "\(stayed)")
        let migrated = try await lqx([
            "vm", "migrate", name, peer.uri, "--migration-address", "127.0.0.1", "--max-downtime", "500",
        ])
        #expect(migrated.status == 0 && migrated.stdout.contains("migrated"), "\(migrated)")
        #expect(peer.virsh(["domstate", name]).contains("running"))
        let gone = try await lqx(["vm", "get", name])
        #expect(gone.status == 255 && gone.stderr.contains("[not_found]"), "\(gone)")
        // The same guest, still running, answers through the socket on the other "host".
        let client = AgentClient(
            address: .unix(path: peerRun + "/vms/\(name)/agent.sock"),
            configuration: BrokerConfiguration(reconnectBackoff: .milliseconds(50)...(.milliseconds(200))))
        let runner = Task { try await client.run() }
        defer { runner.cancel() }
        let session = try await client.session(timeout: .seconds(60))
        #expect(try await session.info().bootID == bootID)
        let refused = try await lqx(["vm", "migrate", "lqx-no-such-vm", peer.uri])
        #expect(refused.status == 255 && refused.stderr.contains("[not_found]"))
    }

    /// The guest's boot id once its agent answers through the node.
    func waitForBootID(_ name: String, _ api: String) async throws -> String {
        let deadline = ContinuousClock.now + .seconds(150)
        while ContinuousClock.now < deadline {
            let result = try await Command.output(
                Command.binary("lqx"), ["--node", api, "exec", name, "--", "cat", "/proc/sys/kernel/random/boot_id"])
            if result.status == 0 { return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
            try await Task.sleep(for: .milliseconds(500))
        }
        throw LQXError(.timeout, "the agent of \(name) never answered")
    }
}
