import AgentProtocol
import AgentTestSupport
import Foundation
import LQXTestSupport
import Logging
import NIOCore
import Synchronization
import Testing

@testable import HostBroker

/// A QEMU guest booted from the image `packaging/guest-image/build.sh` makes (kernel + busybox
/// initramfs with lqx-agent), through `packaging/guest-image/boot.sh`. The agent's virtio-serial
/// port is a unix socket QEMU listens on; `client` is a broker kept connected to it.
final class GuestVM: Sendable {
    /// The guest of the running test, for the suite's issue handler (see `printConsoleOnIssue`).
    @TaskLocal static var current: GuestVM?

    /// A suite trait: the first issue a test records prints its guest's console, so a failed
    /// expectation shows what the guest was doing, not only a thrown error.
    static var printConsoleOnIssue: some SuiteTrait & TestTrait {
        .compactMapIssues { issue in
            if let vm = current, vm.consolePrinted.exchange(true, ordering: .relaxed) == false {
                print(
                    "---- guest console (\(vm.consolePath)) at: \(issue) ----\n\(vm.console)\n---- end of console ----")
            }
            return issue
        }
    }

    private let consolePrinted = Atomic<Bool>(false)
    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The image directory: `$LQX_GUEST_IMAGE`, else `.build-guest/image` in the repository.
    static var imageDirectory: String {
        ProcessInfo.processInfo.environment["LQX_GUEST_IMAGE"] ?? repositoryRoot + "/.build-guest/image"
    }

    /// `key=value` lines of the image's manifest.
    static func manifest() throws -> [String: String] {
        let path = imageDirectory + "/manifest"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw AgentError(.notFound, "no guest image at \(imageDirectory): run packaging/guest-image/build.sh")
        }
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            result[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return result
    }

    static let sessionConfiguration = SessionConfiguration(
        keepaliveInterval: .seconds(1), keepaliveTimeout: .seconds(5), handshakeTimeout: .seconds(10),
        helloRetry: .milliseconds(250))

    static func brokerConfiguration() -> BrokerConfiguration {
        BrokerConfiguration(
            session: sessionConfiguration, connectTimeout: .seconds(5),
            reconnectBackoff: .milliseconds(50)...(.milliseconds(500)))
    }

    let dir: TempDir
    let socket: String
    let rawSocket: String
    let consolePath: String
    let memoryMiB: Int
    let cpus: Int
    private let child: Child
    let bootStarted: ContinuousClock.Instant

    private init(memoryMiB: Int, cpus: Int, raw: Bool) throws {
        _ = try Self.manifest()
        dir = try TempDir()
        socket = dir.file("agent.sock")
        rawSocket = dir.file("raw.sock")
        consolePath = dir.file("console.log")
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        var arguments = [
            "--image", Self.imageDirectory, "--socket", socket, "--console", consolePath,
            "--memory", String(memoryMiB), "--cpus", String(cpus),
        ]
        if raw { arguments += ["--raw-socket", rawSocket] }
        bootStarted = .now
        // boot.sh's own messages go to the test's stderr.
        child = try Child.spawn(
            Self.repositoryRoot + "/packaging/guest-image/boot.sh", arguments, stdout: STDERR_FILENO,
            stderr: STDERR_FILENO)
        // boot.sh execs QEMU: this pid is the guest's.
        TestRun.record(pid: child.pid)
    }

    /// The guest's serial console so far.
    var console: String { (try? String(contentsOfFile: consolePath, encoding: .utf8)) ?? "(no console output)" }

    /// Whether QEMU is still running.
    var isRunning: Bool { child.isRunning }

    /// Waits up to `timeout` for QEMU to exit by itself; true if it did.
    func waitForExit(timeout: Duration) async -> Bool {
        await child.exit(timeout: timeout) != nil
    }

    /// Kills QEMU (always called at the end of a test) and removes the test directory.
    func destroy() {
        if child.isRunning {
            child.signal(SIGKILL)
            _ = child.wait()
        }
        dir.remove()
    }

    /// A broker for this guest's agent port.
    func makeClient(label: String = "guest-broker") -> AgentClient {
        var logger = Logger(label: label)
        logger.logLevel = .warning
        return AgentClient(address: .unix(path: socket), configuration: Self.brokerConfiguration(), logger: logger)
    }

    /// Boots a guest, runs `body` with it and a broker connected to its agent (not started when
    /// `connect` is false: the test brings its own), and always kills QEMU. When `body` throws, the
    /// guest's console is printed with the error.
    static func with<T: Sendable>(
        memoryMiB: Int = 1024, cpus: Int = 2, raw: Bool = false, connect: Bool = true,
        _ body: @Sendable @escaping (GuestVM, AgentClient) async throws -> T
    ) async throws -> T {
        let vm = try GuestVM(memoryMiB: memoryMiB, cpus: cpus, raw: raw)
        defer { vm.destroy() }
        let client = vm.makeClient()
        do {
            return try await $current.withValue(vm) {
                try await withThrowingTaskGroup(of: T?.self) { group in
                    if connect {
                        group.addTask {
                            try await client.run()
                            return nil
                        }
                    }
                    group.addTask { try await body(vm, client) }
                    defer { group.cancelAll() }
                    while let result = try await group.next() {
                        if let result { return result }
                    }
                    throw AgentError(.internal, "guest harness ended without a result")
                }
            }
        } catch {
            guard !vm.consolePrinted.exchange(true, ordering: .relaxed) else { throw error }
            print(
                "---- guest console (\(vm.consolePath)) after: \(error) ----\n\(vm.console)\n---- end of console ----")
            throw error
        }
    }
}

extension AgentSession {
    /// Runs argv in the guest and returns stdout as text; throws unless it exits 0.
    func run(_ argv: String..., stdin: String? = nil) async throws -> String {
        var options = ExecOptions(argv)
        options.stdin = stdin != nil
        let process = try await exec(options)
        if let stdin {
            try await process.write(ByteBuffer(string: stdin))
            try await process.closeStdin()
        }
        let (out, err, status) = try await process.collect()
        guard status.exitCode == 0 else {
            throw AgentError(
                .internal,
                "\(argv) exited \(status.shellStatus): \(String(buffer: err))")
        }
        return String(buffer: out)
    }
}

/// Collects session events from a client's stream on a task, for waiting on them later.
final class EventLog: Sendable {
    private let events = Mutex<[SessionEvent]>([])

    init(_ client: AgentClient) {
        Task {
            for await event in client.events { self.events.withLock { $0.append(event) } }
        }
    }

    var all: [SessionEvent] { events.withLock { $0 } }

    /// Waits until an event after the first `skip` matches.
    func wait(
        after skip: Int, timeout: Duration, _ match: @Sendable (SessionEvent) -> Bool
    ) async -> SessionEvent? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let hit = events.withLock({ $0.dropFirst(skip).first(where: match) }) { return hit }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return nil
    }
}
