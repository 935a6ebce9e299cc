import CLQXSupport

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
public final class Child: @unchecked Sendable {
    public let pid: pid_t
    private let lock = Mutex()
    private var exitStatus: Int32?

    private init(pid: pid_t) { self.pid = pid }

    /// Starts `path` (not searched in PATH) with `arguments`. Each of `stdin`, `stdout`, `stderr`
    /// is a descriptor for the child's 0, 1 and 2, or nil for /dev/null. The child leads a new
    /// process group and inherits no other descriptor.
    public static func spawn(
        _ path: String, _ arguments: [String], stdin: Int32? = nil, stdout: Int32? = nil, stderr: Int32? = nil
    ) throws(ChildError) -> Child {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard null >= 0 else { throw ChildError("cannot open /dev/null: \(String(cString: strerror(errno)))") }
        defer { close(null) }
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environmentStrings()
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var childErrno: Int32 = 0
        var step: UnsafePointer<CChar>?
        let pid = path.withCString { cPath in
            argv.withUnsafeBufferPointer { argvPointer in
                envp.withUnsafeBufferPointer { envPointer in
                    var options = lqx_spawn_options()
                    options.path = cPath
                    options.argv = argvPointer.baseAddress
                    options.envp = envPointer.baseAddress
                    options.stdin_fd = stdin ?? null
                    options.stdout_fd = stdout ?? null
                    options.stderr_fd = stderr ?? null
                    return lqx_spawn(&options, &childErrno, &step)
                }
            }
        }
        guard pid > 0 else {
            let what = step.map { String(cString: $0) } ?? "spawn"
            throw ChildError("cannot run \(path): \(what) failed: \(String(cString: strerror(childErrno)))")
        }
        return Child(pid: pid)
    }

    /// A close-on-exec pipe: (read end, write end).
    public static func pipe() throws(ChildError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard lqx_pipe_cloexec(&fds) == 0 else {
            throw ChildError("cannot create a pipe: \(String(cString: strerror(errno)))")
        }
        return (fds[0], fds[1])
    }

    /// The current environment as `KEY=VALUE` C strings, nil-terminated.
    private static func environmentStrings() -> [UnsafeMutablePointer<CChar>?] {
        var result: [UnsafeMutablePointer<CChar>?] = []
        var entry = environ
        while let string = entry.pointee {
            result.append(strdup(string))
            entry += 1
        }
        return result + [nil]
    }

    /// Sends `signal` unless the child has been reaped (its pid may belong to another process).
    public func signal(_ signal: Int32) {
        lock.withLock { if exitStatus == nil { _ = kill(pid, signal) } }
    }

    /// The exit status (the exit code, or 128 + N when killed by signal N) once the child has
    /// exited; nil while it runs. Reaps it.
    public func poll() -> Int32? {
        lock.withLock {
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
        if let done = lock.withLock({ exitStatus }) { return done }
        var status: Int32 = 0
        var rc: pid_t
        repeat { rc = waitpid(pid, &status, 0) } while rc < 0 && errno == EINTR
        return lock.withLock {
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

/// A command that could not be started or read.
public struct ChildError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// What a finished command printed and how it exited.
public struct ChildOutput: Sendable {
    /// The exit code, or 128 + N when killed by signal N.
    public var status: Int32
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    /// True when more output came than the limit (the excess was read and dropped).
    public var truncated: Bool

    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

extension Child {
    /// Runs a command to completion on the calling thread: writes `stdin` (nil: /dev/null),
    /// collects stdout and stderr (each kept up to `outputLimit` bytes, the rest drained so the
    /// child never stalls on a full pipe) and reaps it. Blocking: call it off the cooperative pool.
    public static func run(
        _ path: String, _ arguments: [String], stdin input: [UInt8]? = nil, outputLimit: Int = 16 << 20
    ) throws(ChildError) -> ChildOutput {
        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1], inPipe: [Int32] = [-1, -1]
        defer { for fd in outPipe + errPipe + inPipe where fd >= 0 { close(fd) } }
        guard lqx_pipe_cloexec(&outPipe) == 0, lqx_pipe_cloexec(&errPipe) == 0,
            input == nil || lqx_pipe_cloexec(&inPipe) == 0
        else { throw ChildError("cannot create a pipe: \(String(cString: strerror(errno)))") }
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
    ) async throws(ChildError) -> ChildOutput {
        let result: Result<ChildOutput, ChildError> = await withCheckedContinuation { continuation in
            var thread = pthread_t()
            let box = Unmanaged.passRetained(
                ThreadWork {
                    continuation.resume(
                        returning: Result { () throws(ChildError) in
                            try run(path, arguments, stdin: stdin, outputLimit: outputLimit)
                        })
                })
            let rc = pthread_create(
                &thread, nil,
                { raw in
                    let work = Unmanaged<ThreadWork>.fromOpaque(raw!).takeRetainedValue()
                    work.body()
                    return nil
                }, box.toOpaque())
            if rc == 0 {
                pthread_detach(thread)
            } else {
                box.release()
                continuation.resume(
                    returning: .failure(ChildError("cannot start a thread: \(String(cString: strerror(rc)))")))
            }
        }
        return try result.get()
    }
}

private final class ThreadWork: @unchecked Sendable {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// A pthread mutex (this module has no Foundation).
final class Mutex: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}
