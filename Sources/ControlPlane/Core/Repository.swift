import Foundation
import LQXModel

/// Typed access to the store: objects to and from their stored form (JSON bodies; for VMs the
/// node and size columns the store checks capacity with).
public struct Repository: Sendable {
    /// The store underneath.
    public let store: any Store
    /// The same store when it keeps objects decoded in memory.
    private let cache: CachedStore?

    /// A repository over `store`.
    public init(store: any Store) {
        self.store = store
        cache = store as? CachedStore
    }

    private static func encode<T: Encodable>(_ value: T) throws(LQXError) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            return String(decoding: try encoder.encode(value), as: UTF8.self)
        } catch {
            throw LQXError(.internal, "cannot encode \(T.self)", cause: error)
        }
    }

    private static func decode<T: Decodable>(_ type: T.Type, _ object: StoredObject) throws(LQXError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(object.body.utf8))
        } catch {
            throw LQXError(.internal, "the store holds an unreadable \(object.kind) \(object.name)", cause: error)
        }
    }

    // MARK: VMs

    /// A VM's stored form.
    public static func stored(_ vm: VirtualMachine) throws(LQXError) -> StoredObject {
        var body = vm
        body.meta.resourceVersion = 0
        return StoredObject(
            kind: .vm, id: vm.meta.id, project: vm.meta.project, name: vm.meta.name, node: vm.status.nodeID,
            cpus: vm.spec.machine.vcpus, memoryMiB: vm.spec.machine.memoryMiB, body: try encode(body))
    }

    private static func vm(_ object: StoredObject) throws(LQXError) -> VirtualMachine {
        var vm = try decode(VirtualMachine.self, object)
        vm.meta.resourceVersion = object.version
        return vm
    }

    /// The VM of that id, or nil.
    public func vm(id: String) async throws(LQXError) -> VirtualMachine? {
        if let cache { return try await cache.value(.vm, id: id, Self.vm) }
        guard let object = try await store.object(.vm, id: id) else { return nil }
        return try Self.vm(object)
    }

    /// The VM of that name in that project, or nil.
    public func vm(project: String, name: String) async throws(LQXError) -> VirtualMachine? {
        if let cache { return try await cache.value(.vm, project: project, name: name, Self.vm) }
        guard let object = try await store.object(.vm, project: project, name: name) else { return nil }
        return try Self.vm(object)
    }

    /// Every VM (of one project when given).
    public func vms(project: String? = nil) async throws(LQXError) -> [VirtualMachine] {
        if let cache { return try await cache.values(.vm, project: project, Self.vm) }
        var result: [VirtualMachine] = []
        for object in try await store.objects(.vm, project: project) { result.append(try Self.vm(object)) }
        return result
    }

    /// At most `limit` VMs (of one project when given) that pass `filter`, ordered by project
    /// and name, after `after`.
    public func vms(
        project: String?, after: (project: String, name: String)?, limit: Int, where filter: (VirtualMachine) -> Bool
    ) async throws(LQXError) -> [VirtualMachine] {
        if let cache {
            return try await cache.values(.vm, project: project, after: after, limit: limit, where: filter, Self.vm)
        }
        var result: [VirtualMachine] = []
        for vm in try await vms(project: project) where result.count < limit {
            if let after, (vm.meta.project, vm.meta.name) <= after { continue }
            if filter(vm) { result.append(vm) }
        }
        return result
    }

    // MARK: nodes, projects, tokens

    /// A node's stored form.
    public static func stored(_ node: Node) throws(LQXError) -> StoredObject {
        var body = node
        body.meta.resourceVersion = 0
        return StoredObject(kind: .node, id: node.meta.id, name: node.meta.name, body: try encode(body))
    }

    /// Every node, by name.
    public func nodes() async throws(LQXError) -> [Node] {
        try await all(.node, Node.self) { $0.meta.resourceVersion = $1 }
    }

    /// Every node's name by its id, read without decoding a node (the store keeps names in a
    /// column; `vm list` names the node of each VM on a page).
    public func nodeNames() async throws(LQXError) -> [String: String] {
        var names: [String: String] = [:]
        for object in try await store.objects(.node, project: nil) { names[object.id] = object.name }
        return names
    }

    /// The node of that id, or nil.
    public func node(id: String) async throws(LQXError) -> Node? {
        try await one(.node, id: id, Node.self) { $0.meta.resourceVersion = $1 }
    }

    /// The node of that name, or nil.
    public func node(name: String) async throws(LQXError) -> Node? {
        try await one(.node, name: name, Node.self) { $0.meta.resourceVersion = $1 }
    }

    /// A project's stored form.
    public static func stored(_ project: Project) throws(LQXError) -> StoredObject {
        var body = project
        body.meta.resourceVersion = 0
        return StoredObject(kind: .project, id: project.meta.id, name: project.meta.name, body: try encode(body))
    }

    /// Every project, by name.
    public func projects() async throws(LQXError) -> [Project] {
        try await all(.project, Project.self) { $0.meta.resourceVersion = $1 }
    }

    /// The project of that name, or nil.
    public func project(named name: String) async throws(LQXError) -> Project? {
        try await one(.project, name: name, Project.self) { $0.meta.resourceVersion = $1 }
    }

    /// The cluster settings' stored form.
    public static func stored(_ settings: ClusterSettings) throws(LQXError) -> StoredObject {
        StoredObject(kind: .settings, id: "cluster", name: "cluster", body: try encode(settings))
    }

    /// The cluster settings (the defaults, version 0, when never written).
    public func settings() async throws(LQXError) -> ClusterSettings {
        try await one(.settings, id: "cluster", ClusterSettings.self) { $0.resourceVersion = $1 } ?? ClusterSettings()
    }

    /// A token's stored form (only its hash is stored).
    public static func stored(_ token: TokenRecord, kind: ObjectKind = .token) throws(LQXError) -> StoredObject {
        StoredObject(kind: kind, id: token.id, name: token.id, body: try encode(token))
    }

    /// The token of that id and kind, with its version, or nil.
    public func token(id: String, kind: ObjectKind = .token) async throws(LQXError) -> (TokenRecord, Int64)? {
        guard let object = try await store.object(kind, id: id) else { return nil }
        return (try Self.decode(TokenRecord.self, object), object.version)
    }

    /// Every token of a kind.
    public func tokens(kind: ObjectKind = .token) async throws(LQXError) -> [TokenRecord] {
        try await all(kind, TokenRecord.self) { _, _ in }
    }

    private static func versioned<T: Decodable>(
        _ object: StoredObject, _ type: T.Type, version: (inout T, Int64) -> Void
    ) throws(LQXError) -> T {
        var value = try decode(T.self, object)
        version(&value, object.version)
        return value
    }

    private static func versionedIfPresent<T: Decodable>(
        _ object: StoredObject?, _ type: T.Type, version: (inout T, Int64) -> Void
    ) throws(LQXError) -> T? {
        guard let object else { return nil }
        return try versioned(object, T.self, version: version)
    }

    private func all<T: Decodable & Sendable>(
        _ kind: ObjectKind, _ type: T.Type, version: (inout T, Int64) -> Void
    ) async throws(LQXError) -> [T] {
        if let cache {
            return try await cache.values(kind, project: nil) { (object) throws(LQXError) -> T in
                try Self.versioned(object, T.self, version: version)
            }
        }
        var result: [T] = []
        for object in try await store.objects(kind, project: nil) {
            result.append(try Self.versioned(object, T.self, version: version))
        }
        return result
    }

    /// The cluster-wide object of that id, or nil.
    private func one<T: Decodable & Sendable>(
        _ kind: ObjectKind, id: String, _ type: T.Type, version: (inout T, Int64) -> Void
    ) async throws(LQXError) -> T? {
        if let cache {
            return try await cache.value(kind, id: id) { (object) throws(LQXError) -> T in
                try Self.versioned(object, T.self, version: version)
            }
        }
        return try Self.versionedIfPresent(try await store.object(kind, id: id), T.self, version: version)
    }

    /// The cluster-wide object of that name, or nil.
    private func one<T: Decodable & Sendable>(
        _ kind: ObjectKind, name: String, _ type: T.Type, version: (inout T, Int64) -> Void
    ) async throws(LQXError) -> T? {
        if let cache {
            return try await cache.value(kind, project: "", name: name) { (object) throws(LQXError) -> T in
                try Self.versioned(object, T.self, version: version)
            }
        }
        return try Self.versionedIfPresent(
            try await store.object(kind, project: "", name: name), T.self, version: version)
    }
}
