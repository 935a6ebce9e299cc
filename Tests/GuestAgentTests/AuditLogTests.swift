import Foundation
import Testing

@testable import GuestAgent

@Suite("audit log")
struct AuditLogTests {
    @Test("lines are valid JSON with sorted keys, escaped strings and an RFC 3339 UTC time")
    func escaping() throws {
        let path = NSTemporaryDirectory() + "audit-\(UUID().uuidString).log"
        defer { unlink(path) }
        let log = try AuditLog(path: path)
        let hostile = "a\"b\\c\nd\re\tf\u{01}g\u{7F}h é 🙂"
        log.record("upload", ["path": hostile, "size": 42, "argv": ["x", "\"y\""], "ok": true, "big": UInt64.max])
        log.record("exec", ["argv": [String]()])
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 2)
        let first = try #require(JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        #expect(first["path"] as? String == hostile)
        #expect(first["size"] as? Int == 42)
        #expect(first["argv"] as? [String] == ["x", "\"y\""])
        #expect(first["ok"] as? Bool == true)
        #expect(first["op"] as? String == "upload")
        #expect(String(lines[0]).hasPrefix("{\"argv\":"))
        let time = try #require(first["time"] as? String)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let parsed = try #require(formatter.date(from: time))
        #expect(abs(parsed.timeIntervalSinceNow) < 60)
        #expect(text.hasSuffix("\n"))
    }

    @Test("an audit log that cannot be opened is a clear error")
    func unopenable() {
        #expect(throws: (any Error).self) { try AuditLog(path: "/nonexistent-dir/audit.log") }
    }
}
