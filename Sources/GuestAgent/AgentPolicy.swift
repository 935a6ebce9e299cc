import AgentProtocol
import Glibc

/// What the host is allowed to do in this guest, from `/etc/limiquantix/agent.toml`.
///
/// ```toml
/// [exec]
/// enabled = true          # run commands
/// [files]
/// read = true             # download, stat, list
/// write = true            # upload
/// [power]
/// shutdown = true         # poweroff, reboot, halt
/// ```
/// Missing keys keep their defaults (everything allowed); unknown keys are an error so a typo
/// never silently leaves an operation enabled.
public struct AgentPolicy: Sendable, Equatable {
    /// Whether the host may run commands (`[exec] enabled`).
    public var allowExec: Bool
    /// Whether the host may download, stat and list files (`[files] read`).
    public var allowFileRead: Bool
    /// Whether the host may upload files (`[files] write`).
    public var allowFileWrite: Bool
    /// Whether the host may power off, reboot or halt the guest (`[power] shutdown`).
    public var allowShutdown: Bool

    /// Creates a policy; everything is allowed by default.
    public init(
        allowExec: Bool = true, allowFileRead: Bool = true, allowFileWrite: Bool = true, allowShutdown: Bool = true
    ) {
        self.allowExec = allowExec
        self.allowFileRead = allowFileRead
        self.allowFileWrite = allowFileWrite
        self.allowShutdown = allowShutdown
    }

    /// Loads a policy file; a missing file at the default path means the default policy.
    public static func load(path: String, required: Bool) throws -> AgentPolicy {
        guard access(path, F_OK) == 0 else {
            if required { throw AgentError(.notFound, "policy file \(path) does not exist") }
            return AgentPolicy()
        }
        let text: String
        do {
            text = try readTextFile(path, limit: 64 * 1024)
        } catch {
            throw AgentError(.invalidArgument, "policy file \(path): \(error)")
        }
        return try parse(text, source: path)
    }

    /// Parses policy TOML.
    ///
    /// The policy is a strict subset of TOML 1.0: `[section]` headers, `key = true|false`, comments
    /// and blank lines. Anything else (other value types, dotted keys, arrays, inline tables) is
    /// rejected with the line number, so a policy never means something other than it reads.
    public static func parse(_ text: String, source: String = "policy") throws -> AgentPolicy {
        var policy = AgentPolicy()
        let known: [String: [String: WritableKeyPath<AgentPolicy, Bool>]] = [
            "exec": ["enabled": \.allowExec],
            "files": ["read": \.allowFileRead, "write": \.allowFileWrite],
            "power": ["shutdown": \.allowShutdown],
        ]
        var section: String?
        var seenSections: Set<String> = []
        var seenKeys: Set<String> = []
        for (index, rawLine) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let where_ = "\(source):\(index + 1)"
            let line = stripComment(rawLine).trimmingSpaces()
            if line.isEmpty { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]"), !line.hasPrefix("[[") else {
                    throw AgentError(.invalidArgument, "\(where_): malformed section header \(line)")
                }
                let name = String(line.dropFirst().dropLast()).trimmingSpaces()
                guard known[name] != nil else {
                    throw AgentError(.invalidArgument, "\(where_): unknown section [\(name)]")
                }
                guard seenSections.insert(name).inserted else {
                    throw AgentError(.invalidArgument, "\(where_): section [\(name)] defined twice")
                }
                section = name
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw AgentError(.invalidArgument, "\(where_): expected `key = true|false`, got \(line)")
            }
            let key = String(line[..<equals]).trimmingSpaces()
            let value = String(line[line.index(after: equals)...]).trimmingSpaces()
            guard let section else {
                throw AgentError(.invalidArgument, "\(where_): key \(key) outside a section")
            }
            guard let path = known[section]?[key] else {
                throw AgentError(.invalidArgument, "\(where_): unknown key \(section).\(key)")
            }
            guard seenKeys.insert("\(section).\(key)").inserted else {
                throw AgentError(.invalidArgument, "\(where_): key \(section).\(key) set twice")
            }
            switch value {
            case "true": policy[keyPath: path] = true
            case "false": policy[keyPath: path] = false
            default:
                throw AgentError(.invalidArgument, "\(where_): \(section).\(key) must be true or false, got \(value)")
            }
        }
        return policy
    }

    /// The line without a `#` comment (the policy has no strings, so `#` always starts one).
    private static func stripComment(_ line: Substring) -> Substring {
        line.firstIndex(of: "#").map { line[..<$0] } ?? line
    }
}

extension StringProtocol {
    /// The string without leading and trailing spaces, tabs, carriage returns and newlines.
    func trimmingSpaces() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" || $0 == "\r\n" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}

/// Reads a whole (small) text file as UTF-8; fails for files larger than `limit` or not UTF-8.
func readTextFile(_ path: String, limit: Int) throws -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw AgentError(.io, String(cString: strerror(errno))) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw AgentError(.io, String(cString: strerror(errno)))
        }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[..<n])
        guard bytes.count <= limit else { throw AgentError(.invalidArgument, "larger than \(limit) bytes") }
    }
    guard let text = String(validating: bytes, as: UTF8.self) else {
        throw AgentError(.invalidArgument, "not valid UTF-8")
    }
    return text
}
