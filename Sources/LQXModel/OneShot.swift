import Synchronization

/// A value set once (a server's bound address, "the store is ready"), awaited by any number of
/// tasks. A waiter whose task is cancelled stops waiting with `cancelled` and is dropped; the
/// first `set` wins.
public final class OneShot<Value: Sendable>: Sendable {
    private struct State {
        var result: Result<Value, LQXError>?
        var waiters: [Int: CheckedContinuation<Value, any Error>] = [:]
        var nextID = 0
    }

    private let state = Mutex(State())

    /// An unset value.
    public init() {}

    /// The result once set; throws the failure it was set to, or `cancelled` when the waiting
    /// task is cancelled first.
    public func wait() async throws(LQXError) -> Value {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Value, any Error>) in
                    let now = state.withLock { state -> Result<Value, any Error>? in
                        if let result = state.result { return result.mapError { $0 as any Error } }
                        if Task.isCancelled { return .failure(LQXError(.cancelled, "stopped waiting")) }
                        state.waiters[id] = continuation
                        return nil
                    }
                    if let now { continuation.resume(with: now) }
                }
            } onCancel: {
                let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
                waiter?.resume(throwing: LQXError(.cancelled, "stopped waiting"))
            }
        } catch let error as LQXError {
            throw error
        } catch {
            throw LQXError(.internal, "unexpected error while waiting", cause: error)
        }
    }

    /// The result if set already.
    public var current: Result<Value, LQXError>? { state.withLock { $0.result } }

    /// Sets the result and wakes every waiter; later calls change nothing.
    public func set(_ result: Result<Value, LQXError>) {
        let waiters = state.withLock { state -> [CheckedContinuation<Value, any Error>] in
            guard state.result == nil else { return [] }
            state.result = result
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(with: result.mapError { $0 as any Error }) }
    }
}
