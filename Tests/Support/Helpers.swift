import Foundation
import Synchronization

/// A temporary directory removed at the end of a test.
public struct TempDir: Sendable {
    /// The directory.
    public let path: String

    /// Creates a fresh directory under /tmp.
    public init() throws {
        var template = Array("/tmp/lqx-test-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw POSIXError(.EIO) }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A path inside the directory.
    public func file(_ name: String) -> String { path + "/" + name }

    /// Removes the directory and everything in it.
    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// Resident set size of this process in bytes (from /proc/self/statm).
public func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Random bytes from a seeded generator (fast, reproducible).
public func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var i = 0
        while i + 8 <= count {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            raw.storeBytes(of: z ^ (z >> 31), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < count {
            raw[i] = UInt8(truncatingIfNeeded: i &* 31)
            i += 1
        }
    }
    return bytes
}

/// The SHA-256 of a file, in hex (by sha256sum, independent of the code under test).
public func sha256Hex(ofFile path: String) throws -> String {
    String(try Command.run("/usr/bin/sha256sum", [path]).stdout.prefix(64))
}

/// Whether a process exists and is not a zombie.
public func isAlive(_ pid: pid_t) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return false }
    let state = stat[stat.index(close, offsetBy: 2)...].prefix(1)
    return state != "Z" && state != "X"
}
/// Runs blocking test code on its own thread so it never occupies the cooperative pool (which
/// has only as many threads as cores, and the agent under test needs them).
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            continuation.resume(with: Result { try body() })
        }
    }
}

/// Collects failed checks made on a plain thread; the test asserts on them afterwards (swift-testing
/// expectations must be made from the test's own task).
public final class Checks: Sendable {
    /// An empty record.
    public init() {}

    private let failed = Mutex<[String]>([])

    /// Records a failure unless `condition` holds.
    public func check(_ condition: Bool, _ message: String, line: Int = #line) {
        if !condition { failed.withLock { $0.append("line \(line): \(message)") } }
    }

    /// The failures recorded.
    public var failures: [String] { failed.withLock { $0 } }
}
