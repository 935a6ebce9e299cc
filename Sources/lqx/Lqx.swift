import AgentProtocol
import ArgumentParser
import Foundation
import HostBroker
import LQXModel
import Logging

@main
struct Lqx: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lqx",
        abstract: "limiquantix operator CLI.",
        discussion: """
            With --node HOST:PORT (or $LQX_NODE), commands go through a node daemon: `vm` and \
            `node` manage VMs, and exec, cp and metrics name the VM (exec NAME -- CMD, \
            cp ./f NAME:/PATH, metrics NAME).

            With --agent ADDR, commands talk to one guest agent directly through an in-process \
            broker. ADDR is unix:PATH (virtio-serial socket of a VM, or an agent's --listen \
            socket), vsock:CID:PORT, or hvsock:PATH:PORT (Firecracker / Cloud Hypervisor hybrid \
            vsock).

            Exit status: the remote command's for exec (128+N when killed by signal N), 255 when \
            lqx itself fails (an exit status no process can have, reported by a guest, is such a \
            failure). SIGINT, SIGTERM and SIGHUP end any command within 2 s, removing partial \
            downloads: exit status 130, 143, 129.

            Text that comes from the guest (names, messages, telemetry labels) is printed with \
            control characters escaped (\\x1b, \\u{9b}), so a guest cannot drive the terminal; \
            exec output is passed through unchanged.
            """,
        version: LimiquantixVersion.current,
        subcommands: [Info.self, Ping.self, Exec.self, Copy.self, Metrics.self, Top.self, Shutdown.self]
            + nodeCommands)

    @OptionGroup var options: AgentOptions

    #if NodeClient
        static let nodeCommands: [any ParsableCommand.Type] = [VMCommand.self, NodeCommand.self]
    #else
        static let nodeCommands: [any ParsableCommand.Type] = []
    #endif

    /// Exit code for failures of lqx itself.
    static let failure: Int32 = 255

    /// Parses the command line and runs the command under `Interrupts`.
    static func main() async {
        #if NodeClient
            // Without --node or --agent (or $LQX_NODE), commands go to the control plane.
            let arguments = CommandLine.arguments.dropFirst()
            let direct = arguments.contains {
                $0 == "--node" || $0.hasPrefix("--node=") || $0 == "--agent" || $0.hasPrefix("--agent=")
            }
            let environment = ProcessInfo.processInfo.environment
            let nodeFromEnvironment =
                !(environment["LQX_NODE"] ?? "").isEmpty && !arguments.contains("--server")
                && (environment["LQX_SERVER"] ?? "").isEmpty
            if !direct && !nodeFromEnvironment {
                await run(root: LqxCluster.self)
                return
            }
        #endif
        await run(root: Lqx.self)
    }

    static func run(root: any ParsableCommand.Type) async {
        do {
            let parsed = ParsedCommand(command: try root.parseAsRoot())
            try await Interrupts.shared.run {
                var command = parsed.command
                if var async = command as? any AsyncParsableCommand {
                    try await async.run()
                } else {
                    try command.run()
                }
            }
        } catch {
            root.exit(withError: error)
        }
    }
}

/// The parsed command, handed to the task that runs it.
// @unchecked Sendable: created before that task starts and used by it alone.
private struct ParsedCommand: @unchecked Sendable {
    var command: any ParsableCommand
}

/// Options every agent command shares; given before or after the command name.
struct AgentOptions: ParsableArguments {
    @Option(name: .customLong("agent"), help: "Agent address: unix:PATH | vsock:CID:PORT | hvsock:PATH:PORT.")
    var agent: String?

    @Option(
        name: .customLong("node"),
        help: "Node daemon HOST:PORT: exec, cp and metrics then take a VM name (default: $LQX_NODE).")
    var node: String?

    /// The node to go through, when the command addresses a VM by name instead of an agent.
    var nodeAddress: String? {
        guard agent == nil else { return nil }
        if let node { return node }
        let env = ProcessInfo.processInfo.environment["LQX_NODE"] ?? ""
        return env.isEmpty ? nil : env
    }

    @Option(
        name: .customLong("node-credentials"),
        help: ArgumentHelp(
            "Directory with an operator certificate for --node (default: $LQX_NODE_CREDENTIALS).",
            discussion: """
                A node that joined a cluster serves its API with mutual TLS only: it admits the control \
                plane and operators holding a certificate of the cluster CA. `lqx node operator-cert create \
                --out DIR` (admins, through the control plane) writes one into DIR; without this option the \
                node is called in plaintext, as a standalone node serves on localhost.
                """), completion: .directory)
    var nodeCredentials: String?

    /// The credentials directory for --node, from the option or the environment.
    var nodeCredentialsDirectory: String? {
        if let nodeCredentials { return nodeCredentials }
        let env = ProcessInfo.processInfo.environment["LQX_NODE_CREDENTIALS"] ?? ""
        return env.isEmpty ? nil : env
    }

    @OptionGroup var cluster: ClusterOptions

    /// Whether commands name VMs (through a node or the control plane) instead of an agent.
    var namesVMs: Bool { agent == nil && (nodeAddress != nil || cluster.configured) }

    @Option(name: .customLong("connect-timeout"), help: "Seconds to wait for a session with the agent.")
    var connectTimeout: Double = 10

    @Option(
        name: .customLong("reply-timeout"),
        help: ArgumentHelp(
            "Seconds to wait for each reply of the agent, and for the next piece of a transfer or listing.",
            discussion: "A guest that does not answer in time fails the command with a timeout (exit 255)."))
    var replyTimeout: Double = 30

    @Flag(name: .customLong("verbose"), help: "Log the broker's activity to stderr.")
    var verbose = false

    /// Runs `body` with a session to the agent; maps every failure to exit status 255.
    func withSession<T: Sendable>(_ body: @Sendable @escaping (AgentSession) async throws -> T) async throws -> T {
        guard let agent else {
            throw CLIError(
                "--agent ADDR (unix:PATH, vsock:CID:PORT or hvsock:PATH:PORT) or --node HOST:PORT is required")
        }
        let address = try AgentAddress(parsing: agent)
        var logger = Logger(label: "lqx")
        logger.logLevel = verbose ? .debug : .critical
        let configuration = BrokerConfiguration(operationTimeout: .milliseconds(Int64(replyTimeout * 1000)))
        let client = AgentClient(address: address, configuration: configuration, logger: logger)
        let timeout = Duration.milliseconds(Int64(connectTimeout * 1000))
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                try await client.run()
                return nil
            }
            group.addTask {
                let session = try await client.session(timeout: timeout)
                return try await body(session)
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let result { return result }
            }
            throw CLIError("the broker stopped")
        }
    }
}

/// Where cluster commands go: `--server` / `$LQX_SERVER`, `--token` / `$LQX_TOKEN`, `--ca`,
/// each overriding what `lqx login` saved.
struct ClusterOptions: ParsableArguments {
    @Option(
        name: .customLong("server"),
        help: """
            Control plane HOST:PORT or https://HOST:PORT; several replicas comma-separated, tried in \
            order when one cannot be reached (default: $LQX_SERVER, then what lqx login saved).
            """)
    var server: String?

    @Option(name: .customLong("token"), help: "API token (default: $LQX_TOKEN, then what lqx login saved).")
    var token: String?

    @Option(name: .customLong("ca"), help: "The cluster CA's PEM file (default: the one lqx login pinned).")
    var ca: String?

    @Option(name: .customLong("project"), help: "Project of the VMs named (default: the token's, else default).")
    var project: String?

    /// Whether a control plane is given or was saved by `lqx login`.
    var configured: Bool {
        #if NodeClient
            if server != nil { return true }
            if let env = ProcessInfo.processInfo.environment["LQX_SERVER"], !env.isEmpty { return true }
            return FileManager.default.fileExists(atPath: ClusterConfig.path)
        #else
            return false
        #endif
    }
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Runs a command body, printing errors as `lqx: message` and exiting 255.
func runReportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let exit as ExitCode {
        throw exit
    } catch let error as ValidationError {
        throw error
    } catch {
        reportError(error)
        throw ExitCode(Lqx.failure)
    }
}

/// Prints `lqx: error` on stderr, guest text escaped; nothing when a signal is ending lqx (the
/// error is then only the cancellation it caused).
func reportError(_ error: any Error) {
    guard Interrupts.shared.signal == nil else { return }
    FileHandle.standardError.write(Data("lqx: \(TerminalText.safe("\(error)"))\n".utf8))
}

/// Guest text made safe for a terminal.
enum TerminalText {
    /// `text` with C0 and C1 control characters and DEL escaped (`\x1b`, `\u{9b}`). Newlines and
    /// tabs are escaped too, so one guest string stays one line and one column.
    static func safe(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0x00..<0x20, 0x7F:
                out += "\\x" + String(format: "%02x", scalar.value)
            case 0x80..<0xA0:
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text
    case json
}
