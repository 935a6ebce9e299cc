import AgentProtocol
import AgentTestSupport
import Foundation
import LQXTestSupport
import NIOCore
import Testing

@testable import HostBroker

/// The agent proven where it lives: inside a QEMU guest (Debian cloud kernel, busybox initramfs,
/// the release agent), reached through the virtio-serial port's unix socket. Needs the image from
/// `packaging/guest-image/build.sh` (scripts/test.sh builds it first). Serialized: each test boots
/// its own guest, and TCG guests are CPU-bound.
@Suite("system tests in a QEMU guest", .serialized, GuestVM.printConsoleOnIssue)
struct GuestSystemTests {
    static let bootTimeout: Duration = .seconds(120)

    @Test("info reports the guest's kernel, OS and boot id, not the host's")
    func info() async throws {
        let manifest = try GuestVM.manifest()
        try await GuestVM.with { vm, client in
            let session = try await client.session(timeout: Self.bootTimeout)
            let info = try await session.info()
            var host = utsname()
            uname(&host)
            let hostRelease = withUnsafeBytes(of: host.release) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            #expect(info.kernelRelease == manifest["kernel_release"])
            #expect(info.kernelRelease != hostRelease)
            #expect(info.os.id == "lqx-guest")
            #expect(info.os.prettyName == "limiquantix test guest (busybox)")
            #expect(info.hostname == "lqx-guest")
            #expect(info.machine == "x86_64")
            let guestBootID = try await session.run("cat", "/proc/sys/kernel/random/boot_id")
            let hostBootID = try String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)
            #expect(info.bootID == guestBootID.trimmingCharacters(in: .whitespacesAndNewlines))
            #expect(info.bootID != hostBootID.trimmingCharacters(in: .whitespacesAndNewlines))
            print("guest ready \(ContinuousClock.now - vm.bootStarted) after QEMU start; kernel \(info.kernelRelease)")
        }
    }

    @Test("exec in the guest: exit codes, signals, stdin, 50 MiB of output, timeout, PTY")
    func exec() async throws {
        try await GuestVM.with { _, client in
            let session = try await client.session(timeout: Self.bootTimeout)
            // Exit codes and a terminating signal.
            let seven = try await session.exec(ExecOptions(["sh", "-c", "exit 7"])).collect()
            #expect(seven.status.exitCode == 7)
            let killed = try await session.exec(ExecOptions(["sh", "-c", "kill -TERM $$"])).collect()
            #expect(killed.status.signal == SIGTERM)
            #expect(killed.status.shellStatus == 128 + SIGTERM)
            // stdin streamed in and echoed back.
            var cat = ExecOptions(["cat"])
            cat.stdin = true
            let echo = try await session.exec(cat)
            let input = pseudoRandomBytes(1 << 20, seed: 42)
            for offset in stride(from: 0, to: input.count, by: 64 << 10) {
                try await echo.write(ByteBuffer(bytes: input[offset..<min(offset + (64 << 10), input.count)]))
            }
            try await echo.closeStdin()
            let echoed = try await echo.collect()
            #expect(echoed.status.exitCode == 0)
            #expect(echoed.stdout.readableBytesView.elementsEqual(input))
            // 50 MiB of output, streamed and checked against the pattern without holding it.
            let line = Array("lqx guest output line 0123456789\n".utf8)
            let total = 50 << 20
            let big = try await session.exec(
                ExecOptions(["sh", "-c", "yes 'lqx guest output line 0123456789' | head -c \(total)"]))
            var pattern: [UInt8] = []
            while pattern.count < (256 << 10) + line.count { pattern += line }
            var received = 0
            var mismatch = false
            var status: ExecExitStatus?
            for try await event in big {
                switch event {
                case .stdout(let chunk):
                    let phase = received % line.count
                    let same = chunk.withUnsafeReadableBytes { bytes in
                        pattern.withUnsafeBytes { expected in
                            bytes.count <= expected.count - phase
                                && memcmp(bytes.baseAddress!, expected.baseAddress! + phase, bytes.count) == 0
                        }
                    }
                    mismatch = mismatch || !same
                    received += chunk.readableBytes
                case .stderr: break
                case .exit(let exit): status = exit
                }
            }
            #expect(received == total)
            #expect(!mismatch, "output differs from the pattern")
            #expect(status?.exitCode == 0)
            // A timeout kills the process group.
            var sleeper = ExecOptions(["sh", "-c", "sleep 60 & sleep 60"])
            sleeper.timeout = .seconds(1)
            let started = ContinuousClock.now
            let timedOut = try await session.exec(sleeper).collect()
            #expect(timedOut.status.timedOut)
            #expect(timedOut.status.signal == SIGKILL)
            #expect(ContinuousClock.now - started < .seconds(15))
            let leftovers = try await session.run("sh", "-c", "pidof sleep || true")
            #expect(leftovers.isEmpty, "sleep processes left after the timeout: \(leftovers)")
            // A PTY with the requested window size.
            var tty = ExecOptions(["sh", "-c", "tty; stty size"])
            tty.pty = (rows: 33, cols: 101)
            let terminal = try await session.exec(tty).collect()
            let text = String(buffer: terminal.stdout)
            #expect(text.contains("/dev/pts/"), "tty said: \(text)")
            #expect(text.contains("33 101"), "stty size said: \(text)")
        }
    }

    @Test("cp of 64 MiB both ways with matching SHA-256 on host and guest")
    func copyBothWays() async throws {
        try await GuestVM.with { vm, client in
            let session = try await client.session(timeout: Self.bootTimeout)
            let local = vm.dir.file("up.bin")
            try Data(pseudoRandomBytes(64 << 20, seed: 7)).write(to: URL(fileURLWithPath: local))
            let hostHash = try sha256Hex(ofFile: local)
            let up = try await session.upload(file: local, to: "/tmp/up.bin")
            #expect(up.size == 64 << 20)
            #expect(up.sha256 == hostHash)
            let guestHash = try await session.run("sha256sum", "/tmp/up.bin").prefix(64)
            #expect(String(guestHash) == hostHash, "the guest's sha256sum of the uploaded file")
            // A file made in the guest comes back intact.
            _ = try await session.run("dd", "if=/dev/urandom", "of=/tmp/gen.bin", "bs=1048576", "count=64")
            let generatedHash = String(try await session.run("sha256sum", "/tmp/gen.bin").prefix(64))
            let back = vm.dir.file("gen.bin")
            let down = try await session.download("/tmp/gen.bin", to: back)
            #expect(down.size == 64 << 20)
            #expect(down.sha256 == generatedHash)
            #expect(try sha256Hex(ofFile: back) == generatedHash)
        }
    }

    @Test("telemetry matches the VM: memory close to -m, CPUs equal -smp, the guest's file systems")
    func telemetry() async throws {
        try await GuestVM.with(memoryMiB: 768, cpus: 2) { vm, client in
            let session = try await client.session(timeout: Self.bootTimeout)
            let sample = try await session.telemetry()
            let configured = UInt64(vm.memoryMiB) << 20
            #expect(sample.memory.totalBytes <= configured)
            #expect(sample.memory.totalBytes >= configured * 85 / 100, "MemTotal \(sample.memory.totalBytes)")
            #expect(sample.memory.availableBytes > 0 && sample.memory.availableBytes <= sample.memory.totalBytes)
            #expect(sample.cpuCount == UInt32(vm.cpus))
            #expect(sample.cpu.perCpuPercent.count == vm.cpus)
            // File systems: the guest's real mounts (tmpfs /tmp and /run; rootfs and the pseudo file
            // systems are not storage), with the sizes the guest's own df reports.
            let mounts = Set(sample.filesystems.map(\.mountPoint))
            #expect(mounts == ["/tmp", "/run"], "reported: \(mounts)")
            let procMounts = try await session.run("cat", "/proc/mounts")
            for fs in sample.filesystems {
                #expect(
                    procMounts.split(separator: "\n").contains {
                        $0.hasPrefix("\(fs.device) \(fs.mountPoint) \(fs.type) ")
                    },
                    "\(fs.mountPoint) is not in the guest's /proc/mounts as \(fs.device) \(fs.type)")
            }
            let df = try await session.run("df", "-k", "/tmp")
            let dfTotal = df.split(separator: "\n").last?.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
            let tmp = try #require(sample.filesystems.first { $0.mountPoint == "/tmp" })
            #expect(dfTotal.map { $0 * 1024 } == tmp.totalBytes, "df -k /tmp: \(df)")
            // A subscription pushes samples on its own.
            var count = 0
            for try await pushed in session.telemetry(every: .milliseconds(500)) {
                #expect(pushed.cpuCount == UInt32(vm.cpus))
                count += 1
                if count == 3 { break }
            }
            #expect(count == 3)
        }
    }

    @Test("shutdown: the agent acknowledges and QEMU exits by itself within 10 s")
    func shutdown() async throws {
        try await GuestVM.with { vm, client in
            let session = try await client.session(timeout: Self.bootTimeout)
            _ = try await session.shutdown(.poweroff)
            let exited = await vm.waitForExit(timeout: .seconds(10))
            #expect(exited, "QEMU still running 10 s after the shutdown was acknowledged")
        }
    }

    @Test("reboot: the agent comes back with a new boot id and the broker resyncs by itself")
    func reboot() async throws {
        try await GuestVM.with { _, client in
            let events = EventLog(client)
            let session = try await client.session(timeout: Self.bootTimeout)
            let before = try await session.info()
            let seen = events.all.count
            _ = try await session.shutdown(.reboot)
            let reconnected = await events.wait(after: seen, timeout: Self.bootTimeout) {
                if case .connected(_, _, let id) = $0 { id != session.id } else { false }
            }
            try #require(reconnected != nil, "no new session after the reboot; events: \(events.all)")
            let after = try await client.session(timeout: .seconds(10)).info()
            #expect(after.bootID != before.bootID)
            #expect(after.uptimeSeconds < before.uptimeSeconds + 60)
            let echo = try await client.session().run("echo", "after reboot")
            #expect(echo == "after reboot\n")
        }
    }

    @Test("the agent killed in the guest is restarted and the broker reconnects")
    func agentRestart() async throws {
        try await GuestVM.with { _, client in
            let events = EventLog(client)
            let session = try await client.session(timeout: Self.bootTimeout)
            let before = try await session.info()
            let seen = events.all.count
            // The exec dies with the agent; its result does not matter.
            _ = try? await session.exec(ExecOptions(["sh", "-c", "kill -9 $(pidof lqx-agent)"])).collect()
            let reconnected = await events.wait(after: seen, timeout: .seconds(60)) {
                if case .connected(_, let instance, _) = $0 { instance != before.agentInstance } else { false }
            }
            try #require(reconnected != nil, "no session with a new agent instance; events: \(events.all)")
            let after = try await client.session(timeout: .seconds(10)).info()
            #expect(after.agentInstance != before.agentInstance)
            #expect(after.bootID == before.bootID, "the guest did not reboot")
            #expect(try await client.session().run("echo", "ok") == "ok\n")
        }
    }

    @Test("the broker restarted mid-stream: a new session, and nothing of the old one is acted on")
    func brokerRestart() async throws {
        try await GuestVM.with(connect: false) { vm, _ in
            // Broker 1 starts a stream of output and vanishes while the agent is writing it.
            let first = vm.makeClient(label: "broker-1")
            let firstRun = Task { try await first.run() }
            let session1 = try await first.session(timeout: Self.bootTimeout)
            let instance = try await session1.info().agentInstance
            let noisy = try await session1.exec(ExecOptions(["yes", "stale output of session one"]))
            var seen = 0
            for try await event in noisy {
                if case .stdout(let chunk) = event { seen += chunk.readableBytes }
                if seen > 1 << 20 { break }
            }
            firstRun.cancel()
            _ = try? await firstRun.value
            // Broker 2 gets a new session; the old session's queued output is dropped, not delivered.
            let second = vm.makeClient(label: "broker-2")
            let secondRun = Task { try await second.run() }
            defer { secondRun.cancel() }
            let session2 = try await second.session(timeout: .seconds(60))
            #expect(session2.id != session1.id)
            let fresh = try await session2.exec(ExecOptions(["echo", "fresh"])).collect()
            #expect(String(buffer: fresh.stdout) == "fresh\n")
            #expect(fresh.stderr.readableBytes == 0)
            let instance2 = try await session2.info().agentInstance
            try #require(instance2 == instance, "the agent itself kept running")
            // The agent ends the old session's processes.
            var left = "?"
            for _ in 0..<50 {
                left = try await session2.run("sh", "-c", "pidof yes || true")
                if left.isEmpty { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(left.isEmpty, "the old session's exec is still running: \(left)")
        }
    }

    @Test("with no host on the port the agent sleeps instead of spinning, and answers at once when one comes")
    func idleWithoutHost() async throws {
        try await GuestVM.with(connect: false) { vm, _ in
            func agentCPUTicks(_ session: AgentSession) async throws -> Int {
                let stat = try await session.run("sh", "-c", "cat /proc/$(pidof lqx-agent)/stat")
                let fields = stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")
                return Int(fields[11])! + Int(fields[12])!  // utime + stime
            }
            let first = vm.makeClient(label: "broker-1")
            let firstRun = Task { try await first.run() }
            let before = try await agentCPUTicks(try await first.session(timeout: Self.bootTimeout))
            firstRun.cancel()
            _ = try? await firstRun.value
            try await Task.sleep(for: .seconds(5))
            let second = vm.makeClient(label: "broker-2")
            let secondRun = Task { try await second.run() }
            defer { secondRun.cancel() }
            let reconnectStart = ContinuousClock.now
            let session = try await second.session(timeout: .seconds(30))
            let reconnect = ContinuousClock.now - reconnectStart
            let after = try await agentCPUTicks(session)
            // 5 s without a host: a read loop on the EOF-returning port would burn ~500 ticks.
            #expect(after - before < 60, "agent used \(after - before) ticks of CPU in 5 s without a host")
            #expect(reconnect < .seconds(5), "session took \(reconnect) after the host came back")
            print("idle without host: \(after - before) ticks in 5 s; new session after \(reconnect)")
        }
    }

    @Test("garbage and frames of a dead session written into the channel: the agent survives and ignores them")
    func garbageAndStaleFrames() async throws {
        try await GuestVM.with(connect: false) { vm, _ in
            let first = vm.makeClient(label: "broker-1")
            let firstRun = Task { try await first.run() }
            let instance = try await first.session(timeout: Self.bootTimeout).info().agentInstance
            firstRun.cancel()
            _ = try? await firstRun.value
            let socket = vm.socket
            let outcome = try await onThread { () -> String in
                // 1 MiB of noise, a torn frame header, then gone.
                let noise = RawPeer(fd: try RawSocket.connect(socket))
                noise.send(raw: pseudoRandomBytes(1 << 20, seed: 99))
                noise.send(
                    raw: Array(
                        Frame(type: .open, session: 1, stream: 1, payload: ByteBuffer()).encoded().readableBytesView
                            .prefix(9)))
                close(noise.fd)
                // A new host: a session, then an OPEN of a session the agent never agreed to.
                let peer = RawPeer(fd: try RawSocket.connect(socket))
                defer { close(peer.fd) }
                var welcomed = false
                for _ in 0..<20 where !welcomed { welcomed = peer.handshake(session: 0x5151, timeoutMs: 1000) != nil }
                guard welcomed else { return "no WELCOME after the garbage" }
                peer.send(
                    Frame(
                        type: .open, session: 0x7777, stream: 1, payload: execRequest(["touch", "/tmp/stale-marker"])))
                guard peer.next(session: 0x7777, timeoutMs: 5000)?.type == .goAway else {
                    return "no GOAWAY for the unknown session"
                }
                return "ok"
            }
            #expect(outcome == "ok")
            let second = vm.makeClient(label: "broker-2")
            let secondRun = Task { try await second.run() }
            defer { secondRun.cancel() }
            let session = try await second.session(timeout: .seconds(60))
            #expect(try await session.info().agentInstance == instance, "the agent did not restart")
            let marker = try await session.run("sh", "-c", "test -e /tmp/stale-marker && echo acted || echo ignored")
            #expect(marker == "ignored\n")
        }
    }

    @Test("AF_VSOCK: lqx inside the guest reaches the agent's vsock listener over vsock_loopback (CID 1)")
    func vsockLoopback() async throws {
        try await GuestVM.with { _, client in
            let session = try await client.session(timeout: Self.bootTimeout)
            let bootID = try await session.info().bootID
            let viaVsock = try await session.run(
                "lqx", "--agent", "vsock:1:5170", "exec", "--", "cat", "/proc/sys/kernel/random/boot_id")
            #expect(viaVsock.trimmingCharacters(in: .whitespacesAndNewlines) == bootID)
            let json = try await session.run("lqx", "--agent", "vsock:1:5170", "info", "-o", "json")
            #expect(json.contains("\"lqx-guest\""), "info over vsock: \(json)")
            let ping = try await session.run("lqx", "--agent", "vsock:1:5170", "ping", "-c", "3")
            #expect(ping.split(separator: "\n").filter { $0.hasPrefix("pong") }.count == 3, "\(ping)")
        }
    }
}
