import Foundation
import LQXModel
import NodeCore
import Testing

@Suite("shared storage declared by a node: the marker file")
struct SharedStorageMarkerTests {
    func directory() throws -> String {
        let path = NSTemporaryDirectory() + "lqx-storage-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test("the first node writes an id, the next reads the same one; a trailing / is the same storage")
    func firstWritesNextReads() throws {
        let path = try directory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let first = try SharedStorage.declare(path)
        #expect(SharedStorage.isID(first.id) && first.path == path)
        let written = try String(contentsOfFile: path + "/" + SharedStorage.markerName, encoding: .utf8)
        #expect(written == first.id + "\n")
        #expect(try SharedStorage.declare(path + "/") == first)
        let other = try directory()
        defer { try? FileManager.default.removeItem(atPath: other) }
        #expect(try SharedStorage.declare(other).id != first.id, "another directory, another id")
    }

    @Test("a missing directory, a relative path and a marker without an id are refused, naming them")
    func refused() throws {
        let path = try directory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        for bad in [path + "/absent", "relative/dir", path + "/" + SharedStorage.markerName + "x"] {
            do {
                _ = try SharedStorage.declare(bad)
                Issue.record("declared \(bad)")
            } catch {
                #expect(error.code == .invalidSpec && error.message.contains(bad), "\(error.message)")
            }
        }
        #expect(
            FileManager.default.createFile(
                atPath: path + "/" + SharedStorage.markerName,
                contents: Data((String(repeating: "junk", count: 10) + "\n").utf8)))
        do {
            _ = try SharedStorage.declare(path)
            Issue.record("declared a storage with a junk marker")
        } catch {
            #expect(error.code == .invalidSpec && error.message.contains("holds no storage id"), "\(error.message)")
        }
    }
}
