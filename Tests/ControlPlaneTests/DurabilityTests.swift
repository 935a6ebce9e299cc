import ControlPlane
import Foundation
import LQXModel
import LQXTestSupport
import Testing

/// What a store acknowledged survives `kill -9` of the process that wrote it.
@Suite("store durability: kill -9 of the writer")
struct DurabilityTests {
    @Test(
        "every acknowledged commit is in the store after the writer is killed with SIGKILL",
        arguments: StoreKind.allCases)
    func killNine(kind: StoreKind) async throws {
        let directory = try TempDir()
        defer { directory.remove() }
        let url: String
        switch kind {
        case .sqlite: url = "sqlite:" + directory.file("store.db")
        case .postgres:
            guard let server = try PostgresServer.shared() else { return }
            url = try server.createDatabase("durable\(UInt32.random(in: 0...UInt32.max))")
        }
        let output = directory.file("acks")
        let fd = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        let writer = try Child.spawn(Command.binary("lqx-store-writer"), ["--db", url], stdout: fd)
        close(fd)
        // Let it acknowledge a good number of writes, then kill it mid-stream.
        var acknowledged: [(id: String, version: Int64)] = []
        for _ in 0..<300 {
            try await Task.sleep(for: .milliseconds(50))
            acknowledged = Self.acks(output)
            if acknowledged.count >= 40 || !writer.isRunning { break }
        }
        writer.signal(SIGKILL)
        _ = await writer.exit(timeout: .seconds(10))
        acknowledged = Self.acks(output)
        #expect(acknowledged.count >= 40, "the writer acknowledged only \(acknowledged.count) writes")
        let location = try StoreLocation(parsing: url)
        let stored = try await withStore(at: location) { store in try await store.objects(.vm, project: "durability") }
        let versions = Dictionary(stored.map { ($0.id, $0.version) }, uniquingKeysWith: { a, _ in a })
        for ack in acknowledged {
            #expect(versions[ack.id] == ack.version, "acknowledged \(ack.id) at \(ack.version) is missing")
        }
        // At most the one write in flight when it was killed may be there without an acknowledgement.
        #expect(stored.count <= acknowledged.count + 1)
    }

    /// The complete lines of the writer's output.
    static func acks(_ path: String) -> [(id: String, version: Int64)] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n", omittingEmptySubsequences: true).dropLast(text.hasSuffix("\n") ? 0 : 1)
            .compactMap { line in
                let parts = line.split(separator: " ")
                guard parts.count == 2, let version = Int64(parts[1]) else { return nil }
                return (String(parts[0]), version)
            }
    }
}
