import AgentProtocol
import Foundation
import TOMLKit

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
    public var allowExec: Bool
    public var allowFileRead: Bool
    public var allowFileWrite: Bool
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
        guard FileManager.default.fileExists(atPath: path) else {
            if required { throw AgentError(.notFound, "policy file \(path) does not exist") }
            return AgentPolicy()
        }
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try parse(text, source: path)
    }

    /// Parses policy TOML.
    public static func parse(_ text: String, source: String = "policy") throws -> AgentPolicy {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch {
            throw AgentError(.invalidArgument, "\(source): \(error)")
        }
        var policy = AgentPolicy()
        let known: [String: [String: WritableKeyPath<AgentPolicy, Bool>]] = [
            "exec": ["enabled": \.allowExec],
            "files": ["read": \.allowFileRead, "write": \.allowFileWrite],
            "power": ["shutdown": \.allowShutdown],
        ]
        for key in table.keys {
            guard let section = known[key] else {
                throw AgentError(.invalidArgument, "\(source): unknown section [\(key)]")
            }
            guard let sub = table[key]?.table else {
                throw AgentError(.invalidArgument, "\(source): [\(key)] must be a table")
            }
            for subKey in sub.keys {
                guard let path = section[subKey] else {
                    throw AgentError(.invalidArgument, "\(source): unknown key \(key).\(subKey)")
                }
                guard let value = sub[subKey]?.bool else {
                    throw AgentError(.invalidArgument, "\(source): \(key).\(subKey) must be true or false")
                }
                policy[keyPath: path] = value
            }
        }
        return policy
    }
}
