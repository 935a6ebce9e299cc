import AgentProtocol
import NIOCore

/// What to run in the guest.
public struct ExecOptions: Sendable {
    /// Program and arguments; no shell is involved unless argv runs one.
    public var argv: [String]
    /// Variables added to the guest's default environment.
    public var environment: [String: String] = [:]
    /// Working directory (default: the user's home).
    public var workingDirectory: String?
    /// User name or uid (default: the agent's user).
    public var user: String?
    /// Run on a pseudo-terminal with this size (rows, cols).
    public var pty: (rows: UInt32, cols: UInt32)?
    /// Kill the process group after this long.
    public var timeout: Duration?
    /// Whether stdin is streamed (false: /dev/null).
    public var stdin: Bool = false

    /// Creates options for `argv`.
    public init(_ argv: [String]) { self.argv = argv }
}

/// How a guest process ended.
public struct ExecExitStatus: Sendable, Equatable {
    /// Exit code, when it exited.
    public var exitCode: Int32?
    /// Signal that killed it.
    public var signal: Int32?
    /// Killed because the timeout expired.
    public var timedOut: Bool
    /// Time from spawn to exit, measured in the guest.
    public var duration: Duration

    /// Creates a status (exactly one of `exitCode` and `signal` should be set).
    public init(exitCode: Int32?, signal: Int32?, timedOut: Bool, duration: Duration) {
        self.exitCode = exitCode
        self.signal = signal
        self.timedOut = timedOut
        self.duration = duration
    }

    /// Exit codes a process can have (`WEXITSTATUS` is 8 bits).
    public static let exitCodes: ClosedRange<Int32> = 0...255
    /// Signals that can kill a process on Linux (`SIGRTMAX` is 64).
    public static let signals: ClosedRange<Int32> = 1...64

    /// Shell convention: the exit code (0…255), or 128 + N when killed by signal N (129…192).
    /// A status no process can have (neither or both set, a code or signal out of range) is 255,
    /// never a success; `validated` rejects such statuses where they enter the host.
    public var shellStatus: Int32 {
        switch (exitCode, signal) {
        case (let code?, nil) where Self.exitCodes.contains(code): code
        case (nil, let signal?) where Self.signals.contains(signal): 128 + signal
        default: 255
        }
    }

    /// The status, or a `protocol` error naming what no real process could have reported.
    public func validated() throws(AgentError) -> ExecExitStatus {
        switch (exitCode, signal) {
        case (let code?, nil):
            guard Self.exitCodes.contains(code) else {
                throw AgentError(.protocolViolation, "the agent reported exit code \(code), outside 0…255")
            }
        case (nil, let signal?):
            guard Self.signals.contains(signal) else {
                throw AgentError(.protocolViolation, "the agent reported signal \(signal), outside 1…64")
            }
        case (nil, nil):
            throw AgentError(.protocolViolation, "the agent reported an exit with neither exit code nor signal")
        case (.some, .some):
            throw AgentError(.protocolViolation, "the agent reported an exit with both an exit code and a signal")
        }
        return self
    }
}

/// Output of a guest process, in the order it arrived.
public enum ExecEvent: Sendable {
    case stdout(ByteBuffer)
    case stderr(ByteBuffer)
    /// Last event.
    case exit(ExecExitStatus)
}

/// A process running in the guest.
public final class ExecProcess: Sendable, AsyncSequence {
    /// Each element is a chunk of output or, last, the exit status.
    public typealias Element = ExecEvent
    let session: AgentSession
    let stream: UInt32
    /// The process id in the guest.
    public let pid: Int32

    init(session: AgentSession, stream: UInt32, pid: Int32) {
        self.session = session
        self.stream = stream
        self.pid = pid
    }

    deinit {
        // Dropped before the exit status was read: stop the remote process (no-op when finished).
        session.abandon(stream)
    }

    /// Sends bytes to the process's stdin (waits for the agent's credit).
    public func write(_ bytes: ByteBuffer) async throws(AgentError) {
        try await session.mux.send(stream: stream, data: bytes)
    }

    /// Closes stdin (on a PTY: sends end-of-file, ^D).
    public func closeStdin() async throws(AgentError) {
        try await session.mux.send(stream: stream, data: ByteBuffer(), endOfChannel: true)
    }

    /// Delivers a signal to the process group.
    public func signal(_ number: Int32) async throws(AgentError) {
        try await session.mux.send(
            stream: stream, message: Control.with { $0.signal = .with { $0.signal = number } }.buffer())
    }

    /// Changes the PTY's window size.
    public func resize(rows: UInt32, cols: UInt32) async throws(AgentError) {
        try await session.mux.send(
            stream: stream,
            message: Control.with {
                $0.resize = .with {
                    $0.rows = rows; $0.cols = cols
                }
            }.buffer())
    }

    /// Aborts: the agent kills the process group.
    public func cancel() {
        session.mux.reset(stream: stream, error: AgentError(.cancelled, "cancelled by the host"))
    }

    /// Collects all output and the exit status (for small outputs).
    public func collect(limit: Int = 64 << 20) async throws -> (
        stdout: ByteBuffer, stderr: ByteBuffer, status: ExecExitStatus
    ) {
        var out = ByteBuffer(), err = ByteBuffer()
        for try await event in self {
            switch event {
            case .stdout(var b):
                guard out.readableBytes + b.readableBytes <= limit else {
                    throw AgentError(.invalidArgument, "output over \(limit) bytes")
                }
                out.writeBuffer(&b)
            case .stderr(var b):
                guard err.readableBytes + b.readableBytes <= limit else {
                    throw AgentError(.invalidArgument, "output over \(limit) bytes")
                }
                err.writeBuffer(&b)
            case .exit(let status):
                return (out, err, status)
            }
        }
        throw AgentError(.protocolViolation, "exec stream ended without an exit status")
    }

    /// Reads the process's output and exit status from its stream.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let process: ExecProcess
        var finished = false

        /// The next chunk of output, then the exit status, then nil; throws when the stream fails
        /// or the agent reports an error.
        public mutating func next() async throws -> ExecEvent? {
            guard !finished else { return nil }
            let mux = process.session.mux
            while true {
                let event: StreamEvent?
                do {
                    event = try await mux.next(stream: process.stream)
                } catch {
                    finished = true
                    mux.release(stream: process.stream)
                    throw error
                }
                guard let event else {
                    finished = true
                    mux.release(stream: process.stream)
                    throw AgentError(.protocolViolation, "exec stream ended without an exit status")
                }
                switch event {
                case .data(let bytes, let channel, _, _):
                    if bytes.readableBytes == 0 { continue }
                    return channel == 1 ? .stderr(bytes) : .stdout(bytes)
                case .message(let payload, _):
                    let reply = try Reply(payload: payload)
                    switch reply.kind {
                    case .execExit(let exit):
                        finished = true
                        mux.release(stream: process.stream)
                        var status = ExecExitStatus(
                            exitCode: nil, signal: nil, timedOut: exit.timedOut,
                            duration: .microseconds(Int64(clamping: exit.durationUs)))
                        switch exit.status {
                        case .exitCode(let code): status.exitCode = code
                        case .signal(let signal): status.signal = signal
                        case .none: break
                        }
                        return .exit(try status.validated())
                    case .error(let wire):
                        finished = true
                        mux.release(stream: process.stream)
                        throw AgentError(wire: wire)
                    default:
                        continue
                    }
                }
            }
        }
    }

    /// Iterate once: stdout/stderr chunks, then the exit status.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(process: self) }
}

extension AgentSession {
    /// Starts a process in the guest; returns once the agent has spawned it (errors such as a
    /// missing executable or a policy denial are thrown here).
    public func exec(_ options: ExecOptions) async throws(AgentError) -> ExecProcess {
        let request = Request.with {
            $0.exec = .with {
                $0.argv = options.argv
                $0.env = options.environment
                $0.cwd = options.workingDirectory ?? ""
                $0.user = options.user ?? ""
                if let pty = options.pty {
                    $0.pty = true
                    $0.window = .with {
                        $0.rows = pty.rows; $0.cols = pty.cols
                    }
                }
                if let timeout = options.timeout {
                    let ms = timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000
                    $0.timeoutMs = UInt32(clamping: max(ms, 1))
                }
                $0.stdin = options.stdin || options.pty != nil
            }
        }
        let stream = try open(request)
        do throws(AgentError) {
            let reply = try await guarded(stream, "exec") { _ throws(AgentError) in
                guard let (reply, _) = try await nextReply(stream) else {
                    throw AgentError(.protocolViolation, "exec stream ended before the process started")
                }
                return reply
            }
            guard case .execStarted(let started) = reply.kind else { throw unexpected(reply, to: "exec") }
            return ExecProcess(session: self, stream: stream, pid: started.pid)
        } catch {
            abandon(stream)
            throw error
        }
    }
}
