import Foundation
import Synchronization

/// Appends one JSON object per line for every exec and file operation.
///
/// Lines are written with a single `write(2)` on an `O_APPEND` descriptor, so concurrent
/// operations never interleave within a line.
public final class AuditLog: Sendable {
    private let fd: Mutex<Int32>

    /// Opens (creating with mode 0600) the audit log at `path`.
    public init(path: String) throws {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        self.fd = Mutex(fd)
    }

    deinit {
        fd.withLock { _ = close($0) }
    }

    /// Records an operation. `fields` are merged after `time` and `op`.
    public func record(_ op: String, _ fields: [String: any Sendable]) {
        var object: [String: Any] = ["time": ISO8601DateFormatter().string(from: Date()), "op": op]
        for (key, value) in fields { object[key] = value }
        guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        data.append(0x0A)
        fd.withLock { fd in
            _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        }
    }
}
