import ControlPlane
import Foundation
import LQXModel
import LQXTestSupport
import Logging
import Testing

/// Which store a contract test runs against.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
}

/// A fresh, running store of that kind for `body`; nil when PostgreSQL is not installed here
/// (CI requires it).
func withStore<T>(_ kind: StoreKind, _ body: (any Store, StoreLocation) async throws -> T) async throws -> T? {
    let location: StoreLocation
    let directory = try TempDir()
    defer { directory.remove() }
    switch kind {
    case .sqlite:
        location = .sqlite(path: directory.file("store.db"))
    case .postgres:
        guard let server = try PostgresServer.shared() else { return nil }
        location = try StoreLocation(parsing: server.createDatabase("t\(UInt32.random(in: 0...UInt32.max))"))
    }
    return try await withStore(at: location) { try await body($0, location) }
}

/// A store the contract suite runs against: each store alone, and each behind `CachedStore` (the
/// control plane's view of it), which must keep the same contract.
enum StoreVariant: String, CaseIterable, CustomTestStringConvertible {
    case sqlite, postgres
    case cachedSQLite = "cached-sqlite"
    case cachedPostgres = "cached-postgres"
    var testDescription: String { rawValue }
}

/// A fresh, running store of that variant for `body`; nil when PostgreSQL is not installed here.
func withContractStore<T>(_ variant: StoreVariant, _ body: (any Store, StoreLocation) async throws -> T) async throws
    -> T?
{
    let kind: StoreKind = variant == .sqlite || variant == .cachedSQLite ? .sqlite : .postgres
    let cached = variant == .cachedSQLite || variant == .cachedPostgres
    return try await withStore(kind) { store, location in
        try await body(cached ? CachedStore(store, feed: ChangeFeed()) : store, location)
    }
}

/// The store at `location`, running while `body` runs.
func withStore<T>(at location: StoreLocation, _ body: (any Store) async throws -> T) async throws -> T {
    var logger = Logger(label: "store-test")
    logger.logLevel = .warning
    let store = try location.open(logger: logger)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await store.run() }
        defer { group.cancelAll() }
        return try await body(store)
    }
}

func vmObject(_ name: String, project: String = "default", node: String = "", cpus: Int = 1, memory: Int = 512)
    -> StoredObject
{
    StoredObject(
        kind: .vm, id: "id-\(project)-\(name)", project: project, name: name, node: node, cpus: cpus,
        memoryMiB: memory, body: #"{"name":"\#(name)"}"#)
}

func nodeObject(_ name: String) -> StoredObject {
    StoredObject(kind: .node, id: "node-\(name)", name: name, body: "{}")
}

func expectError(
    _ code: LQXError.Code, _ body: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation
)
    async
{
    do {
        try await body()
        Issue.record("expected \(code), got success", sourceLocation: sourceLocation)
    } catch let error as LQXError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

/// One contract, both stores.
@Suite("store contract (SQLite and PostgreSQL, each also behind the control plane's cache)")
struct StoreContractTests {
    @Test(
        "create, read by id and by name, list in order; the version is the commit's revision",
        arguments: StoreVariant.allCases)
    func createAndRead(kind: StoreVariant) async throws {
        try await withContractStore(kind) { store, _ in
            let first = try await store.commit([.create(vmObject("web"))])
            let second = try await store.commit([.create(vmObject("api")), .create(vmObject("db", project: "other"))])
            #expect(second == first + 1)
            let web = try #require(try await store.object(.vm, id: "id-default-web"))
            #expect(web.version == first && web.name == "web" && web.body == #"{"name":"web"}"#)
            #expect(try await store.object(.vm, project: "default", name: "api")?.version == second)
            #expect(try await store.object(.vm, project: "default", name: "db") == nil)
            #expect(try await store.objects(.vm, project: nil).map(\.name) == ["api", "web", "db"])
            #expect(try await store.objects(.vm, project: "other").map(\.name) == ["db"])
            #expect(try await store.objects(.node, project: nil).isEmpty)
        }
    }

    @Test("a name is unique per kind and project; an id per kind", arguments: StoreVariant.allCases)
    func uniqueness(kind: StoreVariant) async throws {
        try await withContractStore(kind) { store, _ in
            try await store.commit([.create(vmObject("web"))])
            var again = vmObject("web")
            again.id = "another-id"
            await expectError(.alreadyExists) { try await store.commit([.create(again)]) }
            await expectError(.alreadyExists) {
                var sameID = vmObject("other")
                sameID.id = "id-default-web"
                try await store.commit([.create(sameID)])
            }
            try await store.commit([.create(vmObject("web", project: "p2"))])
            try await store.commit([.create(StoredObject(kind: .node, id: "n", name: "web", body: "{}"))])
            // Renaming onto a taken name is refused too.
            try await store.commit([.create(vmObject("api"))])
            var renamed = try #require(try await store.object(.vm, project: "default", name: "api"))
            let version = renamed.version
            renamed.name = "web"
            await expectError(.alreadyExists) { try await store.commit([.update(renamed, expected: version)]) }
        }
    }

    @Test("a write based on a stale version is refused with the current one", arguments: StoreVariant.allCases)
    func optimisticConcurrency(kind: StoreVariant) async throws {
        try await withContractStore(kind) { store, _ in
            let v1 = try await store.commit([.create(vmObject("web"))])
            var object = vmObject("web")
            object.body = "{\"v\":2}"
            let v2 = try await store.commit([.update(object, expected: v1)])
            object.body = "{\"v\":3}"
            do {
                try await store.commit([.update(object, expected: v1)])
                Issue.record("a stale write was accepted")
            } catch let error as LQXError {
                #expect(error.code == .conflict)
                #expect((error.cause as? StaleVersion)?.current == v2)
            }
            #expect(try await store.object(.vm, id: object.id)?.body == "{\"v\":2}")
            await expectError(.conflict) { try await store.commit([.delete(.vm, id: object.id, expected: v1)]) }
            try await store.commit([.delete(.vm, id: object.id, expected: v2)])
            #expect(try await store.object(.vm, id: object.id) == nil)
            do {
                try await store.commit([.update(object, expected: v2)])
                Issue.record("an update of a deleted object was accepted")
            } catch let error as LQXError {
                #expect(error.code == .conflict && (error.cause as? StaleVersion)?.current == 0)
            }
        }
    }

    @Test("a transaction applies all of its writes and log entries or none", arguments: StoreVariant.allCases)
    func atomicity(kind: StoreVariant) async throws {
        try await withContractStore(kind) { store, _ in
            let v1 = try await store.commit([.create(vmObject("web"))])
            let event = EventRecord(
                timeUnixMs: 1, kind: .vm, objectID: "id-default-api", objectName: "api", project: "default",
                reason: "Created", message: "created")
            let record = AuditRecord(
                timeUnixMs: 1, user: "alice", project: "default", vm: "api", action: "create", detail: "", result: "ok")
            await expectError(.conflict) {
                try await store.commit(
                    [.create(vmObject("api")), .require(.vm, id: "id-default-web", expected: v1 - 1)],
                    events: [event], audit: [record])
            }
            #expect(try await store.object(.vm, project: "default", name: "api") == nil)
            #expect(try await store.events(LogQuery()).isEmpty)
            #expect(try await store.audit(LogQuery()).isEmpty)
            try await store.commit(
                [.create(vmObject("api")), .require(.vm, id: "id-default-web", expected: v1)], events: [event],
                audit: [record])
            #expect(try await store.events(LogQuery()).map(\.reason) == ["Created"])
            #expect(try await store.audit(LogQuery()).map(\.user) == ["alice"])
        }
    }

    @Test("placements are checked against the node's room in the same transaction", arguments: StoreVariant.allCases)
    func capacity(kind: StoreVariant) async throws {
        try await withContractStore(kind) { store, _ in
            try await store.commit([.create(nodeObject("n1"))])
            try await store.commit([
                .create(vmObject("a", node: "node-n1", cpus: 2, memory: 1024)),
                .capacity(node: "node-n1", cpus: 4, memoryMiB: 2048),
            ])
            await expectError(.resourceExhausted) {
                try await store.commit([
                    .create(vmObject("b", node: "node-n1", cpus: 1, memory: 1025)),
                    .capacity(node: "node-n1", cpus: 4, memoryMiB: 2048),
                ])
            }
            #expect(try await store.object(.vm, project: "default", name: "b") == nil)
            try await store.commit([
                .create(vmObject("b", node: "node-n1", cpus: 2, memory: 1024)),
                .capacity(node: "node-n1", cpus: 4, memoryMiB: 2048),
            ])
            await expectError(.notFound) {
                try await store.commit([
                    .create(vmObject("c", node: "node-n9")), .capacity(node: "node-n9", cpus: 4, memoryMiB: 2048),
                ])
            }
        }
    }

    @Test("a project's quota is checked in the same transaction as the create", arguments: StoreVariant.allCases)
    func quota(kind: StoreVariant) async throws {
        try await withContractStore(kind) { store, _ in
            try await store.commit([.create(StoredObject(kind: .project, id: "p1", name: "team", body: "{}"))])
            let limit = StoreWrite.quota(projectID: "p1", project: "team", vcpus: 3, memoryMiB: 4096, vms: 2)
            try await store.commit([.create(vmObject("a", project: "team", cpus: 2)), limit])
            await expectError(.resourceExhausted) {
                try await store.commit([.create(vmObject("b", project: "team", cpus: 2)), limit])
            }
            try await store.commit([.create(vmObject("b", project: "team", cpus: 1)), limit])
            await expectError(.resourceExhausted) {
                try await store.commit([.create(vmObject("c", project: "team", cpus: 0)), limit])
            }
            // Other projects' VMs do not count.
            try await store.commit([.create(vmObject("c", project: "other", cpus: 8)), limit])
            await expectError(.notFound) {
                try await store.commit([
                    .create(vmObject("d", project: "x")),
                    .quota(projectID: "nope", project: "x", vcpus: 1, memoryMiB: 1, vms: 1),
                ])
            }
        }
    }

    @Test("concurrent writers: of many updates from one version exactly one wins", arguments: StoreVariant.allCases)
    func concurrentUpdates(kind: StoreVariant) async throws {
        try await withContractStore(kind) { store, _ in
            let v1 = try await store.commit([.create(vmObject("web"))])
            let wins = try await withThrowingTaskGroup(of: Bool.self) { group in
                for writer in 0..<16 {
                    group.addTask {
                        var object = vmObject("web")
                        object.body = "{\"writer\":\(writer)}"
                        do {
                            try await store.commit([.update(object, expected: v1)])
                            return true
                        } catch let error as LQXError {
                            guard error.code == .conflict else { throw error }
                            return false
                        }
                    }
                }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            #expect(wins == 1)
            let body = try #require(try await store.object(.vm, id: "id-default-web")?.body)
            #expect(body.hasPrefix("{\"writer\":"))
        }
    }

    @Test("concurrent placements never overcommit a node", arguments: StoreVariant.allCases)
    func concurrentPlacements(kind: StoreVariant) async throws {
        try await withContractStore(kind) { store, _ in
            try await store.commit([.create(nodeObject("n1"))])
            let placed = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<20 {
                    group.addTask {
                        do {
                            try await store.commit([
                                .create(vmObject("vm\(index)", node: "node-n1", cpus: 1, memory: 1000)),
                                .capacity(node: "node-n1", cpus: 64, memoryMiB: 5000),
                            ])
                            return true
                        } catch let error as LQXError {
                            guard error.code == .resourceExhausted else { throw error }
                            return false
                        }
                    }
                }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            #expect(placed == 5)
            #expect(try await store.objects(.vm, project: nil).count == 5)
        }
    }

    @Test("event and audit logs: ordered, filtered by object and project, paged", arguments: StoreVariant.allCases)
    func logs(kind: StoreVariant) async throws {
        try await withContractStore(kind) { store, _ in
            for index in 0..<5 {
                let vm = index % 2 == 0 ? "web" : "api"
                try await store.commit(
                    [],
                    events: [
                        EventRecord(
                            timeUnixMs: Int64(index), kind: .vm, objectID: "id-\(vm)", objectName: vm,
                            project: index == 4 ? "p2" : "default", reason: "R\(index)", message: "m\(index)")
                    ],
                    audit: [
                        AuditRecord(
                            timeUnixMs: Int64(index), user: "u", project: "default", vm: vm, action: "exec",
                            detail: "argv \(index)", result: "0")
                    ])
            }
            let all = try await store.events(LogQuery())
            #expect(all.map(\.reason) == ["R0", "R1", "R2", "R3", "R4"])
            #expect(all.map(\.sequence) == all.map(\.sequence).sorted() && Set(all.map(\.sequence)).count == 5)
            #expect(try await store.events(LogQuery(object: "id-web")).map(\.reason) == ["R0", "R2", "R4"])
            #expect(
                try await store.events(LogQuery(object: "id-web", project: "default")).map(\.reason) == ["R0", "R2"])
            #expect(try await store.events(LogQuery(after: all[1].sequence, limit: 2)).map(\.reason) == ["R2", "R3"])
            #expect(try await store.audit(LogQuery(object: "api")).map(\.detail) == ["argv 1", "argv 3"])
        }
    }

    @Test(
        "what was committed is there after the store is opened again (migrations run once)",
        arguments: StoreVariant.allCases)
    func reopen(kind: StoreVariant) async throws {
        try await withContractStore(kind) { store, location in
            let version = try await store.commit([.create(vmObject("web"))])
            let (found, next) = try await withStore(at: location) { again in
                let found = try await again.object(.vm, id: "id-default-web")
                return (found, try await again.commit([.create(vmObject("api"))]))
            }
            #expect(found?.version == version)
            #expect(next == version + 1)
        }
    }
}

/// What the cache adds to the contract: writes it did not make are seen.
@Suite("control-plane store cache")
struct CachedStoreTests {
    @Test(
        "creates, updates and deletes by another writer of the store are seen on the next read",
        arguments: StoreKind.allCases)
    func otherWriters(kind: StoreKind) async throws {
        try await withStore(kind) { base, _ in
            let cached = CachedStore(base, feed: ChangeFeed())
            let web = try await cached.commit([.create(vmObject("web"))])
            #expect(try await cached.objects(.vm, project: nil).map(\.name) == ["web"])
            var changed = vmObject("web")
            changed.body = #"{"name":"web","changed":true}"#
            let update = try await base.commit([.create(vmObject("api")), .update(changed, expected: web)])
            #expect(try await cached.objects(.vm, project: nil).map(\.name) == ["api", "web"])
            let bodies = try await cached.values(.vm, project: nil) { $0.body }
            #expect(bodies == [#"{"name":"api"}"#, changed.body])
            try await base.commit([.delete(.vm, id: "id-default-api", expected: update)])
            #expect(try await cached.object(.vm, project: "default", name: "api") == nil)
            #expect(try await cached.value(.vm, id: "id-default-web") { $0.version } == update)
            #expect(try await cached.revision() == update + 1)
        }
    }
}

/// `--db` values.
@Suite("store locations")
struct StoreLocationTests {
    @Test("sqlite and postgres forms parse; bad ones are refused with the form expected")
    func parsing() throws {
        #expect(try StoreLocation(parsing: "sqlite:/var/lib/x.db") == .sqlite(path: "/var/lib/x.db"))
        guard case .postgres(let tcp) = try StoreLocation(parsing: "postgres://lqx:s%40cret@db.example:6432/cluster")
        else { throw PostgresServerError("not postgres") }
        #expect(tcp.host == "db.example" && tcp.port == 6432 && tcp.user == "lqx" && tcp.password == "s@cret")
        #expect(tcp.database == "cluster" && !tcp.requireTLS)
        guard
            case .postgres(let local) = try StoreLocation(parsing: "postgresql://postgres@/lqx?host=/run/pg&port=5433")
        else { throw PostgresServerError("not postgres") }
        #expect(local.host == nil && local.socketDirectory == "/run/pg" && local.port == 5433)
        guard case .postgres(let v6) = try StoreLocation(parsing: "postgres://u@[::1]/d?sslmode=require")
        else { throw PostgresServerError("not postgres") }
        #expect(v6.host == "::1" && v6.port == 5432 && v6.requireTLS)
        #expect(try StoreLocation(parsing: "postgres://lqx:pw@h/d").description == "postgres://lqx@h:5432/d")
        for bad in ["mysql://x", "sqlite:", "postgres://h/d", "postgres://u@/d", "postgres://u@h/d?sslmode=maybe"] {
            #expect(throws: LQXError.self, "\(bad)") { try StoreLocation(parsing: bad) }
        }
        do {
            _ = try StoreLocation(parsing: "postgres://u:hunter2@h")
        } catch {
            #expect(!error.message.contains("hunter2"), "the password leaked: \(error.message)")
        }
    }
}
