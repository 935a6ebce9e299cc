import Foundation

/// A daemon binary of this build run by a test: stdout read line by line (where it says where it
/// listens), stderr appended to a log file shown when something fails. Its pid is recorded so
/// the test script's cleanup stops it if the test runner dies.
public final class Daemon: Sendable {
    /// The process.
    public let child: Child
    /// Where its stderr goes.
    public let logPath: String
    private let stdout: Int32

    /// Starts `binary` with `arguments`.
    public init(_ binary: String, _ arguments: [String], logPath: String) throws {
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard logFD >= 0 else { throw POSIXError(.EIO) }
        defer { close(logFD) }
        let out = try Child.pipe()
        do {
            child = try Child.spawn(binary, arguments, stdout: out.write, stderr: logFD)
        } catch {
            close(out.read)
            close(out.write)
            throw error
        }
        close(out.write)
        stdout = out.read
        self.logPath = logPath
        TestRun.record(pid: child.pid)
    }

    deinit { close(stdout) }

    /// What it wrote to stderr so far.
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The next line of its stdout (without the newline); nil once it closed stdout (exited).
    public func line() async -> String? {
        let fd = stdout
        return await withCheckedContinuation { continuation in
            Thread {
                var data = [UInt8]()
                var byte: UInt8 = 0
                var open = false
                while read(fd, &byte, 1) == 1 {
                    open = true
                    if byte == 0x0A { break }
                    data.append(byte)
                }
                continuation.resume(returning: open ? String(decoding: data, as: UTF8.self) : nil)
            }.start()
        }
    }

    /// The value of `key=VALUE` in `line`.
    public static func field(_ key: String, in line: String) -> String? {
        line.split(separator: " ").first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
    }

    /// SIGTERM, then SIGKILL after `timeout`; the exit status.
    @discardableResult
    public func stop(timeout: Duration = .seconds(20)) async -> Int32 {
        child.signal(SIGTERM)
        if let status = await child.exit(timeout: timeout) { return status }
        child.signal(SIGKILL)
        return child.wait()
    }

    /// SIGKILL (a crash); the exit status.
    @discardableResult
    public func kill() -> Int32 {
        child.signal(SIGKILL)
        return child.wait()
    }

    /// A TCP port on 127.0.0.1 free a moment ago (for daemons that need a fixed port).
    public static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
