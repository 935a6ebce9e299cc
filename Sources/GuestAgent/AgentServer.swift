import AgentProtocol
import CLQXSupport
import Glibc
import Logging
import NIOCore
import NIOPosix
import POSIXSupport
import ServiceLifecycle

/// Builds the agent service from a configuration (the `lqx-agent` executable and tests use it).
public func buildAgent(configuration: AgentConfiguration) throws -> AgentService {
    try AgentService(configuration: configuration)
}

/// The guest agent: serves every configured transport at once until cancelled or shut down.
public final class AgentService: Service, Sendable {
    /// Request dispatch and counters.
    public let core: AgentCore
    private let configuration: AgentConfiguration
    private let group: MultiThreadedEventLoopGroup
    private let threadPool: NIOThreadPool

    init(configuration: AgentConfiguration) throws {
        guard !configuration.transports.isEmpty else {
            throw AgentError(.invalidArgument, "no transport configured")
        }
        self.configuration = configuration
        self.group = MultiThreadedEventLoopGroup.singleton
        self.threadPool = NIOThreadPool(numberOfThreads: 4)
        self.core = try AgentCore(configuration: configuration, threadPool: threadPool)
    }

    /// Serves until graceful shutdown or cancellation (both close every session and kill the
    /// process groups of running commands).
    public func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        // The virtio-serial transport asks for SIGIO on one thread (see lqx_vport_wait_host); a
        // stray one anywhere else must not terminate the agent.
        signal(SIGIO, SIG_IGN)
        threadPool.start()
        do {
            try await cancelWhenGracefulShutdown { try await self.serveAll() }
        } catch {
            try? await threadPool.shutdownGracefully()
            throw error
        }
        try? await threadPool.shutdownGracefully()
    }

    private func serveAll() async throws {
        let logger = configuration.logger
        logger.info(
            "agent starting",
            metadata: [
                "agent.version": "\(AgentConfiguration.agentVersion)",
                "agent.transports": "\(configuration.transports.map(\.description).joined(separator: ", "))",
            ])
        try await withThrowingDiscardingTaskGroup { group in
            if let quiet = self.configuration.idleTrim {
                group.addTask { await self.releaseMemoryWhenIdle(after: quiet) }
            }
            for transport in self.configuration.transports {
                group.addTask {
                    switch transport {
                    case .unix(let path): try await self.serveUnix(path: path)
                    case .vsock(let port, let allowLocal):
                        try await self.serveVsock(port: port, allowLocal: allowLocal)
                    case .virtioSerial(let path): await self.serveVirtioSerial(path: path)
                    }
                }
            }
        }
    }

    private var maxPayload: Int { configuration.session.limits.maxFramePayload }

    /// Once no request has started for between `quiet` / 2 and `quiet`, unmaps the resident code
    /// and constant pages and trims the heap, once per quiet period. Startup (argument parsing,
    /// transport setup) and each kind of request touch code that an idle agent does not run again;
    /// without this it stays counted against the agent (and harder for the guest to reclaim,
    /// being mapped executable) for the agent's whole life. Requests still running (a telemetry
    /// subscription, a long command) are unaffected except for minor faults as they touch their
    /// code again.
    private func releaseMemoryWhenIdle(after quiet: Duration) async {
        var seen = -1
        var releasedAt = -1
        while true {
            do { try await Task.sleep(for: quiet / 2) } catch { return }
            let requests = core.metrics.requests
            if requests == seen && requests != releasedAt {
                releasedAt = requests
                let kilobytes = (try? await threadPool.runIfActive { lqx_release_clean_mappings() }) ?? -1
                core.metrics.releasedIdleMemory()
                configuration.logger.debug("released idle memory", metadata: ["kB": "\(kilobytes)"])
            }
            seen = requests
        }
    }

    private func serveUnix(path: String) async throws {
        let maxPayload = self.maxPayload
        var existing = stat()
        if lstat(path, &existing) == 0, (existing.st_mode & S_IFMT) != S_IFSOCK {
            throw AgentError(.alreadyExists, "\(path) exists and is not a socket; refusing to replace it")
        }
        // Bind under a private name in a fresh 0700 directory next to the target, restrict the
        // socket to 0600, then rename it into place: no moment where others could connect.
        let directory = FileHandlers.split(path).directory
        var template = Array("\(directory)/.lqx-agent-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else {
            throw AgentError(.io, "cannot create a private directory in \(directory): \(errnoText())")
        }
        let privateDirectory = String(
            decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let staging = privateDirectory + "/agent.sock"
        defer {
            unlink(staging)
            rmdir(privateDirectory)
        }
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .bind(unixDomainSocketPath: staging) { channel in
                channel.eventLoop.makeCompletedFuture { try FramedChannel.framing(channel, maximumPayload: maxPayload) }
            }
        guard chmod(staging, 0o600) == 0, rename(staging, path) == 0 else {
            let reason = errnoText()
            try? await server.channel.close()
            throw AgentError(.io, "cannot publish the agent socket at \(path): \(reason)")
        }
        rmdir(privateDirectory)
        defer { unlink(path) }
        let core = self.core
        try await server.executeThenClose { connections in
            try await withThrowingDiscardingTaskGroup { group in
                for try await connection in connections {
                    group.addTask { await AgentConnection(core: core, transport: "unix").serve(connection) }
                }
            }
        }
    }

    private func serveVsock(port: UInt32, allowLocal: Bool) async throws {
        let maxPayload = self.maxPayload
        let listener = lqx_vsock_listen(port, 64)
        guard listener >= 0 else {
            throw AgentError(.unavailable, "cannot listen on vsock port \(port): \(errnoText())")
        }
        let logger = configuration.logger
        let core = self.core
        let group = self.group
        // accept(2) blocks on a dedicated thread; NIO cannot report a vsock peer's CID, which is
        // what decides admission here.
        let (accepted, continuation) = AsyncStream<Int32>.makeStream()
        startDetachedThread {
            while true {
                var cid: UInt32 = 0, peerPort: UInt32 = 0
                let fd = lqx_vsock_accept(listener, &cid, &peerPort)
                if fd < 0 {
                    if errno == ECONNABORTED || errno == EMFILE || errno == ENFILE {
                        usleep(100_000)
                        continue
                    }
                    break
                }
                guard cid == 2 || (allowLocal && cid == 1) else {
                    logger.warning("refused vsock connection", metadata: ["vsock.cid": "\(cid)"])
                    close(fd)
                    continue
                }
                if case .terminated = continuation.yield(fd) {
                    close(fd)
                    break
                }
            }
            continuation.finish()
        }
        defer {
            shutdown(listener, Int32(SHUT_RDWR))
            close(listener)
        }
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { tasks in
                for await fd in accepted {
                    tasks.addTask {
                        do {
                            let channel = try await ClientBootstrap(group: group).withConnectedSocket(fd) { channel in
                                channel.eventLoop.makeCompletedFuture {
                                    try FramedChannel.framing(channel, maximumPayload: maxPayload)
                                }
                            }
                            await AgentConnection(core: core, transport: "vsock").serve(channel)
                        } catch {
                            logger.warning("vsock connection failed", metadata: ["error": "\(error)"])
                        }
                    }
                }
            }
        } onCancel: {
            shutdown(listener, Int32(SHUT_RDWR))
            continuation.finish()
        }
    }

    /// Serves the virtio-serial port, reopening it when it is missing or fails (hot-unplug).
    private func serveVirtioSerial(path: String) async {
        let logger = configuration.logger
        var reportedMissing = false
        while !Task.isCancelled {
            let fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
            if fd < 0 {
                if !reportedMissing {
                    logger.warning(
                        "virtio-serial port unavailable; retrying",
                        metadata: ["path": "\(path)", "error": "\(errnoText())"])
                    reportedMissing = true
                }
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            reportedMissing = false
            await servePort(fd, path: path)
            close(fd)
            if !Task.isCancelled { try? await Task.sleep(for: .milliseconds(200)) }
        }
    }

    /// One open port: wait for the host end (SIGIO, no spinning), relay the port to a socket pair
    /// whose other end is an ordinary NIO connection, and start over when the host leaves or the
    /// session ends. The port stays open throughout, so no byte of a live host is lost between
    /// sessions. Returns when cancelled or the port fails.
    private func servePort(_ port: Int32, path: String) async {
        let logger = configuration.logger
        let maxPayload = self.maxPayload
        var stop: [Int32] = [-1, -1]
        guard lqx_pipe_cloexec(&stop) == 0 else {
            logger.error("cannot create a pipe: \(errnoText())")
            return
        }
        defer {
            close(stop[0])
            close(stop[1])
        }
        let stopRead = stop[0], stopWrite = stop[1]
        await withTaskCancellationHandler {
            while !Task.isCancelled {
                let waited = await runOnThread { lqx_vport_wait_host(port, stopRead) }
                guard waited == 1 else {
                    if waited < 0 {
                        logger.warning(
                            "virtio-serial port failed",
                            metadata: ["path": "\(path)", "error": "\(errnoText(-waited))"])
                    }
                    return
                }
                var pair: [Int32] = [-1, -1]
                guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0
                else {
                    logger.error("cannot create a socket pair: \(errnoText())")
                    return
                }
                let relayEnd = pair[0]
                _ = lqx_set_nonblocking(relayEnd)
                // The relay blocks a thread of its own; this task only waits for it. It is awaited
                // below on every path and ends when `relayEnd` is shut down or the port fails.
                let relay = Task { await runOnThread { lqx_vport_relay(port, relayEnd, stopRead, 256 << 10) } }
                do {
                    let channel = try await ClientBootstrap(group: group).withConnectedSocket(pair[1]) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try FramedChannel.framing(channel, maximumPayload: maxPayload)
                        }
                    }
                    // The session ends when the relay closes its end (host gone) or by itself; in
                    // the second case the relay sees the socket close and returns.
                    await withDiscardingTaskGroup { group in
                        group.addTask {
                            await AgentConnection(core: self.core, transport: "virtio-serial").serve(channel)
                        }
                        group.addTask {
                            _ = await relay.value
                            shutdown(relayEnd, Int32(SHUT_RDWR))
                        }
                    }
                } catch {
                    logger.warning("virtio-serial session failed", metadata: ["error": "\(error)"])
                }
                let outcome = await relay.value
                close(relayEnd)
                if outcome < 0 {
                    logger.warning(
                        "virtio-serial port failed", metadata: ["path": "\(path)", "error": "\(errnoText(-outcome))"])
                    return
                }
                if outcome == LQX_RELAY_STOPPED { return }
            }
        } onCancel: {
            var byte: UInt8 = 1
            _ = write(stopWrite, &byte, 1)
        }
    }
}

/// Runs blocking work on its own thread and resumes with its result.
func runOnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        startDetachedThread { continuation.resume(returning: body()) }
    }
}
