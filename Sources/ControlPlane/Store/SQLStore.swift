import LQXModel

/// A store that runs `SQLPlan` statements: the reads of the `Store` contract written once, on a
/// store's one primitive that returns rows as values of the column types asked for.
protocol SQLStore: Store {
    /// Rows of a read, each cell decoded as `columns` says.
    func rows(_ sql: String, _ arguments: [SQLValue], columns: [SQLColumn]) async throws(LQXError) -> [[SQLValue]]
}

/// How to decode one column.
enum SQLColumn: Sendable {
    case text, integer

    static let object: [SQLColumn] = [.text, .text, .text, .text, .integer, .text, .integer, .integer, .text]
    static let event: [SQLColumn] = [.integer, .integer] + Array(repeating: .text, count: 7)
    static let audit: [SQLColumn] = [.integer, .integer] + Array(repeating: .text, count: 6)
}

extension [SQLValue] {
    fileprivate func text(_ index: Int) -> String {
        if case .text(let value) = self[index] { return value }
        return ""
    }

    fileprivate func integer(_ index: Int) -> Int64 {
        if case .integer(let value) = self[index] { return value }
        return 0
    }
}

extension SQLStore {
    /// See `Store.revision()`.
    public func revision() async throws(LQXError) -> Int64 {
        guard let row = try await rows(SQLPlan.Reads.revision, [], columns: [.integer]).first,
            case .integer(let value) = row.first
        else { throw LQXError(.internal, "the store has no revision row") }
        return value
    }

    /// See `Store.object(_:id:)`.
    public func object(_ kind: ObjectKind, id: String) async throws(LQXError) -> StoredObject? {
        try await objects(SQLPlan.Reads.byID, [.text(kind.rawValue), .text(id)]).first
    }

    /// See `Store.object(_:project:name:)`.
    public func object(_ kind: ObjectKind, project: String, name: String) async throws(LQXError) -> StoredObject? {
        try await objects(SQLPlan.Reads.byName, [.text(kind.rawValue), .text(project), .text(name)]).first
    }

    /// See `Store.objects(_:project:)`.
    public func objects(_ kind: ObjectKind, project: String?) async throws(LQXError) -> [StoredObject] {
        if let project {
            return try await objects(SQLPlan.Reads.inProject, [.text(kind.rawValue), .text(project)])
        }
        return try await objects(SQLPlan.Reads.all, [.text(kind.rawValue)])
    }

    /// See `Store.events(_:)`.
    public func events(_ query: LogQuery) async throws(LQXError) -> [EventRecord] {
        let (sql, arguments) = SQLPlan.Reads.events(query)
        return try await rows(sql, arguments, columns: SQLColumn.event).map { c in
            EventRecord(
                sequence: c.integer(0), timeUnixMs: c.integer(1), kind: ObjectKind(rawValue: c.text(2)),
                objectID: c.text(3), objectName: c.text(4), project: c.text(5), type: c.text(6), reason: c.text(7),
                message: c.text(8))
        }
    }

    /// See `Store.audit(_:)`.
    public func audit(_ query: LogQuery) async throws(LQXError) -> [AuditRecord] {
        let (sql, arguments) = SQLPlan.Reads.audit(query)
        return try await rows(sql, arguments, columns: SQLColumn.audit).map { c in
            AuditRecord(
                sequence: c.integer(0), timeUnixMs: c.integer(1), user: c.text(2), project: c.text(3), vm: c.text(4),
                action: c.text(5), detail: c.text(6), result: c.text(7))
        }
    }

    private func objects(_ sql: String, _ arguments: [SQLValue]) async throws(LQXError) -> [StoredObject] {
        try await rows(sql, arguments, columns: SQLColumn.object).map { c in
            StoredObject(
                kind: ObjectKind(rawValue: c.text(0)), id: c.text(1), project: c.text(2), name: c.text(3),
                version: c.integer(4), node: c.text(5), cpus: Int(c.integer(6)), memoryMiB: Int(c.integer(7)),
                body: c.text(8))
        }
    }

    /// The error for a refused plan: reads the object's current version for a stale write.
    func refusal(_ failure: SQLPlan.Failure) async throws(LQXError) -> LQXError {
        var current: Int64?
        if let (kind, id) = SQLPlan.staleObject(failure) { current = try await object(kind, id: id)?.version }
        return SQLPlan.error(for: failure, current: current)
    }
}
