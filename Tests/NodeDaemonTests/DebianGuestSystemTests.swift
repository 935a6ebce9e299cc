import Foundation
import LQXTestSupport
import NodeTestSupport
import Testing

@testable import NodeCore
@testable import NodeLibvirt

/// The Debian 12 guest that boots from its own disk (packaging/debian-image/build.sh: extlinux,
/// its own kernel, systemd, limiquantix-agent from the package) under libvirtd, through `lqx-node`
/// and `lqx --node` as operators run them; then the packages with apt inside it
/// (DebianGuestSystemTests+Packages.swift).
@Suite("Debian guest from its own disk: the packaged agent under systemd", .serialized)
struct DebianGuestSystemTests {
    @Test(
        "clone → boot → agent started by systemd → exec, cp (hashes), metrics of the real root disk → kill -9 of the agent → graceful stop (journal) → reboot → apt upgrade of the agent → control plane + node installed and joined → remove, purge"
    )
    func packagedAgentUnderSystemd() async throws {
        guard LibvirtAvailability.available else { return }
        let image = DebianGuest.image
        guard FileManager.default.fileExists(atPath: image) else {
            if DebianGuest.required { Issue.record("\(image) is missing: run packaging/debian-image/build.sh") }
            return
        }
        let node = try TestNode()
        defer { node.remove() }
        let daemon = try await NodeDaemonProcess.start(node)
        defer { daemon.stop() }
        let name = TestNode.vmName("debian")
        func lqx(_ arguments: [String], stdin: String? = nil) async throws -> CommandResult {
            try await Command.output(Command.binary("lqx"), ["--node", daemon.api] + arguments, stdin: stdin)
        }
        func guest(_ script: String) async throws -> CommandResult {
            try await lqx(["exec", name, "--", "sh", "-c", script])
        }
        func lqx2(_ arguments: [String], _ stdin: String?) async throws -> CommandResult {
            try await lqx(arguments, stdin: stdin)
        }
        let consoleLog = node.layout.vmState(name) + "/console.log"
        let created = try await lqx(["vm", "create", name, "--clone", image, "--cpus", "2", "--memory", "1536"])
        try #require(created.status == 0, "\(created.stderr)")
        do {
            try await boot(name, lqx2, guest, node: node, consoleLog: consoleLog)
            try await packages(name, lqx2, guest, node: node, consoleLog: consoleLog)
        } catch {
            print("lqx-node log:\n\(daemon.log.suffix(4000))")
            let hypervisor = try LibvirtHypervisor(layout: node.layout)
            await abandon(name, hypervisor, console: consoleLog)
            throw error
        }
        #expect(try await lqx(["vm", "delete", name, "--force"]).status == 0)
    }

    func boot(
        _ name: String, _ lqx: ([String], String?) async throws -> CommandResult,
        _ guest: (String) async throws -> CommandResult, node: TestNode, consoleLog: String
    ) async throws {
        try #require(try await lqx(["vm", "start", name], nil).status == 0)
        let helpers = NodeAPISystemTests()
        try await helpers.waitForAgent(name, lqx, console: consoleLog)

        // The image's own kernel and root file system, the agent started by systemd, wanted by the
        // virtio-serial port's device unit (the udev rule) and by multi-user.target, and a boot
        // with no failed unit.
        let system = try await guest(
            ". /etc/os-release; echo $VERSION_ID; uname -r; findmnt -n -o FSTYPE /; "
                + "systemctl show lqx-agent -p ActiveState -p WantedBy --value; "
                + "systemctl is-system-running --wait")
        #expect(system.status == 0, "\(system)")
        let lines = system.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "12", "\(lines)")
        #expect(lines.count > 1 && lines[1].hasSuffix("-cloud-amd64"), "\(lines)")
        #expect(lines.count > 2 && lines[2] == "ext4", "\(lines)")
        #expect(system.stdout.contains("active"), "\(system.stdout)")
        #expect(
            system.stdout.contains("x2dports-vport") && system.stdout.contains("multi-user.target"),
            "lqx-agent.service should be wanted by the port's device unit and multi-user.target: \(system.stdout)")
        #expect(lines.last == "running", "systemd: \(system.stdout)")
        let units = try await guest(
            "systemd-analyze verify --man=no /lib/systemd/system/lqx-agent.service 2>&1; echo rc=$?")
        #expect(units.stdout == "rc=0\n", "systemd-analyze verify in the guest: \(units.stdout)")

        // cp both ways, checked by hashes on both sides.
        let local = node.root + "/payload.bin", back = node.root + "/back.bin"
        let payload = Data((0..<(2 << 20) + 77).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 11) })
        try payload.write(to: URL(fileURLWithPath: local))
        let hash = try sha256Hex(ofFile: local)
        #expect(try await lqx(["cp", local, "\(name):/root/payload.bin"], nil).status == 0)
        let guestHash = try await guest("sha256sum /root/payload.bin | cut -d' ' -f1")
        #expect(guestHash.stdout == hash + "\n", "\(guestHash)")
        #expect(try await lqx(["cp", "\(name):/root/payload.bin", back], nil).status == 0)
        #expect(try sha256Hex(ofFile: back) == hash)

        // In-guest metrics: the real root disk and /boot, and systemd's processes.
        let metrics = try await lqx(["metrics", name, "-o", "json"], nil)
        try #require(metrics.status == 0, "\(metrics)")
        let sample = try #require(
            try JSONSerialization.jsonObject(with: Data(metrics.stdout.utf8)) as? [String: Any], "\(metrics.stdout)")
        let filesystems = (sample["filesystems"] as? [[String: Any]]) ?? []
        let root = filesystems.first { $0["mount_point"] as? String == "/" }
        #expect(
            root?["type"] as? String == "ext4" && (root?["device"] as? String ?? "").hasPrefix("/dev/vda"),
            "\(filesystems)")
        #expect(((root?["total_bytes"] as? Int) ?? 0) > 1 << 30, "\(String(describing: root))")
        #expect(filesystems.contains { $0["mount_point"] as? String == "/boot" }, "\(filesystems)")
        #expect(((sample["process_count"] as? Int) ?? 0) >= 20, "a systemd guest runs more processes: \(sample)")

        // kill -9 of the agent: systemd restarts it and the node's broker resyncs with the new one.
        let before = try await guest("systemctl show lqx-agent -p MainPID --value")
        _ = try await guest(
            "nohup sh -c 'sleep 1; kill -9 $(systemctl show lqx-agent -p MainPID --value)' >/dev/null 2>&1 &")
        var after = before
        let restarted = try await untilGuestReady(name, consoleLog: consoleLog, timeout: .seconds(60)) {
        } ready: {
            let r = try await guest("systemctl show lqx-agent -p MainPID -p NRestarts --value")
            after = r
            return r.status == 0 && !r.stdout.hasPrefix(before.stdout) && r.stdout.contains("\n1\n")
        }
        #expect(restarted, "agent pid \(before.stdout) → \(after.stdout)")

        // Graceful stop: the agent asks systemd to power off; after the next boot the journal of
        // the stopped boot shows the orderly shutdown.
        let bootID = try await guest("cat /proc/sys/kernel/random/boot_id").stdout
        let stopped = try await lqx(["vm", "stop", name], nil)
        #expect(stopped.status == 0 && stopped.stdout.contains("powered off by its agent"), "\(stopped)")
        try #require(try await lqx(["vm", "start", name], nil).status == 0)
        try await helpers.waitForAgent(name, lqx, console: consoleLog)
        let journal = try await guest(
            "cat /proc/sys/kernel/random/boot_id; journalctl -b -1 -o cat --no-pager "
                + "| grep -E 'power request accepted|Stopped lqx-agent.service|Reached target poweroff.target'")
        #expect(!journal.stdout.hasPrefix(bootID), "the guest did not boot again")
        // In this order (the agent was also stopped once before, by the kill -9): the agent took the
        // request, then systemd stopped the agent, then reached poweroff.
        var rest = journal.stdout[...]
        var found: [String] = []
        for step in ["power request accepted", "Stopped lqx-agent.service", "Reached target poweroff.target"] {
            guard let range = rest.range(of: step) else { break }
            found.append(step)
            rest = rest[range.upperBound...]
        }
        #expect(found.count == 3, "the last boot's journal: \(journal.stdout)")

        // Reboot through the agent: back with a new boot id.
        let secondBoot = try await guest("cat /proc/sys/kernel/random/boot_id").stdout
        #expect(try await lqx(["vm", "reboot", name], nil).status == 0)
        var thirdBoot = secondBoot
        let rebooted = try await untilGuestReady(name, consoleLog: consoleLog, timeout: .seconds(150)) {
            try await helpers.powerCycle(name, lqx)
        } ready: {
            let r = try await guest("cat /proc/sys/kernel/random/boot_id")
            if r.status == 0 { thirdBoot = r.stdout }
            return thirdBoot != secondBoot
        }
        #expect(rebooted && !thirdBoot.isEmpty, "the guest did not come back with a new boot id")
    }
}
