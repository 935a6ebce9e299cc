import CLQXSupport
import LQXModel
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A child process started with posix_spawn and reaped with `waitpid` on its own pid.
///
/// Not Foundation's `Process`: on Linux it learns of a child's exit from SIGCHLD through
/// libdispatch, and a process whose main thread is parked in `dispatch_main` (async `main`, the
/// Swift test runner) can take SIGCHLD on that thread and drop it; `waitUntilExit` then never
/// returns (a test hung that way, 2026-11-23, with the child a reaped-never zombie). `waitpid` on
/// the child's own pid cannot miss the exit, whatever other code does with SIGCHLD.
public final class Child: Sendable {
    /// The child's process id.
    public let pid: pid_t
    /// The exit status once reaped.
    private let exitStatus = Mutex<Int32?>(nil)

    private init(pid: pid_t) { self.pid = pid }

    /// Starts `path` (not searched in PATH) with `arguments`. Each of `stdin`, `stdout`, `stderr`
    /// is a descriptor for the child's 0, 1 and 2, or nil for /dev/null. The child leads a new
    /// process group and inherits no other descriptor.
    public static func spawn(
        _ path: String, _ arguments: [String], stdin: Int32? = nil, stdout: Int32? = nil, stderr: Int32? = nil
    ) throws(LQXError) -> Child {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard null >= 0 else { throw LQXError(.io, "cannot open /dev/null: \(errnoText())") }
        defer { close(null) }
        let request = SpawnRequest(
            path: path, argv: [path] + arguments, environment: SpawnRequest.inheritedEnvironment, stdin: stdin ?? null,
            stdout: stdout ?? null, stderr: stderr ?? null)
        do {
            return Child(pid: try request.spawn())
        } catch {
            throw LQXError(.io, "cannot run \(path): \(error.step) failed: \(errnoText(error.errno))")
        }
    }

    /// A close-on-exec pipe: (read end, write end).
    public static func pipe() throws(LQXError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard lqx_pipe_cloexec(&fds) == 0 else {
            throw LQXError(.io, "cannot create a pipe: \(String(cString: strerror(errno)))")
        }
        return (fds[0], fds[1])
    }

    /// Sends `signal` unless the child has been reaped (its pid may belong to another process).
    public func signal(_ signal: Int32) {
        exitStatus.withLock { if $0 == nil { _ = kill(pid, signal) } }
    }

    /// The exit status (the exit code, or 128 + N when killed by signal N) once the child has
    /// exited; nil while it runs. Reaps it.
    public func poll() -> Int32? {
        exitStatus.withLock { exitStatus in
            if let exitStatus { return exitStatus }
            var status: Int32 = 0
            var rc: pid_t
            repeat { rc = waitpid(pid, &status, WNOHANG) } while rc < 0 && errno == EINTR
            if rc == pid {
                exitStatus = Self.decode(status)
            } else if rc < 0 {
                exitStatus = 127  // not our child any more (reaped elsewhere): report it gone
            }
            return exitStatus
        }
    }

    /// Whether the child still runs.
    public var isRunning: Bool { poll() == nil }

    /// Blocks the calling thread until the child exits; its exit status. Call it from a thread of
    /// your own, never from the cooperative pool (see `exit(timeout:)`).
    public func wait() -> Int32 {
        if let done = exitStatus.withLock({ $0 }) { return done }
        var status: Int32 = 0
        var rc: pid_t
        repeat { rc = waitpid(pid, &status, 0) } while rc < 0 && errno == EINTR
        return exitStatus.withLock { exitStatus in
            if exitStatus == nil { exitStatus = rc == pid ? Self.decode(status) : 127 }
            return exitStatus!
        }
    }

    /// Waits up to `timeout` without blocking a thread; the exit status, or nil if it still runs.
    public func exit(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let status = poll() { return status }
            if ContinuousClock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    static func decode(_ status: Int32) -> Int32 {
        var value: Int32 = 0, core: Int32 = 0
        switch lqx_decode_wait_status(status, &value, &core) {
        case 0: return value
        case 1: return 128 + value
        default: return 127
        }
    }
}

/// What a finished command printed and how it exited.
public struct ChildOutput: Sendable {
    /// The exit code, or 128 + N when killed by signal N.
    public var status: Int32
    /// What the command wrote to stdout, up to the output limit.
    public var stdout: [UInt8]
    /// What the command wrote to stderr, up to the output limit.
    public var stderr: [UInt8]
    /// True when more output came than the limit (the excess was read and dropped).
    public var truncated: Bool

    /// `stdout` decoded as UTF-8 (invalid bytes become U+FFFD).
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    /// `stderr` decoded as UTF-8 (invalid bytes become U+FFFD).
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

extension Child {
    /// Runs a command to completion on the calling thread: writes `stdin` (nil: /dev/null),
    /// collects stdout and stderr (each kept up to `outputLimit` bytes, the rest drained so the
    /// child never stalls on a full pipe) and reaps it. Blocking: call it off the cooperative pool.
    public static func run(
        _ path: String, _ arguments: [String], stdin input: [UInt8]? = nil, outputLimit: Int = 16 << 20
    ) throws(LQXError) -> ChildOutput {
        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1], inPipe: [Int32] = [-1, -1]
        defer { for fd in outPipe + errPipe + inPipe where fd >= 0 { close(fd) } }
        guard lqx_pipe_cloexec(&outPipe) == 0, lqx_pipe_cloexec(&errPipe) == 0,
            input == nil || lqx_pipe_cloexec(&inPipe) == 0
        else { throw LQXError(.io, "cannot create a pipe: \(String(cString: strerror(errno)))") }
        let child = try spawn(
            path, arguments, stdin: input == nil ? nil : inPipe[0], stdout: outPipe[1], stderr: errPipe[1])
        // The child has its copies; the read loop sees EOF only once ours are closed.
        close(outPipe[1])
        outPipe[1] = -1
        close(errPipe[1])
        errPipe[1] = -1
        if input != nil {
            close(inPipe[0])
            inPipe[0] = -1
            _ = lqx_set_nonblocking(inPipe[1])
        }
        var output = ChildOutput(status: 0, stdout: [], stderr: [], truncated: false)
        var pending = input.map { $0[...] } ?? []
        if input != nil, pending.isEmpty {
            close(inPipe[1])
            inPipe[1] = -1
        }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while outPipe[0] >= 0 || errPipe[0] >= 0 {
            var fds = [
                pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0),
                pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0),
                pollfd(fd: inPipe[1], events: Int16(POLLOUT), revents: 0),
            ]
            let ready = Glibc.poll(&fds, nfds_t(fds.count), -1)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            if fds[2].revents != 0, inPipe[1] >= 0 {
                let written = pending.withUnsafeBytes { write(inPipe[1], $0.baseAddress, $0.count) }
                if written > 0 { pending = pending.dropFirst(written) }
                if (written < 0 && errno != EAGAIN && errno != EINTR) || pending.isEmpty {
                    close(inPipe[1])  // done, or the child stopped reading (EPIPE)
                    inPipe[1] = -1
                }
            }
            for (index, target) in [(0, \ChildOutput.stdout), (1, \ChildOutput.stderr)] where fds[index].revents != 0 {
                let fd = index == 0 ? outPipe[0] : errPipe[0]
                let n = read(fd, &buffer, buffer.count)
                if n < 0, errno == EINTR || errno == EAGAIN { continue }
                if n <= 0 {
                    close(fd)
                    if index == 0 { outPipe[0] = -1 } else { errPipe[0] = -1 }
                    continue
                }
                let room = max(0, outputLimit - output[keyPath: target].count)
                output[keyPath: target].append(contentsOf: buffer[0..<min(n, room)])
                if n > room { output.truncated = true }
            }
        }
        output.status = child.wait()
        return output
    }

    /// `run` on a thread of its own, so an async caller never blocks the cooperative pool.
    public static func output(
        _ path: String, _ arguments: [String], stdin: [UInt8]? = nil, outputLimit: Int = 16 << 20
    ) async throws(LQXError) -> ChildOutput {
        let result: Result<ChildOutput, LQXError> = await withCheckedContinuation { continuation in
            startDetachedThread {
                continuation.resume(
                    returning: Result { () throws(LQXError) in
                        try run(path, arguments, stdin: stdin, outputLimit: outputLimit)
                    })
            }
        }
        return try result.get()
    }
}
