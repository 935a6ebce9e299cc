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

/// A store that announces every commit on a `ChangeFeed` (commits of this process; replicas on
/// PostgreSQL will add LISTEN/NOTIFY).
public final class NotifyingStore: Store {
    /// The store underneath.
    public let base: any Store
    /// Where commits are announced.
    public let feed: ChangeFeed

    /// Wraps `base`.
    public init(_ base: any Store, feed: ChangeFeed) {
        self.base = base
        self.feed = feed
    }

    /// Runs the store underneath.
    public func run() async throws { try await base.run() }

    /// See `Store.commit`; announces the revision.
    public func commit(_ writes: [StoreWrite], events: [EventRecord], audit: [AuditRecord]) async throws(LQXError)
        -> Int64
    {
        let revision = try await base.commit(writes, events: events, audit: audit)
        feed.publish(revision)
        return revision
    }

    /// See `Store.object(_:id:)`.
    public func object(_ kind: ObjectKind, id: String) async throws(LQXError) -> StoredObject? {
        try await base.object(kind, id: id)
    }

    /// See `Store.object(_:project:name:)`.
    public func object(_ kind: ObjectKind, project: String, name: String) async throws(LQXError) -> StoredObject? {
        try await base.object(kind, project: project, name: name)
    }

    /// See `Store.objects(_:project:)`.
    public func objects(_ kind: ObjectKind, project: String?) async throws(LQXError) -> [StoredObject] {
        try await base.objects(kind, project: project)
    }

    /// See `Store.events(_:)`.
    public func events(_ query: LogQuery) async throws(LQXError) -> [EventRecord] { try await base.events(query) }

    /// See `Store.audit(_:)`.
    public func audit(_ query: LogQuery) async throws(LQXError) -> [AuditRecord] { try await base.audit(query) }
}
