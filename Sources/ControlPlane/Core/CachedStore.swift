import LQXModel
import Synchronization

/// The store as this process sees it: reads are served from memory, every commit goes to the
/// store underneath first and is applied here and announced on a `ChangeFeed` only once it is
/// durable. Objects are also kept decoded, so a scheduling pass, a reconciler pass or `vm list`
/// over 10,000 VMs neither reads every row nor parses JSON.
///
/// A kind is loaded on its first read. Each read asks the store for its revision (one indexed
/// row): when commits this process did not make happened since the kind was loaded (another
/// control plane on the same PostgreSQL, a tool), the kind is read again, reusing what was
/// decoded for unchanged objects. Entries carry the revision of their last write and an update
/// only replaces an older one, so commits that return out of order leave the newest; a deleted id
/// is remembered so a late update cannot bring it back. Checks that must hold across writers —
/// versions, uniqueness, capacity, quota — are made by the store in the transaction, never here.
public final class CachedStore: Store {
    /// The store underneath.
    public let base: any Store
    /// Where commits are announced.
    public let feed: ChangeFeed
    private let state = Mutex(State())

    private struct Key: Hashable, Comparable {
        var project: String
        var name: String
        static func < (a: Key, b: Key) -> Bool { (a.project, a.name) < (b.project, b.name) }
    }

    private struct Objects {
        var byID: [String: StoredObject] = [:]
        /// Objects decoded, filled on first typed read and dropped when the object changes.
        var decoded: [String: any Sendable] = [:]
        var byName: [Key: String] = [:]
        /// Every key, sorted (kept sorted as objects come and go: a list never sorts).
        var ordered: [Key] = []
        /// Revisions at which ids were deleted.
        var deleted: [String: Int64] = [:]

        /// Where `key` is or would go in `ordered`.
        private func position(_ key: Key) -> Int {
            var low = 0, high = ordered.count
            while low < high {
                let middle = (low + high) / 2
                if ordered[middle] < key { low = middle + 1 } else { high = middle }
            }
            return low
        }

        private mutating func index(_ key: Key) {
            let at = position(key)
            if at == ordered.count || ordered[at] != key { ordered.insert(key, at: at) }
        }

        private mutating func unindex(_ key: Key) {
            let at = position(key)
            if at < ordered.count, ordered[at] == key { ordered.remove(at: at) }
        }

        mutating func put(_ object: StoredObject) {
            if let dead = deleted[object.id], dead >= object.version { return }
            let key = Key(project: object.project, name: object.name)
            if let old = byID[object.id] {
                guard old.version < object.version else { return }
                let oldKey = Key(project: old.project, name: old.name)
                if oldKey != key {
                    byName[oldKey] = nil
                    unindex(oldKey)
                    index(key)
                }
            } else {
                index(key)
            }
            byID[object.id] = object
            decoded[object.id] = nil
            byName[key] = object.id
        }

        /// Takes `fetched` (the kind as the store holds it, at `revision` or later) as the truth,
        /// keeping decoded values of unchanged objects and this process's writes newer than it.
        mutating func reload(_ fetched: [StoredObject], at revision: Int64) {
            var next = Objects()
            next.deleted = deleted.filter { $0.value > revision }
            var keep = fetched
            for object in byID.values where object.version > revision {
                if !keep.contains(where: { $0.id == object.id && $0.version >= object.version }) { keep.append(object) }
            }
            next.ordered.reserveCapacity(keep.count)
            for object in keep.sorted(by: { ($0.project, $0.name) < ($1.project, $1.name) }) {
                if let dead = next.deleted[object.id], dead >= object.version { continue }
                let key = Key(project: object.project, name: object.name)
                if next.byID[object.id] == nil { next.ordered.append(key) }
                next.byID[object.id] = object
                next.byName[key] = object.id
                if byID[object.id]?.version == object.version { next.decoded[object.id] = decoded[object.id] }
            }
            self = next
        }

        mutating func remove(_ id: String, at revision: Int64) {
            deleted[id] = max(deleted[id] ?? 0, revision)
            guard let old = byID[id], old.version < revision else { return }
            byID[id] = nil
            decoded[id] = nil
            let key = Key(project: old.project, name: old.name)
            byName[key] = nil
            unindex(key)
        }

        /// Keys in order, of one project when given.
        func keys(project: String?) -> ArraySlice<Key> {
            guard let project else { return ordered[...] }
            let start = position(Key(project: project, name: ""))
            var end = start
            while end < ordered.count, ordered[end].project == project { end += 1 }
            return ordered[start..<end]
        }

        mutating func decoded<T: Sendable>(_ id: String, _ decode: (StoredObject) throws(LQXError) -> T)
            throws(LQXError) -> T?
        {
            if let value = decoded[id] as? T { return value }
            guard let object = byID[id] else { return nil }
            let value = try decode(object)
            decoded[id] = value
            return value
        }

        mutating func decoded<T: Sendable>(
            project: String, name: String, _ decode: (StoredObject) throws(LQXError) -> T
        ) throws(LQXError) -> T? {
            guard let id = byName[Key(project: project, name: name)] else { return nil }
            return try decoded(id, decode)
        }

        mutating func decodedAll<T: Sendable>(project: String?, _ decode: (StoredObject) throws(LQXError) -> T)
            throws(LQXError) -> [T]
        {
            var result: [T] = []
            let keys = keys(project: project)
            result.reserveCapacity(keys.count)
            for key in keys {
                if let id = byName[key], let value = try decoded(id, decode) { result.append(value) }
            }
            return result
        }

        /// At most `limit` decoded objects passing `filter`, after `after`, in order.
        mutating func decodedPage<T: Sendable>(
            project: String?, after: Key?, limit: Int, where filter: (T) -> Bool,
            _ decode: (StoredObject) throws(LQXError) -> T
        ) throws(LQXError) -> [T] {
            var keys = keys(project: project)
            if let after { keys = keys[min(max(keys.startIndex, position(after)), keys.endIndex)...] }
            var result: [T] = []
            for key in keys where result.count < limit {
                if let after, key <= after { continue }
                if let id = byName[key], let value = try decoded(id, decode), filter(value) { result.append(value) }
            }
            return result
        }

        func all(project: String?) -> [StoredObject] {
            keys(project: project).compactMap { byName[$0].flatMap { byID[$0] } }
        }
    }

    private struct State {
        var kinds: [ObjectKind: Objects] = [:]
        /// Per loaded kind: every revision up to this one is reflected here.
        var upTo: [ObjectKind: Int64] = [:]
        /// Revisions of this process's commits applied here (above the lowest `upTo`).
        var applied: Set<Int64> = []
        /// This process's commits sent to the store and not yet applied here.
        var inFlight = 0
        /// Reads of a kind under way.
        var loading: [ObjectKind: Task<Void, any Error>] = [:]

        mutating func advance() {
            for kind in upTo.keys {
                while let revision = upTo[kind], applied.contains(revision + 1) { upTo[kind] = revision + 1 }
            }
            if let lowest = upTo.values.min() { applied = applied.filter { $0 > lowest } }
        }
    }

    /// Wraps `base`.
    public init(_ base: any Store, feed: ChangeFeed) {
        self.base = base
        self.feed = feed
    }

    /// Runs the store underneath.
    public func run() async throws { try await base.run() }

    /// See `Store.commit`; applies the writes here, then announces the revision.
    public func commit(_ writes: [StoreWrite], events: [EventRecord], audit: [AuditRecord]) async throws(LQXError)
        -> Int64
    {
        state.withLock { $0.inFlight += 1 }
        let revision: Int64
        do {
            revision = try await base.commit(writes, events: events, audit: audit)
        } catch {
            state.withLock { $0.inFlight -= 1 }
            throw error
        }
        state.withLock { state in
            state.inFlight -= 1
            for write in writes {
                switch write {
                case .create(var object), .update(var object, _):
                    object.version = revision
                    state.kinds[object.kind, default: Objects()].put(object)
                case .delete(let kind, let id, _):
                    state.kinds[kind, default: Objects()].remove(id, at: revision)
                case .require, .capacity, .quota:
                    break
                }
            }
            state.applied.insert(revision)
            state.advance()
        }
        feed.publish(revision)
        return revision
    }

    /// See `Store.revision()`.
    public func revision() async throws(LQXError) -> Int64 { try await base.revision() }

    /// Makes `kind` current: loads it on first use, and reads it again when the store moved past
    /// what is here by more than this process's commits in flight (whose results are applied as
    /// they return). One read of a kind at a time: callers that find one under way wait for it.
    private func load(_ kind: ObjectKind) async throws(LQXError) {
        while true {
            let current = try await base.revision()
            enum Next { case fresh, wait(Task<Void, any Error>), read(Task<Void, any Error>) }
            let next = state.withLock { state -> Next in
                if let upTo = state.upTo[kind], upTo + Int64(state.inFlight) >= current { return .fresh }
                if let running = state.loading[kind] { return .wait(running) }
                let base = self.base
                let task = Task<Void, any Error> {
                    let objects = try await base.objects(kind, project: nil)
                    self.state.withLock { state in
                        state.kinds[kind, default: Objects()].reload(objects, at: current)
                        state.upTo[kind] = max(state.upTo[kind] ?? current, current)
                        state.advance()
                        state.loading[kind] = nil
                    }
                }
                state.loading[kind] = task
                return .read(task)
            }
            switch next {
            case .fresh:
                return
            case .wait(let task), .read(let task):
                do {
                    try await task.value
                } catch {
                    state.withLock { state in
                        if state.loading[kind] == task { state.loading[kind] = nil }
                    }
                    throw error as? LQXError ?? LQXError(.io, "the store could not be read", cause: error)
                }
                if case .read = next { return }
            }
        }
    }

    /// See `Store.object(_:id:)`.
    public func object(_ kind: ObjectKind, id: String) async throws(LQXError) -> StoredObject? {
        try await load(kind)
        return state.withLock { $0.kinds[kind]?.byID[id] }
    }

    /// See `Store.object(_:project:name:)`.
    public func object(_ kind: ObjectKind, project: String, name: String) async throws(LQXError) -> StoredObject? {
        try await load(kind)
        return state.withLock { state in
            state.kinds[kind]?.byName[Key(project: project, name: name)].flatMap { state.kinds[kind]?.byID[$0] }
        }
    }

    /// See `Store.objects(_:project:)`.
    public func objects(_ kind: ObjectKind, project: String?) async throws(LQXError) -> [StoredObject] {
        try await load(kind)
        return state.withLock { $0.kinds[kind, default: Objects()].all(project: project) }
    }

    /// Every object of a kind (in one project when given), decoded by `decode` once per revision.
    public func values<T: Sendable>(
        _ kind: ObjectKind, project: String?, _ decode: (StoredObject) throws(LQXError) -> T
    ) async throws(LQXError) -> [T] {
        try await load(kind)
        return try state.withLock { (state) throws(LQXError) -> [T] in
            try state.kinds[kind, default: Objects()].decodedAll(project: project, decode)
        }
    }

    /// A page: at most `limit` objects of a kind (in one project when given) that pass `filter`,
    /// ordered by project and name, after the key `after`; decoded once per revision.
    public func values<T: Sendable>(
        _ kind: ObjectKind, project: String?, after: (project: String, name: String)?, limit: Int,
        where filter: (T) -> Bool, _ decode: (StoredObject) throws(LQXError) -> T
    ) async throws(LQXError) -> [T] {
        try await load(kind)
        let start = after.map { Key(project: $0.project, name: $0.name) }
        return try state.withLock { (state) throws(LQXError) -> [T] in
            try state.kinds[kind, default: Objects()].decodedPage(
                project: project, after: start, limit: limit, where: filter, decode)
        }
    }

    /// The object of that id, decoded by `decode` once per revision, or nil.
    public func value<T: Sendable>(
        _ kind: ObjectKind, id: String, _ decode: (StoredObject) throws(LQXError) -> T
    ) async throws(LQXError) -> T? {
        try await load(kind)
        return try state.withLock { (state) throws(LQXError) -> T? in
            try state.kinds[kind, default: Objects()].decoded(id, decode)
        }
    }

    /// The object of that name in that project, decoded by `decode` once per revision, or nil.
    public func value<T: Sendable>(
        _ kind: ObjectKind, project: String, name: String, _ decode: (StoredObject) throws(LQXError) -> T
    ) async throws(LQXError) -> T? {
        try await load(kind)
        return try state.withLock { (state) throws(LQXError) -> T? in
            try state.kinds[kind, default: Objects()].decoded(project: project, name: name, decode)
        }
    }

    /// See `Store.events(_:)`.
    public func events(_ query: LogQuery) async throws(LQXError) -> [EventRecord] { try await base.events(query) }

    /// See `Store.audit(_:)`.
    public func audit(_ query: LogQuery) async throws(LQXError) -> [AuditRecord] { try await base.audit(query) }
}
