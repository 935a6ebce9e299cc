import AgentProtocol
import FoundationEssentials
import Glibc
import NIOCore
import POSIXSupport
import Synchronization

/// Upload (atomic: temp file, fsync, rename, directory fsync), download, stat and list.
struct FileHandlers {
    let core: AgentCore
    let context: StreamContext

    /// Bytes gathered before one write(2) / read(2) on the thread pool.
    static let ioBlock = 512 << 10

    static func checkPath(_ path: String) throws(AgentError) {
        guard path.hasPrefix("/") else {
            throw AgentError(.invalidArgument, "path \(path.debugDescription) is not absolute")
        }
        guard !path.contains("\0" as Character), path.utf8.count < 4096 else {
            throw AgentError(.invalidArgument, "path \(path.debugDescription) is not a valid file name")
        }
    }

    // MARK: Upload

    func upload(_ request: Limiquantix_Agent_V1_UploadRequest) async throws {
        let path = request.path
        try Self.checkPath(path)
        let (directory, base) = Self.split(path)
        guard !base.isEmpty, base != ".", base != ".." else {
            throw AgentError(.invalidArgument, "upload destination \(path) names a directory")
        }
        let mode = request.mode == 0 ? 0o644 : request.mode & 0o7777
        let temp = "\(directory)/.\(base).lqx-\(String(UInt64.random(in: 0...UInt64.max), radix: 36)).part"
        let fd: Int32 = try await core.blocking { () throws -> Int32 in
            if request.createParents { try Self.makeDirectories(directory) }
            var st = Glibc.stat()
            if stat(path, &st) == 0 {
                if request.noOverwrite { throw AgentError(.alreadyExists, "\(path) exists") }
                if (st.st_mode & S_IFMT) == S_IFDIR { throw AgentError(.invalidArgument, "\(path) is a directory") }
            }
            let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw Self.ioError("cannot create a file in \(directory)") }
            return fd
        }
        let descriptor = Descriptor(fd)
        var committed = false
        defer {
            descriptor.close()
            if !committed { unlink(temp) }
        }
        var size: UInt64 = 0
        // One block is hashed and written on the thread pool while the next one is received,
        // so the sender's credit keeps flowing.
        let (finalHasher, commit) = try await withDoubleBuffering(
            initial: SHA256Hasher(), blockSize: Self.ioBlock,
            process: { block, hasher in try await self.write(block, to: fd, hasher: hasher) }
        ) { append -> Limiquantix_Agent_V1_UploadCommit? in
            while let event = try await context.next() {
                switch event {
                case .data(var bytes, _, _, _):
                    size += UInt64(bytes.readableBytes)
                    guard size <= request.size else {
                        throw AgentError(.invalidArgument, "upload sent more than the announced \(request.size) bytes")
                    }
                    try await append(&bytes)
                case .message(let payload, _):
                    let control = try Control(payload: payload)
                    guard case .commit(let c) = control.kind else {
                        throw AgentError(.protocolViolation, "unexpected control message on an upload stream")
                    }
                    return c
                }
            }
            return nil
        }
        guard let commit else { throw AgentError(.invalidArgument, "upload ended without a commit") }
        let hasher = finalHasher
        let digest = hasher.finalize()
        guard commit.size == size, size == request.size else {
            throw AgentError(.checksumMismatch, "received \(size) bytes, sender says \(commit.size)")
        }
        guard commit.sha256 == digest else {
            throw AgentError(
                .checksumMismatch,
                "SHA-256 mismatch: received \(digest.hexString), sender says \(commit.sha256.hexString)")
        }
        try await core.blocking {
            // Owner first: chown(2) clears the setuid and setgid bits, so the mode comes after.
            if request.hasUid || request.hasGid {
                let uid = request.hasUid ? uid_t(request.uid) : uid_t.max
                let gid = request.hasGid ? gid_t(request.gid) : gid_t.max
                guard fchown(fd, uid, gid) == 0 else { throw Self.ioError("chown \(path)") }
            }
            guard fchmod(fd, mode_t(mode)) == 0 else { throw Self.ioError("chmod \(path)") }
            guard fsync(fd) == 0 else { throw Self.ioError("fsync \(temp)") }
            guard descriptor.close() == 0 else { throw Self.ioError("close \(temp)") }
            if request.noOverwrite {
                // link(2) fails atomically when the destination exists.
                guard link(temp, path) == 0 else { throw Self.ioError("create \(path)") }
                unlink(temp)
            } else {
                guard rename(temp, path) == 0 else { throw Self.ioError("rename to \(path)") }
            }
            let dirfd = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dirfd >= 0 {
                fsync(dirfd)
                close(dirfd)
            }
        }
        committed = true
        core.audit?.record("upload", ["path": path, "size": Int(size), "sha256": digest.hexString, "result": "ok"])
        try await context.reply(
            .with {
                $0.uploadResult = .with {
                    $0.size = size; $0.sha256 = digest
                }
            }, end: true)
    }

    private func write(_ buffer: ByteBuffer, to fd: Int32, hasher: SHA256Hasher) async throws -> SHA256Hasher {
        try await core.blocking {
            var hasher = hasher
            try buffer.withUnsafeReadableBytes { raw in
                hasher.update(raw)
                var offset = 0
                while offset < raw.count {
                    let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw Self.ioError("write")
                    }
                    offset += n
                }
            }
            return hasher
        }
    }

    // MARK: Download

    /// The most a file that reports size 0 is read for (procfs and sysfs files are far smaller).
    static let pseudoFileLimit: UInt64 = 16 << 20

    /// Files of procfs and sysfs report size 0; their length is what reading them gives now (up to
    /// `pseudoFileLimit`). The file is rewound afterwards.
    static func pseudoFileLength(_ fd: Int32) -> UInt64 {
        var scratch = [UInt8](repeating: 0, count: 65536)
        var length: UInt64 = 0
        while length < pseudoFileLimit {
            let n = read(fd, &scratch, Int(min(UInt64(scratch.count), pseudoFileLimit - length)))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            length += UInt64(n)
        }
        lseek(fd, 0, SEEK_SET)
        return length
    }

    func download(_ request: Limiquantix_Agent_V1_DownloadRequest) async throws {
        let path = request.path
        try Self.checkPath(path)
        let (fd, size, mode): (Int32, UInt64, UInt32) = try await core.blocking {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw Self.ioError("cannot open \(path)") }
            var st = Glibc.stat()
            guard fstat(fd, &st) == 0 else {
                close(fd)
                throw Self.ioError("stat \(path)")
            }
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                close(fd)
                throw AgentError(.invalidArgument, "\(path) is not a regular file")
            }
            return (fd, st.st_size == 0 ? Self.pseudoFileLength(fd) : UInt64(st.st_size), UInt32(st.st_mode & 0o7777))
        }
        defer { close(fd) }
        try await context.reply(
            .with {
                $0.downloadStart = .with {
                    $0.size = size; $0.mode = mode
                }
            })
        var hasher = SHA256Hasher()
        var total: UInt64 = 0
        let core = self.core
        // At most `size` bytes: the file as it was when opened (a growing file is cut there).
        func readBlock(_ limit: UInt64) async throws -> ByteBuffer {
            let want = Int(min(UInt64(Self.ioBlock), limit))
            guard want > 0 else { return ByteBuffer() }
            return try await core.blocking {
                var buffer = ByteBuffer()
                let n = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: want) { raw in
                    while true {
                        let n = read(fd, raw.baseAddress!, want)
                        if n < 0 && errno == EINTR { continue }
                        if n < 0 { throw Self.ioError("read \(path)") }
                        return n
                    }
                }
                _ = n
                return buffer
            }
        }
        var next = try await readBlock(size)
        while next.readableBytes > 0 {
            let block = next
            total += UInt64(block.readableBytes)
            let remaining = size - total
            async let prefetch = readBlock(remaining)
            hasher.update(block)
            try await context.send(data: block)
            next = try await prefetch
        }
        let digest = hasher.finalize()
        try await context.send(data: ByteBuffer(), endOfChannel: true)
        core.audit?.record("download", ["path": path, "size": Int(total), "sha256": digest.hexString, "result": "ok"])
        try await context.reply(
            .with {
                $0.downloadResult = .with {
                    $0.size = total; $0.sha256 = digest
                }
            }, end: true)
    }

    // MARK: Stat and list

    func statFile(_ request: Limiquantix_Agent_V1_StatRequest) async throws {
        try Self.checkPath(request.path)
        let entry = try await core.blocking { () throws -> Limiquantix_Agent_V1_FileStat in
            guard let entry = Self.fileStat(request.path, name: request.path, follow: !request.noFollow) else {
                throw Self.ioError("stat \(request.path)")
            }
            return entry
        }
        try await context.reply(.with { $0.stat = entry }, end: true)
    }

    func list(_ request: Limiquantix_Agent_V1_ListRequest) async throws {
        let path = request.path
        try Self.checkPath(path)
        let entries = try await core.blocking { () throws -> [Limiquantix_Agent_V1_FileStat] in
            guard let dir = opendir(path) else { throw Self.ioError("cannot list \(path)") }
            defer { closedir(dir) }
            var entries: [Limiquantix_Agent_V1_FileStat] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name == "." || name == ".." { continue }
                let full = path.hasSuffix("/") ? path + name : path + "/" + name
                if let stat = Self.fileStat(full, name: name, follow: false) { entries.append(stat) }
            }
            return entries.sorted { $0.name < $1.name }
        }
        // Batches of at most 512 entries and about 48 KiB, well under the 64 KiB message limit.
        var index = 0
        repeat {
            var batch: [Limiquantix_Agent_V1_FileStat] = []
            var bytes = 0
            while index < entries.count, batch.count < 512, bytes < 48 << 10 {
                bytes += entries[index].name.utf8.count + entries[index].symlinkTarget.utf8.count + 48
                batch.append(entries[index])
                index += 1
            }
            try await context.reply(.with { $0.listing = .with { $0.entries = batch } }, end: index >= entries.count)
        } while index < entries.count
    }

    static func fileStat(_ path: String, name: String, follow: Bool) -> Limiquantix_Agent_V1_FileStat? {
        var st = Glibc.stat()
        guard (follow ? stat(path, &st) : Glibc.lstat(path, &st)) == 0 else { return nil }
        return .with {
            $0.name = name
            $0.size = UInt64(st.st_size)
            $0.mode = UInt32(st.st_mode & 0o7777)
            $0.uid = st.st_uid
            $0.gid = st.st_gid
            $0.mtimeNs = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
            switch st.st_mode & S_IFMT {
            case S_IFREG: $0.type = .regular
            case S_IFDIR: $0.type = .directory
            case S_IFLNK:
                $0.type = .symlink
                var target = [CChar](repeating: 0, count: 4097)
                let n = readlink(path, &target, 4096)
                if n > 0 {
                    $0.symlinkTarget = String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                }
            case S_IFBLK: $0.type = .blockDevice
            case S_IFCHR: $0.type = .charDevice
            case S_IFIFO: $0.type = .fifo
            case S_IFSOCK: $0.type = .socket
            default: $0.type = .unknown
            }
        }
    }

    // MARK: Helpers

    static func split(_ path: String) -> (directory: String, base: String) {
        guard let slash = path.lastIndex(of: "/") else { return ("/", path) }
        let dir = String(path[..<slash])
        return (dir.isEmpty ? "/" : dir, String(path[path.index(after: slash)...]))
    }

    static func makeDirectories(_ path: String) throws {
        var current = ""
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) != 0 && errno != EEXIST { throw ioError("mkdir \(current)") }
        }
    }

    static func ioError(_ what: String, _ code: Int32 = errno) -> AgentError {
        let kind: AgentError.Code =
            switch code {
            case ENOENT, ENOTDIR: .notFound
            case EACCES, EPERM, EROFS: .denied
            case EEXIST: .alreadyExists
            case EISDIR, EINVAL, ENAMETOOLONG: .invalidArgument
            default: .io
            }
        return AgentError(kind, "\(what): \(errnoText(code))")
    }
}

/// A file descriptor closed exactly once.
final class Descriptor: Sendable {
    let fd: Int32
    private let closed = Mutex(false)

    init(_ fd: Int32) { self.fd = fd }

    /// Closes the descriptor unless already closed; returns close(2)'s result (0 when already closed).
    @discardableResult
    func close() -> Int32 {
        let first = closed.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        return first ? Glibc.close(fd) : 0
    }
}
