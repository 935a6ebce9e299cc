import AgentProtocol
import AgentTestSupport
import Foundation
import GuestAgent
import LQXTestSupport
import NIOCore
import Synchronization
import Testing

@testable import HostBroker

@Suite("file transfer through agent and broker")
struct FileTransferTests {
    @Test("upload and download keep content, hash and mode")
    func roundTrip() async throws {
        try await Harness.withAgent { session, dir in
            let bytes = pseudoRandomBytes(9 << 20 + 12345, seed: 7)
            let source = dir.file("source.bin")
            _ = FileManager.default.createFile(atPath: source, contents: Data(bytes))
            chmod(source, 0o640)
            let guest = dir.file("guest/sub/uploaded.bin")
            var options = UploadOptions()
            options.createParents = true
            let progress = ProgressRecorder()
            let up = try await session.upload(file: source, to: guest, options: options, progress: progress.record)
            let expected = try sha256Hex(ofFile: source)
            #expect(up.size == UInt64(bytes.count))
            #expect(up.sha256 == expected)
            #expect(try sha256Hex(ofFile: guest) == expected)
            let attributes = try FileManager.default.attributesOfItem(atPath: guest)
            #expect((attributes[.posixPermissions] as? Int) == 0o640)
            #expect(progress.last == UInt64(bytes.count))
            let back = dir.file("back.bin")
            let down = try await session.download(guest, to: back)
            #expect(down.sha256 == expected)
            #expect(try Data(contentsOf: URL(fileURLWithPath: back)) == Data(bytes))
            // No temporary files are left next to either destination.
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.file("guest/sub"))
            #expect(leftovers == ["uploaded.bin"])
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).allSatisfy { !$0.contains(".part") })
        }
    }

    @Test("setuid and setgid survive an upload that also sets the owner (chown clears them)")
    func setuidWithOwner() async throws {
        try await Harness.withAgent { session, dir in
            var options = UploadOptions()
            options.mode = 0o6755
            options.uid = getuid()
            options.gid = getgid()
            let source = dir.file("suid.src"), target = dir.file("suid.bin")
            _ = FileManager.default.createFile(atPath: source, contents: Data("abc".utf8))
            _ = try await session.upload(file: source, to: target, options: options)
            let attributes = try FileManager.default.attributesOfItem(atPath: target)
            #expect((attributes[.posixPermissions] as? Int) == 0o6755)
        }
    }

    @Test("an empty file round-trips")
    func emptyFile() async throws {
        try await Harness.withAgent { session, dir in
            let source = dir.file("empty")
            _ = FileManager.default.createFile(atPath: source, contents: Data())
            let up = try await session.upload(file: source, to: dir.file("empty.up"))
            #expect(up.size == 0)
            #expect(up.sha256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            let down = try await session.download(dir.file("empty.up"), to: dir.file("empty.down"))
            #expect(down.size == 0)
        }
    }

    @Test("a pseudo-file that reports size 0 comes whole; streaming download and upload agree")
    func pseudoFileAndStreams() async throws {
        try await Harness.withAgent { session, dir in
            let local = dir.file("cpuinfo")
            let down = try await session.download("/proc/cpuinfo", to: local)
            let text = try String(contentsOfFile: local, encoding: .utf8)
            #expect(down.size > 0 && text.contains("processor"), "\(down)")
            // The streaming calls the node daemon relays through.
            let payload = pseudoRandomBytes(3 << 20 + 7, seed: 3)
            var blocks: [ByteBuffer] = []
            for start in stride(from: 0, to: payload.count, by: 100_000) {
                blocks.append(ByteBuffer(bytes: payload[start..<min(start + 100_000, payload.count)]))
            }
            let chunks = Mutex<[ByteBuffer]>(blocks)
            let up = try await session.upload(to: dir.file("streamed"), size: UInt64(payload.count)) {
                chunks.withLock { $0.isEmpty ? nil : $0.removeFirst() }
            }
            #expect(up.size == UInt64(payload.count))
            let received = Mutex(ByteBuffer())
            let announced = Mutex<UInt64>(0)
            let result = try await session.download(
                dir.file("streamed"), start: { size, _ in announced.withLock { $0 = size } },
                receive: { block in received.withLock { _ = $0.writeImmutableBuffer(block) } })
            #expect(result.sha256 == up.sha256 && announced.withLock { $0 } == UInt64(payload.count))
            #expect(received.withLock { Array($0.readableBytesView) } == payload)
            // A file that grows while it is read comes as it was when opened.
            let growing = dir.file("growing")
            _ = FileManager.default.createFile(atPath: growing, contents: Data(payload.prefix(1 << 20)))
            let grownBytes = Mutex<UInt64>(0)
            let grown = try await session.download(
                growing,
                start: { _, _ in
                    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: growing))
                    try handle.seekToEnd()
                    try handle.write(contentsOf: Data(payload.prefix(1 << 20)))
                    try handle.close()
                },
                receive: { block in grownBytes.withLock { $0 += UInt64(block.readableBytes) } })
            #expect(grown.size == 1 << 20 && grownBytes.withLock { $0 } == 1 << 20)
            // A source that delivers fewer bytes than announced fails the upload, and the
            // destination is never created.
            await #expect(throws: AgentError.self) {
                _ = try await session.upload(to: dir.file("short"), size: 10) { nil }
            }
            #expect(!FileManager.default.fileExists(atPath: dir.file("short")))
        }
    }

    @Test("a hash mismatch is refused and leaves no file behind")
    func hashMismatch() async throws {
        try await Harness.withAgent { session, dir in
            let target = dir.file("target.bin")
            let stream = try session.open(
                .with {
                    $0.upload = .with {
                        $0.path = target; $0.size = 4
                    }
                })
            try await session.mux.send(stream: stream, data: ByteBuffer(bytes: [1, 2, 3, 4]))
            let wrong = Control.with {
                $0.commit = .with {
                    $0.size = 4; $0.sha256 = Data(repeating: 0, count: 32)
                }
            }
            try await session.mux.send(stream: stream, message: wrong.buffer())
            let error = await #expect(throws: AgentError.self) { _ = try await session.nextReply(stream) }
            #expect(error?.code == .checksumMismatch)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0 != "agent.sock" } == [])
        }
    }

    @Test("an upload cut off mid-way leaves the old file intact and no temp file")
    func abortedUpload() async throws {
        try await Harness.withAgent { session, dir in
            let target = dir.file("keep.txt")
            _ = FileManager.default.createFile(atPath: target, contents: Data("original".utf8))
            let stream = try session.open(
                .with {
                    $0.upload = .with {
                        $0.path = target; $0.size = 1 << 20
                    }
                })
            try await session.mux.send(stream: stream, data: ByteBuffer(repeating: 0x41, count: 300_000))
            session.mux.reset(stream: stream, error: AgentError(.cancelled, "test abort"))
            // The agent cleans up asynchronously; allow for a loaded machine (parallel tests).
            var names: [String] = []
            for _ in 0..<100 {
                names = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
                if names == ["agent.sock", "keep.txt"] { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(try String(contentsOfFile: target, encoding: .utf8) == "original")
            #expect(names == ["agent.sock", "keep.txt"])
        }
    }

    @Test("clear errors for missing paths, directories and relative paths")
    func errors() async throws {
        try await Harness.withAgent { session, dir in
            let missing = await #expect(throws: AgentError.self) {
                _ = try await session.download(dir.file("nope"), to: dir.file("x"))
            }
            #expect(missing?.code == .notFound)
            let directory = await #expect(throws: AgentError.self) {
                _ = try await session.download(dir.path, to: dir.file("x"))
            }
            #expect(directory?.code == .invalidArgument)
            _ = FileManager.default.createFile(atPath: dir.file("src"), contents: Data("abc".utf8))
            let relative = await #expect(throws: AgentError.self) {
                _ = try await session.upload(file: dir.file("src"), to: "relative/path")
            }
            #expect(relative?.code == .invalidArgument)
            let noParent = await #expect(throws: AgentError.self) {
                _ = try await session.upload(file: dir.file("src"), to: dir.file("no/such/dir/file"))
            }
            #expect(noParent?.code == .notFound)
            var keep = UploadOptions()
            keep.noOverwrite = true
            let exists = await #expect(throws: AgentError.self) {
                _ = try await session.upload(file: dir.file("src"), to: dir.file("src"), options: keep)
            }
            #expect(exists?.code == .alreadyExists)
        }
    }

    @Test("stat and list describe guest files")
    func statAndList() async throws {
        try await Harness.withAgent { session, dir in
            _ = FileManager.default.createFile(atPath: dir.file("a.txt"), contents: Data("hello".utf8))
            try FileManager.default.createDirectory(atPath: dir.file("d"), withIntermediateDirectories: false)
            symlink("a.txt", dir.file("link"))
            let stat = try await session.stat(dir.file("a.txt"))
            #expect(stat.type == .regular)
            #expect(stat.size == 5)
            let link = try await session.stat(dir.file("link"), followSymlinks: false)
            #expect(link.type == .symlink)
            #expect(link.symlinkTarget == "a.txt")
            let entries = try await session.list(dir.path)
            #expect(entries.map(\.name) == ["a.txt", "agent.sock", "d", "link"])
            #expect(entries.map(\.type) == [.regular, .socket, .directory, .symlink])
            for i in 0..<1100 {
                _ = FileManager.default.createFile(atPath: dir.file("d/f\(i)"), contents: nil)
            }
            #expect(try await session.list(dir.file("d")).count == 1100)
        }
    }

    @Test("a 1 GiB upload and download stream without being held in memory")
    func oneGiB() async throws {
        try await Harness.withAgent { session, dir in
            let size = 1 << 30
            let source = dir.file("big.src")
            let fd = open(source, O_WRONLY | O_CREAT, 0o644)
            // Sparse: fast to create, reads as zeros with a nonzero tail so the hash is specific.
            ftruncate(fd, off_t(size - 4096))
            let tail = pseudoRandomBytes(4096, seed: 99)
            _ = tail.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(size - 4096)) }
            close(fd)
            let baseline = residentBytes()
            let peak = PeakTracker()
            let monitor = Task {
                while !Task.isCancelled {
                    peak.observe(residentBytes())
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            let up = try await session.upload(file: source, to: dir.file("big.guest"))
            unlink(source)
            let down = try await session.download(dir.file("big.guest"), to: dir.file("big.back"))
            monitor.cancel()
            #expect(up.size == UInt64(size))
            #expect(down.sha256 == up.sha256)
            let grown = peak.value - baseline
            print("1 GiB transfer: RSS baseline \(baseline >> 20) MiB, peak \(peak.value >> 20) MiB")
            #expect(grown < 200 << 20, "agent + broker grew by \(grown >> 20) MiB during 2 GiB of transfers")
        }
    }
}

final class ProgressRecorder: Sendable {
    private let value = Mutex<UInt64>(0)
    var record: TransferProgress { { done, _ in self.value.withLock { $0 = done } } }
    var last: UInt64 { value.withLock { $0 } }
}

final class PeakTracker: Sendable {
    private let peak = Mutex<Int>(0)
    func observe(_ value: Int) { peak.withLock { $0 = max($0, value) } }
    var value: Int { peak.withLock { $0 } }
}
