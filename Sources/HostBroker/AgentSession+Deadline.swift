import AgentProtocol
import NIOCore
import Synchronization

/// When an operation last made progress; its deadline counts from there.
final class OperationProgress: Sendable {
    private let last = Atomic<UInt64>(NIODeadline.now().uptimeNanoseconds)

    /// Records progress (a reply, a block sent or received): the deadline starts again.
    func note() {
        last.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed)
    }

    /// Time since the last progress.
    var idle: Duration {
        .nanoseconds(Int64(clamping: NIODeadline.now().uptimeNanoseconds &- last.load(ordering: .relaxed)))
    }
}

extension AgentSession {
    /// Runs `body` on `stream` with a deadline: when `operationTimeout` passes without
    /// `progress.note()`, the stream fails with `timeout` (its waiting reader or writer wakes with
    /// that error) and is reset, so the agent stops working on it. `body` runs in the caller's task.
    func guardedThrowing<T>(
        _ stream: UInt32, _ operation: String, timeout: Duration? = nil, _ body: (OperationProgress) async throws -> T
    ) async throws -> T {
        let progress = OperationProgress()
        let timeout = timeout ?? operationTimeout
        let mux = self.mux
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    let remaining = timeout - progress.idle
                    if remaining <= .zero {
                        mux.fail(
                            stream: stream,
                            error: AgentError(.timeout, "the agent did not answer \(operation) within \(timeout)"))
                        return
                    }
                    try await Task.sleep(for: remaining)
                }
            }
            defer { group.cancelAll() }
            return try await body(progress)
        }
    }

    /// `guardedThrowing` for bodies that throw only `AgentError`.
    func guarded<T>(
        _ stream: UInt32, _ operation: String, timeout: Duration? = nil,
        _ body: (OperationProgress) async throws(AgentError) -> T
    ) async throws(AgentError) -> T {
        do {
            return try await guardedThrowing(stream, operation, timeout: timeout) {
                (progress: OperationProgress) async throws -> T in
                try await body(progress)
            }
        } catch {
            throw AgentError.from(error)
        }
    }
}

/// A flag shared by the tasks of one operation.
final class SharedFlag: Sendable {
    private let value = Atomic<Bool>(false)

    func set() { value.store(true, ordering: .releasing) }

    var isSet: Bool { value.load(ordering: .acquiring) }
}
