import AgentProtocol
import Glibc
import Synchronization

/// Appends one JSON object per line for every exec and file operation.
///
/// Lines are written with a single `write(2)` on an `O_APPEND` descriptor, so concurrent
/// operations never interleave within a line. Keys are sorted; values are strings, integers,
/// booleans or arrays of strings (anything else is written as its description, as a string).
public final class AuditLog: Sendable {
    private let fd: Mutex<Int32>

    /// Opens (creating with mode 0600) the audit log at `path`.
    public init(path: String) throws {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw AgentError(.io, "cannot open audit log \(path): \(String(cString: strerror(errno)))")
        }
        self.fd = Mutex(fd)
    }

    deinit {
        fd.withLock { _ = close($0) }
    }

    /// Records an operation. `fields` are merged after `time` and `op`.
    public func record(_ op: String, _ fields: [String: any Sendable]) {
        var object: [String: any Sendable] = ["time": Self.timestamp(), "op": op]
        for (key, value) in fields { object[key] = value }
        var line = "{"
        for (index, key) in object.keys.sorted().enumerated() {
            if index > 0 { line += "," }
            JSON.appendString(key, to: &line)
            line += ":"
            JSON.appendValue(object[key]!, to: &line)
        }
        line += "}\n"
        var bytes = Array(line.utf8)
        fd.withLock { fd in
            _ = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress, $0.count) }
        }
    }

    /// The current UTC time as RFC 3339 with milliseconds, e.g. `2026-11-22T22:13:36.123Z`.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))."
            + "\(pad(Int32(now.tv_nsec / 1_000_000), 3))Z"
    }
}

/// Minimal JSON writing for the audit log (RFC 8259 string escaping).
enum JSON {
    static func appendValue(_ value: any Sendable, to out: inout String) {
        switch value {
        case let value as String: appendString(value, to: &out)
        case let value as Int: out += String(value)
        case let value as Int64: out += String(value)
        case let value as UInt64: out += String(value)
        case let value as Int32: out += String(value)
        case let value as Bool: out += value ? "true" : "false"
        case let value as [String]:
            out += "["
            for (index, element) in value.enumerated() {
                if index > 0 { out += "," }
                appendString(element, to: &out)
            }
            out += "]"
        default: appendString(String(describing: value), to: &out)
        }
    }

    static func appendString(_ value: String, to out: inout String) {
        out += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
