import CLQXSupport
import Foundation
import Glibc
import Testing

/// lqx_release_clean_mappings: what it may drop (pages identical to their file) and what it must
/// keep (anything written, even when the mapping is read-only now, like RELRO after relocation).
@Suite("idle memory release")
struct IdleMemoryTests {
    /// The smaps `Rss` (kB) of the mapping that starts at `address`.
    private func residentKilobytes(at address: UnsafeMutableRawPointer) throws -> Int {
        // Read to the end: String(contentsOfFile:) stops early on this size-0 proc file.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
        defer { try? handle.close() }
        let smaps = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
        let start = String(UInt(bitPattern: address), radix: 16)
        var inMapping = false
        for line in smaps.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), line[..<dash].allSatisfy(\.isHexDigit) {
                inMapping = line[..<dash].drop { $0 == "0" } == start.drop { $0 == "0" }
            } else if inMapping, line.hasPrefix("Rss:") {
                return Int(line.split(separator: " ")[1]) ?? -1
            }
        }
        return -1
    }

    @Test("clean read-only file pages are unmapped; written pages and writable mappings keep their data")
    func releaseRule() throws {
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let length = 64 * pageSize
        let path = NSTemporaryDirectory() + "lqx-idle-\(getpid()).bin"
        try Data(repeating: 0x11, count: length).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let fd = open(path, O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }

        // 1: read-only, private, only read: identical to the file, may be dropped.
        let clean = try #require(mmap(nil, length, PROT_READ, MAP_PRIVATE, fd, 0))
        // 2: written, then made read-only (what the dynamic linker does to RELRO): must stay.
        let relro = try #require(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0))
        // 3: writable and written: must stay.
        let writable = try #require(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0))
        defer {
            munmap(clean, length)
            munmap(relro, length)
            munmap(writable, length)
        }
        var sum = 0
        for offset in stride(from: 0, to: length, by: pageSize) {
            sum += Int(clean.load(fromByteOffset: offset, as: UInt8.self))
            relro.storeBytes(of: 0x22, toByteOffset: offset, as: UInt8.self)
            writable.storeBytes(of: 0x33, toByteOffset: offset, as: UInt8.self)
        }
        #expect(sum == 64 * 0x11)
        #expect(mprotect(relro, length, PROT_READ) == 0)
        #expect(try residentKilobytes(at: clean) >= 64 * pageSize / 1024)

        let released = lqx_release_clean_mappings()
        #expect(released >= 64 * pageSize / 1024)
        #expect(try residentKilobytes(at: clean) < 64 * pageSize / 1024)
        for offset in stride(from: 0, to: length, by: pageSize) {
            #expect(clean.load(fromByteOffset: offset, as: UInt8.self) == 0x11)
            #expect(relro.load(fromByteOffset: offset, as: UInt8.self) == 0x22)
            #expect(writable.load(fromByteOffset: offset, as: UInt8.self) == 0x33)
        }
    }
}
