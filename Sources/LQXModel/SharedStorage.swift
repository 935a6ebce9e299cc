/// A directory on storage that several nodes mount at the same path (NFS, a cluster file system,
/// one SAN volume), declared with `lqx-node --shared-storage DIR`. Its id is read from a marker
/// file in the directory (`SharedStorage.markerName`), written by the first node that declares
/// it and read by the others: nodes reporting the same id at the same path see the same files.
/// That is how the control plane knows a writable disk can follow a VM's live migration — not
/// from the operator's word alone, and not from a file-system type.
public struct SharedStorage: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The marker file's name in a shared storage directory.
    public static let markerName = ".limiquantix-storage"
    /// How many shared storages one node may declare.
    public static let maximumPerNode = 16

    /// 32 lowercase hexadecimal digits (128 random bits).
    public let id: String
    /// Where the node mounts it: absolute, normalized, not `/`.
    public let path: String

    /// Checks both (they come from a node's heartbeat or a marker file).
    public init(id: String, path: String) throws(LQXError) {
        guard Self.isID(id) else {
            throw LQXError(.invalidSpec, "shared storage id \(id.prefix(64).debugDescription): 32 hexadecimal digits")
        }
        guard path != "/", Self.isNormalized(path) else {
            throw LQXError(
                .invalidSpec,
                "shared storage path \(path.prefix(256).debugDescription): an absolute directory other than /, without '.', '..', '//' or a trailing '/'"
            )
        }
        self.id = id
        self.path = path
    }

    /// Whether `file` (an absolute path without `.` or `..` components) lies in this storage.
    public func holds(_ file: String) -> Bool {
        Self.isNormalized(file) && file.hasPrefix(path + "/")
    }

    /// The path and the start of the id, for messages.
    public var description: String { "\(path) (storage \(id.prefix(8)))" }

    /// Whether `id` is 32 lowercase hexadecimal digits.
    public static func isID(_ id: String) -> Bool {
        id.utf8.count == 32 && id.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// Absolute, shorter than 4096 bytes, no NUL, no empty, `.` or `..` component, no trailing `/`.
    static func isNormalized(_ path: String) -> Bool {
        guard path.hasPrefix("/"), path.utf8.count < 4096, !path.utf8.contains(0) else { return false }
        if path == "/" { return true }
        return path.dropFirst().split(separator: "/", omittingEmptySubsequences: false).allSatisfy {
            !$0.isEmpty && $0 != "." && $0 != ".."
        }
    }
}

extension VMSpec {
    /// The shared storages (of `storages`, those the VM's node declares) that its writable disks
    /// lie on — what a live-migration target must also have — or nil when some disk cannot
    /// follow a live migration: one the node created (`new`, `clone`), or a writable path disk
    /// on no declared shared storage. Read-only path disks need only the file on the target
    /// (placement checks it).
    public func liveMigrationStorages(on storages: [SharedStorage]) -> Set<SharedStorage>? {
        var needed = Set<SharedStorage>()
        for disk in disks {
            guard case .path(let file) = disk.source else { return nil }
            if disk.readOnly { continue }
            guard let storage = storages.first(where: { $0.holds(file) }) else { return nil }
            needed.insert(storage)
        }
        return needed
    }
}
