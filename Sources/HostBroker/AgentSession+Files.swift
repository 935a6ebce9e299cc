import AgentProtocol
import Foundation
import Glibc
import NIOCore
import NIOPosix

/// Outcome of a transfer.
public struct TransferResult: Sendable, Equatable {
    /// Bytes moved.
    public var size: UInt64
    /// SHA-256 both ends agreed on (hex).
    public var sha256: String
}

/// Progress callback: bytes done, bytes in total.
public typealias TransferProgress = @Sendable (_ done: UInt64, _ total: UInt64) -> Void

/// Options of an upload.
public struct UploadOptions: Sendable {
    /// Permission bits; nil takes the local file's.
    public var mode: UInt32?
    /// The owner's user id for the guest file; nil leaves the owner the agent gives it.
    public var uid: UInt32?
    /// The owner's group id for the guest file; nil leaves the group the agent gives it.
    public var gid: UInt32?
    /// Create missing parent directories.
    public var createParents = false
    /// Fail when the destination exists.
    public var noOverwrite = false
    /// Creates default options.
    public init() {}
}

extension AgentSession {
    static let readBlock = 1 << 20

    /// Copies a local file into the guest: atomic in the guest (temp file, fsync, rename), SHA-256
    /// checked by the agent against what the host read. Never holds more than a few MiB in memory.
    public func upload(
        file localPath: String, to guestPath: String, options: UploadOptions = UploadOptions(),
        progress: TransferProgress? = nil
    ) async throws -> TransferResult {
        let fd = Glibc.open(localPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw AgentError(.notFound, "cannot open \(localPath): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw AgentError(.invalidArgument, "\(localPath) is not a regular file")
        }
        let size = UInt64(st.st_size)
        var options = options
        if options.mode == nil { options.mode = UInt32(st.st_mode & 0o7777) }
        do {
            return try await upload(to: guestPath, size: size, options: options, progress: progress) {
                let block = try await Self.read(fd: fd)
                return block.readableBytes > 0 ? block : nil
            }
        } catch let error as AgentError where error.code == .io && error.message.hasPrefix("the source") {
            throw AgentError(.io, "\(localPath) changed size during the upload (\(error.message))")
        }
    }

    /// Streams bytes into a guest file: `source` returns the next block (nil at the end) and must
    /// deliver exactly `size` bytes. Atomic in the guest (temp file, fsync, rename), SHA-256 checked
    /// by the agent against what was sent. The next block is read while the current one is sent.
    public func upload(
        to guestPath: String, size: UInt64, options: UploadOptions = UploadOptions(),
        progress: TransferProgress? = nil, source: @escaping @Sendable () async throws -> ByteBuffer?
    ) async throws -> TransferResult {
        let request = Request.with {
            $0.upload = .with {
                $0.path = guestPath
                $0.mode = options.mode ?? 0o644
                if let uid = options.uid { $0.uid = uid }
                if let gid = options.gid { $0.gid = gid }
                $0.size = size
                $0.createParents = options.createParents
                $0.noOverwrite = options.noOverwrite
            }
        }
        let stream = try open(request)
        var completed = false
        defer { completed ? mux.release(stream: stream) : abandon(stream) }
        let mux = self.mux
        let committed = SharedFlag()
        enum Outcome: Sendable {
            case sent(size: UInt64, sha256: Data)
            case result(size: UInt64, sha256: Data)
        }
        let result = try await guardedThrowing(stream, "upload to \(guestPath)") { deadline in
            try await withThrowingTaskGroup(of: Outcome.self) { group in
                // The reply arrives only after the commit, unless the agent fails early: then the
                // sender is cancelled instead of waiting for credit that never comes.
                group.addTask {
                    guard let (reply, _) = try await self.nextReply(stream) else {
                        throw AgentError(.protocolViolation, "upload stream ended without a result")
                    }
                    guard case .uploadResult(let result) = reply.kind else {
                        throw self.unexpected(reply, to: "upload")
                    }
                    guard committed.isSet else {
                        throw AgentError(
                            .protocolViolation, "the agent reported the upload's result before the host committed it")
                    }
                    return .result(size: result.size, sha256: result.sha256)
                }
                group.addTask {
                    var hasher = SHA256Hasher()
                    var sent: UInt64 = 0
                    var next = try await source()
                    while let block = next {
                        async let prefetch = source()
                        guard sent + UInt64(block.readableBytes) <= size else {
                            throw AgentError(.io, "the source has more than the announced \(size) bytes")
                        }
                        hasher.update(block)
                        try await mux.send(stream: stream, data: block)
                        sent += UInt64(block.readableBytes)
                        deadline.note()
                        progress?(sent, size)
                        next = try await prefetch
                    }
                    guard sent == size else {
                        throw AgentError(.io, "the source ended after \(sent) of the announced \(size) bytes")
                    }
                    let digest = hasher.finalize()
                    let commit = Control.with {
                        $0.commit = .with {
                            $0.sha256 = digest; $0.size = sent
                        }
                    }
                    // Set before the commit is queued, so a genuine result can never be seen first.
                    committed.set()
                    try await mux.send(stream: stream, message: commit.buffer())
                    deadline.note()
                    return .sent(size: sent, sha256: digest)
                }
                var sent: (size: UInt64, sha256: Data)?
                var reported: (size: UInt64, sha256: Data)?
                while let outcome = try await group.next() {
                    switch outcome {
                    case .sent(let size, let sha256): sent = (size, sha256)
                    case .result(let size, let sha256): reported = (size, sha256)
                    }
                }
                guard let sent, let reported else { throw AgentError(.internal, "upload finished without a result") }
                // The agent's word is checked against what the host itself sent and hashed.
                guard reported.size == sent.size, reported.sha256 == sent.sha256 else {
                    throw AgentError(
                        .checksumMismatch,
                        "upload to \(guestPath): the agent reported \(reported.size) bytes \(reported.sha256.hexString), the host sent \(sent.size) bytes \(sent.sha256.hexString)"
                    )
                }
                return TransferResult(size: sent.size, sha256: sent.sha256.hexString)
            }
        }
        completed = true
        return result
    }

    /// Streams a guest file: `start` gets its size and mode first, then `receive` every block in
    /// order. Returns after the agent's SHA-256 matched the bytes received (a mismatch throws
    /// `checksumMismatch` after the blocks were delivered: the receiver must not commit before).
    public func download(
        _ guestPath: String, start: @Sendable (_ size: UInt64, _ mode: UInt32) async throws -> Void,
        receive: @Sendable (ByteBuffer) async throws -> Void
    ) async throws -> TransferResult {
        let stream = try open(.with { $0.download = .with { $0.path = guestPath } })
        var completed = false
        defer { completed ? mux.release(stream: stream) : abandon(stream) }
        let result = try await guardedThrowing(stream, "download of \(guestPath)") { deadline in
            guard let (first, _) = try await nextReply(stream) else {
                throw AgentError(.protocolViolation, "download stream ended early")
            }
            guard case .downloadStart(let header) = first.kind else { throw unexpected(first, to: "download") }
            deadline.note()
            try await start(header.size, header.mode)
            var hasher = SHA256Hasher()
            var received: UInt64 = 0
            while true {
                guard let event = try await mux.next(stream: stream) else {
                    throw AgentError(.protocolViolation, "download ended without a result")
                }
                deadline.note()
                switch event {
                case .data(let bytes, _, _, _):
                    received += UInt64(bytes.readableBytes)
                    try Self.checkAnnounced(received, header.size, guestPath)
                    hasher.update(bytes)
                    try await receive(bytes)
                case .message(let payload, _):
                    let reply = try Reply(payload: payload)
                    if case .error(let wire) = reply.kind { throw AgentError(wire: wire) }
                    guard case .downloadResult(let result) = reply.kind else { throw unexpected(reply, to: "download") }
                    let digest = hasher.finalize()
                    try Self.checkResult(result, received: received, digest: digest, guestPath)
                    return TransferResult(size: received, sha256: digest.hexString)
                }
            }
        }
        completed = true
        return result
    }

    /// Copies a guest file to `localPath` atomically (temp file, fsync, rename), verifying the
    /// agent's SHA-256 against the bytes received.
    public func download(
        _ guestPath: String, to localPath: String, progress: TransferProgress? = nil
    ) async throws -> TransferResult {
        let url = URL(fileURLWithPath: localPath)
        let directory = url.deletingLastPathComponent().path
        let temp = "\(directory)/.\(url.lastPathComponent).lqx-\(UInt32.random(in: 0...UInt32.max)).part"
        let stream = try open(.with { $0.download = .with { $0.path = guestPath } })
        var completed = false
        defer { completed ? mux.release(stream: stream) : abandon(stream) }
        let result = try await guardedThrowing(stream, "download of \(guestPath)") { deadline in
            try await download(
                stream, guestPath, into: temp, localPath: localPath, deadline: deadline, progress: progress)
        }
        completed = true
        return result
    }

    /// The body of `download(_:to:progress:)` on an open stream, under its deadline.
    private func download(
        _ stream: UInt32, _ guestPath: String, into temp: String, localPath: String, deadline: OperationProgress,
        progress: TransferProgress?
    ) async throws -> TransferResult {
        guard let (first, _) = try await nextReply(stream) else {
            throw AgentError(.protocolViolation, "download stream ended early")
        }
        guard case .downloadStart(let start) = first.kind else { throw unexpected(first, to: "download") }
        deadline.note()
        let fd = Glibc.open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AgentError(.io, "cannot create \(temp): \(String(cString: strerror(errno)))") }
        var done = false
        var fdOpen = true
        defer {
            if fdOpen { close(fd) }
            if !done { unlink(temp) }
        }
        var received: UInt64 = 0
        // One block is hashed and written on the thread pool while the next one arrives, so the
        // agent's credit keeps flowing.
        let (hasher, result) = try await withDoubleBuffering(
            initial: SHA256Hasher(), blockSize: Self.readBlock,
            process: { block, hasher in try await Self.hashAndWrite(block, fd: fd, hasher: hasher) }
        ) { append -> Limiquantix_Agent_V1_DownloadResult in
            while true {
                guard let event = try await mux.next(stream: stream) else {
                    throw AgentError(.protocolViolation, "download ended without a result")
                }
                deadline.note()
                switch event {
                case .data(var bytes, _, _, _):
                    received += UInt64(bytes.readableBytes)
                    try Self.checkAnnounced(received, start.size, guestPath)
                    try await append(&bytes)
                    progress?(received, start.size)
                case .message(let payload, _):
                    let reply = try Reply(payload: payload)
                    if case .error(let wire) = reply.kind { throw AgentError(wire: wire) }
                    guard case .downloadResult(let result) = reply.kind else { throw unexpected(reply, to: "download") }
                    return result
                }
            }
        }
        let digest = hasher.finalize()
        progress?(received, start.size)
        try Self.checkResult(result, received: received, digest: digest, guestPath)
        fdOpen = false
        try await NIOThreadPool.singleton.runIfActive {
            fchmod(fd, mode_t(start.mode & 0o777))  // never setuid/setgid/sticky from a guest
            let synced = fsync(fd) == 0
            let closed = close(fd) == 0
            guard synced, closed, rename(temp, localPath) == 0 else {
                throw AgentError(.io, "cannot write \(localPath): \(String(cString: strerror(errno)))")
            }
        }
        done = true
        return TransferResult(size: received, sha256: digest.hexString)
    }

    /// The agent's result must match the bytes the host received and its own hash of them.
    static func checkResult(
        _ result: Limiquantix_Agent_V1_DownloadResult, received: UInt64, digest: Data, _ path: String
    ) throws(AgentError) {
        guard result.size == received, result.sha256 == digest else {
            throw AgentError(
                .checksumMismatch,
                "download of \(path) does not match: got \(received) bytes \(digest.hexString), agent sent \(result.size) bytes \(result.sha256.hexString)"
            )
        }
    }

    /// A guest that sends more than the size it announced is cut off (the stream is reset) instead
    /// of filling the host's disk.
    static func checkAnnounced(_ received: UInt64, _ announced: UInt64, _ path: String) throws(AgentError) {
        guard received <= announced else {
            throw AgentError(
                .protocolViolation, "download of \(path): the agent sent more than the \(announced) bytes it announced")
        }
    }

    static func read(fd: Int32) async throws -> ByteBuffer {
        try await NIOThreadPool.singleton.runIfActive {
            var buffer = ByteBuffer()
            try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: readBlock) { raw in
                while true {
                    let n = Foundation.read(fd, raw.baseAddress!, readBlock)
                    if n < 0 && errno == EINTR { continue }
                    if n < 0 { throw AgentError(.io, "read failed: \(String(cString: strerror(errno)))") }
                    return n
                }
            }
            return buffer
        }
    }

    static func hashAndWrite(_ buffer: ByteBuffer, fd: Int32, hasher: SHA256Hasher) async throws -> SHA256Hasher {
        try await NIOThreadPool.singleton.runIfActive {
            var hasher = hasher
            hasher.update(buffer)
            try buffer.withUnsafeReadableBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = Foundation.write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n < 0 && errno == EINTR { continue }
                    if n < 0 { throw AgentError(.io, "write failed: \(String(cString: strerror(errno)))") }
                    offset += n
                }
            }
            return hasher
        }
    }
}
