import Foundation
@_exported import POSIXSupport

/// What a finished command printed and how it exited.
public struct CommandResult: Sendable {
    /// The exit code, or 128 + N when killed by signal N.
    public var status: Int32
    /// What the command wrote to stdout, as text.
    public var stdout: String
    /// What the command wrote to stderr, as text.
    public var stderr: String
}

/// Runs the project's built binaries (the exact command shapes other tools depend on).
public enum Command {
    /// The repository checkout these tests belong to.
    public static let repositoryRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// A product of the debug build (`swift build --build-tests` builds them all).
    public static func binary(_ name: String) -> String {
        repositoryRoot.appendingPathComponent(".build/debug/\(name)").path
    }

    /// Runs `binary` to completion on the calling thread; `stdin` nil reads /dev/null.
    /// (POSIXSupport, not Foundation's Process: see `Child`.)
    public static func run(_ binary: String, _ arguments: [String], stdin: String? = nil) throws -> CommandResult {
        let output = try Child.run(binary, arguments, stdin: stdin.map { Array($0.utf8) })
        return CommandResult(status: output.status, stdout: output.stdoutText, stderr: output.stderrText)
    }

    /// `run` on its own thread, so a test awaiting a slow command never blocks a thread of the
    /// cooperative pool.
    public static func output(_ binary: String, _ arguments: [String], stdin: String? = nil) async throws
        -> CommandResult
    {
        let output = try await Child.output(binary, arguments, stdin: stdin.map { Array($0.utf8) })
        return CommandResult(status: output.status, stdout: output.stdoutText, stderr: output.stderrText)
    }
}

/// A minimal HTTP/1.1 GET over a plain TCP connection (for /health and /metrics).
public func httpGet(_ address: String, _ path: String) async throws -> (status: Int, body: String) {
    try await withCheckedThrowingContinuation { continuation in
        Thread {
            continuation.resume(
                with: Result { () throws -> (Int, String) in
                    guard let colon = address.lastIndex(of: ":"),
                        let port = UInt16(address[address.index(after: colon)...])
                    else { throw CocoaError(.fileReadInvalidFileName) }
                    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                    guard fd >= 0 else { throw POSIXError(.EIO) }
                    defer { close(fd) }
                    var sin = sockaddr_in()
                    sin.sin_family = sa_family_t(AF_INET)
                    sin.sin_port = port.bigEndian
                    inet_pton(AF_INET, String(address[..<colon]), &sin.sin_addr)
                    let connected = withUnsafePointer(to: &sin) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                        }
                    }
                    guard connected == 0 else { throw POSIXError(.ECONNREFUSED) }
                    let request = "GET \(path) HTTP/1.1\r\nHost: \(address)\r\nConnection: close\r\n\r\n"
                    _ = request.withCString { write(fd, $0, strlen($0)) }
                    var response = Data()
                    var buffer = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let n = read(fd, &buffer, buffer.count)
                        if n <= 0 { break }
                        response.append(contentsOf: buffer[0..<n])
                    }
                    let text = String(decoding: response, as: UTF8.self)
                    guard let headerEnd = text.range(of: "\r\n\r\n") else { throw POSIXError(.EPROTO) }
                    let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
                    return (status, String(text[headerEnd.upperBound...]))
                })
        }.start()
    }
}
