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
        var object = fields
        object["op"] = op
        object["time"] = Self.timestamp()
        // The line is built as UTF-8 bytes: this runs once per exec and file operation, and in a
        // VM under emulation string building per character was a visible part of an exec.
        var line: [UInt8] = []
        line.reserveCapacity(256)
        line.append(UInt8(ascii: "{"))
        for (index, key) in object.keys.sorted().enumerated() {
            if index > 0 { line.append(UInt8(ascii: ",")) }
            JSON.appendString(key, to: &line)
            line.append(UInt8(ascii: ":"))
            JSON.appendValue(object[key]!, to: &line)
        }
        line += "}\n".utf8
        fd.withLock { fd in
            _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        }
    }

    /// The current UTC time as RFC 3339 with milliseconds, e.g. `2026-11-22T22:13:36.123Z`.
    static func timestamp() -> String {
        var out: [UInt8] = []
        out.reserveCapacity(24)
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func digits(_ value: Int, _ width: Int) {
            var divisor = 1
            for _ in 1..<width { divisor *= 10 }
            var rest = value
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8((rest / divisor) % 10))
                rest %= divisor
                divisor /= 10
            }
        }
        digits(Int(parts.tm_year) + 1900, 4)
        out.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mon) + 1, 2)
        out.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mday), 2)
        out.append(UInt8(ascii: "T"))
        digits(Int(parts.tm_hour), 2)
        out.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_min), 2)
        out.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_sec), 2)
        out.append(UInt8(ascii: "."))
        digits(Int(now.tv_nsec / 1_000_000), 3)
        out.append(UInt8(ascii: "Z"))
        return String(decoding: out, as: UTF8.self)
    }
}

/// Minimal JSON writing for the audit log (RFC 8259 string escaping), as UTF-8 bytes.
enum JSON {
    static func appendValue(_ value: any Sendable, to out: inout [UInt8]) {
        switch value {
        case let value as String: appendString(value, to: &out)
        case let value as Int: out += String(value).utf8
        case let value as Int64: out += String(value).utf8
        case let value as UInt64: out += String(value).utf8
        case let value as Int32: out += String(value).utf8
        case let value as Bool: out += (value ? "true" : "false").utf8
        case let value as [String]:
            out.append(UInt8(ascii: "["))
            for (index, element) in value.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                appendString(element, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        default: appendString(String(describing: value), to: &out)
        }
    }

    /// Appends `value` as a JSON string. A Swift string is valid UTF-8, so bytes of multi-byte
    /// sequences are copied as they are; quote, backslash and control characters are escaped.
    static func appendString(_ value: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += #"\""#.utf8
            case UInt8(ascii: "\\"): out += #"\\"#.utf8
            case UInt8(ascii: "\n"): out += #"\n"#.utf8
            case UInt8(ascii: "\r"): out += #"\r"#.utf8
            case UInt8(ascii: "\t"): out += #"\t"#.utf8
            case 0..<0x20, 0x7F:
                out += #"\u00"#.utf8
                for nibble in [byte >> 4, byte & 0xF] {
                    out.append(nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10)
                }
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
