import AgentProtocol
import CLQXSupport
import Glibc
import NIOCore
import NIOPosix
import POSIXSupport
import Synchronization

/// Runs one command: stdin streamed in, stdout/stderr streamed out with backpressure, signals,
/// PTY, timeout, and the exit status last.
struct ExecHandler {
    let core: AgentCore
    let request: Limiquantix_Agent_V1_ExecRequest
    let context: StreamContext

    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    /// How long output may keep flowing after the process exited (a background child holding the pipe).
    static let outputGrace: Duration = .seconds(2)

    private typealias Pipe = NIOAsyncChannel<ByteBuffer, ByteBuffer>

    /// /dev/null, opened once (close-on-exec) for the stdin of commands that get no input.
    private static let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)

    func run() async throws {
        guard let program = request.argv.first, !program.isEmpty else {
            throw AgentError(.invalidArgument, "exec needs a non-empty argv")
        }
        let current = core.users.current()
        var user: ExecUser?
        if !request.user.isEmpty {
            let wanted = try ExecUser.lookup(request.user)
            if wanted.uid != current.uid {
                guard geteuid() == 0 else {
                    throw AgentError(
                        .denied, "the agent does not run as root and cannot run commands as \(request.user)")
                }
                user = wanted
            }
        }
        let runAs = user ?? current
        // KEY=VALUE strings built directly (no dictionary): the request's variables, in name order,
        // replace the defaults of the same name.
        var environment = [
            "PATH=\(Self.defaultPath)", "HOME=\(runAs.home)", "USER=\(runAs.name)", "LOGNAME=\(runAs.name)",
            "SHELL=\(runAs.shell)", "LANG=C.UTF-8",
        ]
        if request.pty { environment.append("TERM=xterm-256color") }
        var searchPath = Self.defaultPath
        for (key, value) in request.env.sorted(by: { $0.key < $1.key }) {
            guard !key.isEmpty, !key.contains("=" as Character), !key.contains("\0" as Character),
                !value.contains("\0" as Character)
            else {
                throw AgentError(.invalidArgument, "invalid environment variable name \(key.debugDescription)")
            }
            if key == "PATH" { searchPath = value }
            let prefix = key + "="
            environment.removeAll { $0.hasPrefix(prefix) }
            environment.append(prefix + value)
        }
        let cwd = request.cwd.isEmpty ? (access(runAs.home, X_OK) == 0 ? runAs.home : "/") : request.cwd
        let path = try ChildProcess.resolve(program, path: searchPath)
        var cwdInfo = stat()
        if stat(cwd, &cwdInfo) != 0 {
            let code: AgentError.Code = errno == EACCES ? .denied : .notFound
            throw AgentError(code, "working directory \(cwd): \(errnoText())")
        }
        guard (cwdInfo.st_mode & S_IFMT) == S_IFDIR else {
            throw AgentError(.invalidArgument, "working directory \(cwd) is not a directory")
        }
        var spawn = SpawnRequest(
            path: path, argv: request.argv, environment: environment, workingDirectory: cwd,
            credentials: user.map { SpawnRequest.Credentials(uid: $0.uid, gid: $0.gid, groups: $0.groups) })

        // Descriptors: the parent's ends become NIO channels, the child's ends are closed after spawn.
        var childEnds: [Int32] = []
        var parentEnds: [Int32] = []
        defer { for fd in childEnds { close(fd) } }
        var ptyMaster: Int32 = -1
        var stdinWrite: Int32 = -1, stdoutRead: Int32 = -1, stderrRead: Int32 = -1
        do {
            if request.pty {
                var slave = [CChar](repeating: 0, count: 128)
                let rows = UInt16(clamping: request.window.rows), cols = UInt16(clamping: request.window.cols)
                ptyMaster = lqx_open_pty(&slave, slave.count, rows, cols)
                guard ptyMaster >= 0 else { throw AgentError(.io, "cannot open a pty: \(errnoText())") }
                parentEnds.append(ptyMaster)
                spawn.ptySlave = String(decoding: slave.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            } else {
                let out = try makePipe(), err = try makePipe()
                stdoutRead = out.read
                stderrRead = err.read
                parentEnds += [out.read, err.read]
                childEnds += [out.write, err.write]
                spawn.stdout = out.write
                spawn.stderr = err.write
                if request.stdin {
                    let input = try makePipe()
                    stdinWrite = input.write
                    parentEnds.append(input.write)
                    childEnds.append(input.read)
                    spawn.stdin = input.read
                } else if Self.devNull >= 0 {
                    spawn.stdin = Self.devNull
                } else {
                    let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
                    guard null >= 0 else { throw AgentError(.io, "cannot open /dev/null: \(errnoText())") }
                    childEnds.append(null)
                    spawn.stdin = null
                }
            }
            // The host-side ends are used with non-blocking I/O (the child's ends stay blocking: each
            // end of a pipe is its own open file description).
            if !request.pty {
                for fd in parentEnds where lqx_set_nonblocking(fd) != 0 {
                    throw AgentError(.io, "cannot make a pipe non-blocking: \(errnoText())")
                }
            }
        } catch {
            for fd in parentEnds { close(fd) }
            throw error
        }
        let pid: pid_t
        do {
            pid = try ChildProcess.spawn(spawn)
        } catch {
            for fd in parentEnds { close(fd) }
            throw error
        }
        for fd in childEnds { close(fd) }
        childEnds = []
        let started = ContinuousClock.now
        context.logger.debug("exec started", metadata: ["exec.pid": "\(pid)", "exec.argv": "\(request.argv)"])
        try? await context.reply(.with { $0.execStarted = .with { $0.pid = pid } })

        let outcome: (status: Int32, timedOut: Bool, bytes: Int)
        if ptyMaster >= 0 {
            let channel = try await Self.adopt(inputOutput: ptyMaster, group: MultiThreadedEventLoopGroup.singleton)
            outcome = try await channel.executeThenClose { inbound, outbound in
                try await supervise(
                    pid: pid, sources: [(.stream(inbound), 0)], sink: .pty(outbound), ptyMaster: ptyMaster)
            }
        } else {
            // Pipes are read and written directly with non-blocking I/O and the reactor: no event
            // loop channel setup per command (that cost more than the spawn itself).
            let out = Descriptor(stdoutRead), err = Descriptor(stderrRead)
            let input = stdinWrite >= 0 ? Descriptor(stdinWrite) : nil
            defer { for descriptor in [out, err, input].compactMap({ $0 }) { descriptor.close() } }
            outcome = try await supervise(
                pid: pid, sources: [(.pipe(out), 0), (.pipe(err), 1)], sink: input.map { .pipe($0) }, ptyMaster: -1)
        }
        var value: Int32 = 0, core: Int32 = 0
        let kind = lqx_decode_wait_status(outcome.status, &value, &core)
        let duration = ContinuousClock.now - started
        let exit = Limiquantix_Agent_V1_ExecExit.with {
            if kind == 1 { $0.signal = value } else { $0.exitCode = value }
            $0.timedOut = outcome.timedOut
            $0.coreDumped = core != 0
            $0.durationUs = UInt64(
                duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000)
        }
        self.core.audit?.record(
            "exec",
            [
                "argv": request.argv, "user": runAs.name, "cwd": cwd, "pid": Int(pid),
                "result": kind == 1 ? "signal \(value)" : "exit \(value)", "timed_out": outcome.timedOut,
                "output_bytes": outcome.bytes,
            ])
        try await context.reply(.with { $0.execExit = exit }, end: true)
    }

    private enum Event: Sendable {
        case exited(Int32)
        case outputDone(Int, AgentError?)
        case inputDone(AgentError?)
        case timeout
        case graceExpired
    }

    /// Runs the pumps and the reaper until the process exited and its output is drained (or the
    /// grace period after exit ran out). Kills the process group when the host goes away.
    private func supervise(
        pid: pid_t, sources: [(OutputSource, UInt8)],
        sink: InputSink?, ptyMaster: Int32
    ) async throws -> (status: Int32, timedOut: Bool, bytes: Int) {
        let context = self.context, reactor = core.reactor
        let timeoutMs = request.timeoutMs
        return try await withThrowingTaskGroup(of: Event.self) { group in
            group.addTask { .exited(await ChildReaper.wait(pid: pid, reactor: reactor)) }
            group.addTask {
                do {
                    let total = try await withThrowingTaskGroup(of: Int.self) { pumps in
                        for (source, channel) in sources {
                            pumps.addTask {
                                try await Self.pump(source, channel: channel, context: context, reactor: reactor)
                            }
                        }
                        return try await pumps.reduce(0, +)
                    }
                    return .outputDone(total, nil)
                } catch {
                    return .outputDone(0, (error as? AgentError) ?? AgentError(.cancelled, "\(error)"))
                }
            }
            group.addTask {
                do {
                    try await Self.input(context: context, sink: sink, pid: pid, ptyMaster: ptyMaster, reactor: reactor)
                    return .inputDone(nil)
                } catch {
                    return .inputDone((error as? AgentError) ?? AgentError(.cancelled, "\(error)"))
                }
            }
            if timeoutMs > 0 {
                group.addTask {
                    try await Task.sleep(for: .milliseconds(Int64(timeoutMs)))
                    return .timeout
                }
            }
            var status: Int32?
            var outputDone = false
            var bytes = 0
            var timedOut = false
            var hostGone: AgentError?
            while let event = try await group.next() {
                switch event {
                case .exited(let s):
                    status = s
                    if outputDone { break }
                    group.addTask {
                        try await Task.sleep(for: Self.outputGrace)
                        return .graceExpired
                    }
                    continue
                case .outputDone(let total, let error):
                    outputDone = true
                    bytes = total
                    if let error {
                        hostGone = error
                        kill(-pid, SIGKILL)
                    }
                    if status != nil { break }
                    continue
                case .inputDone(let error):
                    if let error, status == nil {
                        hostGone = error
                        kill(-pid, SIGKILL)
                    }
                    continue
                case .timeout:
                    if status == nil {
                        timedOut = true
                        kill(-pid, SIGKILL)
                    }
                    continue
                case .graceExpired:
                    break
                }
                break
            }
            group.cancelAll()
            // Drain the remaining tasks; the reaper has finished because status is set or the
            // process group was killed.
            while let event = try? await group.next() {
                if case .exited(let s) = event { status = s }
            }
            if let hostGone,
                hostGone.code == .closed || hostGone.code == .cancelled || hostGone.code == .protocolViolation
            {
                throw hostGone
            }
            return (status ?? 0, timedOut, bytes)
        }
    }

    /// Where output comes from: a pipe read directly, or the PTY master's NIO channel.
    enum OutputSource: Sendable {
        case pipe(Descriptor)
        case stream(NIOAsyncChannelInboundStream<ByteBuffer>)
    }

    /// Reads larger than this are sent as they are; smaller ones are copied into a right-sized
    /// buffer so a trickle of small writes never pins a full read buffer per chunk.
    static let readChunk = 64 * 1024

    private static func pump(
        _ source: OutputSource, channel: UInt8, context: StreamContext, reactor: Reactor
    ) async throws -> Int {
        var total = 0
        switch source {
        case .pipe(let descriptor):
            defer { descriptor.close() }
            let fd = descriptor.fd
            var buffer = ByteBuffer()
            readLoop: while true {
                var result = 0
                var code: Int32 = 0
                buffer.clear(minimumCapacity: readChunk)
                buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: readChunk) { raw in
                    result = read(fd, raw.baseAddress, readChunk)
                    code = errno
                    return max(result, 0)
                }
                switch result {
                case 1...:
                    total += result
                    if result >= readChunk / 2 {
                        try await context.send(data: buffer, channel: channel)
                        buffer = ByteBuffer()
                    } else {
                        try await context.send(data: ByteBuffer(bytes: buffer.readableBytesView), channel: channel)
                    }
                case 0:
                    break readLoop
                default:
                    if code == EINTR { continue }
                    guard code == EAGAIN || code == EWOULDBLOCK else { break readLoop }
                    try await reactor.wait(fd)
                }
            }
        case .stream(let stream):
            do {
                for try await chunk in stream {
                    total += chunk.readableBytes
                    try await context.send(data: chunk, channel: channel)
                }
            } catch let error as AgentError {
                throw error
            } catch {
                // EIO on a pty master once the last slave closed is the pty's EOF.
            }
        }
        try Task.checkCancellation()
        try await context.send(data: ByteBuffer(), channel: channel, endOfChannel: true)
        return total
    }

    /// Where stdin bytes go: a pipe (EOF closes it once every byte is written) or the PTY master
    /// (EOF is sent as ^D, the terminal's end-of-file character).
    enum InputSink: Sendable {
        case pipe(Descriptor)
        case pty(NIOAsyncChannelOutboundWriter<ByteBuffer>)

        /// Writes every byte; throws when the process closed its end (EPIPE) or on cancellation.
        func write(_ bytes: ByteBuffer, reactor: Reactor) async throws {
            switch self {
            case .pipe(let descriptor):
                let fd = descriptor.fd
                var offset = 0
                while offset < bytes.readableBytes {
                    var code: Int32 = 0
                    let n = bytes.withUnsafeReadableBytes { raw in
                        let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                        code = errno
                        return n
                    }
                    if n >= 0 {
                        offset += n
                    } else if code == EAGAIN || code == EWOULDBLOCK {
                        try await reactor.wait(fd, writable: true)
                    } else if code != EINTR {
                        throw AgentError(.io, "stdin: \(errnoText(code))")
                    }
                }
            case .pty(let writer): try await writer.write(bytes)
            }
        }

        func endOfInput() async {
            switch self {
            case .pipe(let descriptor): descriptor.close()
            case .pty(let writer): try? await writer.write(ByteBuffer(bytes: [0x04]))
            }
        }

    }

    private static func input(
        context: StreamContext, sink: InputSink?, pid: pid_t, ptyMaster: Int32, reactor: Reactor
    ) async throws {
        var sink = sink
        while let event = try await context.next() {
            switch event {
            case .data(let bytes, _, let endOfChannel, _):
                // A process that closed its stdin (EPIPE) simply stops receiving input.
                if bytes.readableBytes > 0 { try? await sink?.write(bytes, reactor: reactor) }
                if endOfChannel {
                    await sink?.endOfInput()
                    if ptyMaster < 0 { sink = nil }
                }
            case .message(let payload, _):
                let control = try Control(payload: payload)
                switch control.kind {
                case .signal(let s):
                    if s.signal > 0 && s.signal < 65 {
                        kill(-pid, s.signal)
                    } else {
                        context.logger.info("ignored signal out of range", metadata: ["signal": "\(s.signal)"])
                    }
                case .resize(let size):
                    if ptyMaster >= 0 {
                        _ = lqx_set_window_size(ptyMaster, UInt16(clamping: size.rows), UInt16(clamping: size.cols))
                        kill(-pid, SIGWINCH)
                    }
                case .commit, .none:
                    throw AgentError(.protocolViolation, "unexpected control message on an exec stream")
                }
            }
        }
        // The host will send nothing more; keep running until the process ends.
        try await Task.sleep(for: .seconds(365 * 86_400))
    }

    private func makePipe() throws(AgentError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        guard lqx_pipe_cloexec(&fds) == 0 else { throw AgentError(.io, "pipe: \(errnoText())") }
        return (fds[0], fds[1])
    }

    private static func adopt(input fd: Int32, group: any EventLoopGroup) async throws -> Pipe {
        try await NIOPipeBootstrap(group: group).takingOwnershipOfDescriptor(input: fd) { channel in
            channel.eventLoop.makeCompletedFuture { try Pipe(wrappingChannelSynchronously: channel) }
        }
    }

    private static func adopt(inputOutput fd: Int32, group: any EventLoopGroup) async throws -> Pipe {
        try await NIOPipeBootstrap(group: group).takingOwnershipOfDescriptor(inputOutput: fd) { channel in
            channel.eventLoop.makeCompletedFuture { try Pipe(wrappingChannelSynchronously: channel) }
        }
    }
}
