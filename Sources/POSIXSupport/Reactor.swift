import CLQXSupport
import Glibc
import LQXModel
import Synchronization

/// Readiness of descriptors for async code, without an event loop hop or a thread per wait.
///
/// One thread blocks in epoll on every armed descriptor; a waiter arms its descriptor once
/// (EPOLLONESHOT) and is resumed when it is ready. Used for child processes: the pipes of exec
/// output and input, and pidfds (readable once the process exited). A descriptor has at most one
/// waiter at a time; its owner closes it only after its wait returned.
///
/// Owned by the service that needs it (the guest agent's core); its thread starts with the first
/// wait and lives as long as the process.
public final class Reactor: Sendable {
    private let epoll: Int32
    private let waiters = Mutex<[Int32: CheckedContinuation<Void, any Error>]>([:])
    private let started = Atomic<Bool>(false)

    /// Creates a reactor (its epoll descriptor; the thread starts with the first wait).
    public init() {
        epoll = lqx_reactor_create()
    }

    /// Waits until `fd` is readable (or, with `writable`, writable), hung up or in error.
    /// Throws `CancellationError` when the task is cancelled first (unless `cancellable` is false).
    public func wait(_ fd: Int32, writable: Bool = false, cancellable: Bool = true) async throws {
        guard epoll >= 0 else { throw LQXError(.internal, "epoll is not available: \(errnoText())") }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                waiters.withLock { $0[fd] = continuation }
                if !started.exchange(true, ordering: .acquiringAndReleasing) {
                    startDetachedThread(stackSize: 128 << 10) { [self] in loop() }
                }
                if lqx_reactor_add(epoll, fd, writable ? 1 : 0) != 0 {
                    let error = LQXError(.io, "epoll_ctl: \(errnoText())")
                    waiters.withLock { $0.removeValue(forKey: fd) }?.resume(throwing: error)
                    return
                }
                if cancellable && Task.isCancelled { cancel(fd) }
            }
        } onCancel: {
            if cancellable { cancel(fd) }
        }
    }

    private func cancel(_ fd: Int32) {
        guard let continuation = waiters.withLock({ $0.removeValue(forKey: fd) }) else { return }
        lqx_reactor_remove(epoll, fd)
        continuation.resume(throwing: CancellationError())
    }

    private func loop() {
        var ready = [Int32](repeating: -1, count: 64)
        while true {
            let n = lqx_reactor_wait(epoll, &ready, Int32(ready.count))
            if n < 0 {
                usleep(10_000)
                continue
            }
            for fd in ready.prefix(Int(n)) {
                waiters.withLock { $0.removeValue(forKey: fd) }?.resume()
            }
        }
    }
}

/// Waits for child processes without blocking a thread per child.
public enum ChildReaper {
    /// Waits until `pid` exits and returns its wait status (pidfd readiness through `reactor`).
    /// Not cancellable: a child is always reaped.
    public static func wait(pid: pid_t, reactor: Reactor) async -> Int32 {
        var status: Int32 = 0
        // Most short commands have exited by now; then no descriptor is needed at all.
        if let done = reap(pid, &status) { return done ? status : 127 << 8 }
        let pidfd = lqx_pidfd_open(pid)
        guard pidfd >= 0 else {
            // Before Linux 5.3: a thread blocks in waitpid.
            return await withCheckedContinuation { continuation in
                startDetachedThread(stackSize: 64 << 10) { continuation.resume(returning: blockingWait(pid)) }
            }
        }
        defer { close(pidfd) }
        while true {
            try? await reactor.wait(pidfd, cancellable: false)
            if let done = reap(pid, &status) { return done ? status : 127 << 8 }
        }
    }

    /// waitpid(WNOHANG): true when reaped, false when it cannot be waited for, nil while running.
    private static func reap(_ pid: pid_t, _ status: inout Int32) -> Bool? {
        while true {
            let rc = waitpid(pid, &status, WNOHANG)
            if rc == pid { return true }
            if rc == 0 { return nil }
            if errno != EINTR { return false }
        }
    }

    /// `waitpid` retried on EINTR; a child that cannot be waited for reports status 127.
    public static func blockingWait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return 127 << 8 }
        }
        return status
    }
}
