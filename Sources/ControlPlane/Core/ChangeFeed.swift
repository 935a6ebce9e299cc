import LQXModel
import Synchronization

/// Tells followers (event watches, later the reconciler) that the store has a new revision, so
/// they read what changed instead of polling. Each follower sees the newest revision; a slow one
/// skips intermediate ones (it reads everything after its last position anyway).
public final class ChangeFeed: Sendable {
    private let followers = Mutex<[Int: AsyncStream<Int64>.Continuation]>([:])
    private let nextID = Atomic<Int>(0)

    /// A feed with no followers.
    public init() {}

    /// Revisions committed from now on, until the stream is dropped or `stop` is called (which
    /// ends the stream, e.g. when the RPC that follows it is cancelled).
    public func changes() -> (changes: AsyncStream<Int64>, stop: @Sendable () -> Void) {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        let (stream, continuation) = AsyncStream<Int64>.makeStream(bufferingPolicy: .bufferingNewest(1))
        continuation.onTermination = { [weak self] _ in self?.followers.withLock { _ = $0.removeValue(forKey: id) } }
        followers.withLock { $0[id] = continuation }
        return (stream, { continuation.finish() })
    }

    /// Announces a committed revision.
    public func publish(_ revision: Int64) {
        for follower in followers.withLock({ Array($0.values) }) { follower.yield(revision) }
    }
}
