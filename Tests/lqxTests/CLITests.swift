import AgentProtocol
import AgentTestSupport
import Foundation
import GuestAgent
import LQXTestSupport
import Testing

@testable import HostBroker

/// Runs the built `lqx` binary (the exact command shapes other tools depend on).
enum LqxCLI {
    static let binary = Command.binary("lqx")

    static func run(_ arguments: [String], stdin: String? = nil) throws -> CommandResult {
        try Command.run(binary, arguments, stdin: stdin)
    }
}

@Suite("lqx CLI against a live agent", .enabled(if: FileManager.default.isExecutableFile(atPath: LqxCLI.binary)))
struct CLITests {
    @Test("exit status: the remote code, 128+N for a signal, 255 for lqx's own errors")
    func exitStatuses() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        let agentArgument = "unix:\(socket)"
        let (three, signal, missing, noAgent, echo, timeout) = try await withRunningAgent(socket: socket) {
            try await onThread {
                let three = try LqxCLI.run([
                    "--agent", agentArgument, "exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                ])
                let signal = try LqxCLI.run(["--agent", agentArgument, "exec", "--", "sh", "-c", "kill -TERM $$"])
                let missing = try LqxCLI.run(["--agent", agentArgument, "exec", "--", "/no/such/program"])
                let noAgent = try LqxCLI.run(["--agent", "unix:\(socket).missing", "--connect-timeout", "1", "ping"])
                let echo = try LqxCLI.run(
                    [
                        "--agent", agentArgument, "exec", "-e", "A=b c", "-w", "/tmp", "--", "sh", "-c",
                        "cat; echo $A; pwd",
                    ], stdin: "piped\n")
                let timeout = try LqxCLI.run([
                    "--agent", agentArgument, "exec", "--timeout", "0.3", "--", "sleep", "30",
                ])
                return (three, signal, missing, noAgent, echo, timeout)
            }
        }
        do {
            #expect(three.status == 3)
            #expect(three.stdout == "out\n")
            #expect(three.stderr == "err\n")
            #expect(signal.status == 128 + 15)
            #expect(missing.status == 255)
            #expect(missing.stderr.hasPrefix("lqx: "))
            #expect(missing.stderr.contains("/no/such/program"))
            #expect(noAgent.status == 255)
            #expect(noAgent.stderr.contains("no session with the agent"))
            #expect(echo.status == 0)
            #expect(echo.stdout == "piped\nb c\n/tmp\n")
            #expect(timeout.status == 128 + 9)
            #expect(timeout.stderr.contains("timed out"))
        }
    }

    @Test("info and metrics as JSON, cp both ways, shutdown acknowledgement")
    func commands() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let socket = dir.file("agent.sock")
        let agentArgument = "unix:\(socket)"
        let payload = String(repeating: "limiquantix ", count: 100_000)
        try payload.write(toFile: dir.file("local.txt"), atomically: true, encoding: .utf8)
        let results = try await withRunningAgent(socket: socket) {
            try await onThread {
                [
                    try LqxCLI.run(["--agent", agentArgument, "info", "-o", "json"]),
                    try LqxCLI.run(["--agent", agentArgument, "metrics", "-o", "json"]),
                    try LqxCLI.run([
                        "--agent", agentArgument, "cp", dir.file("local.txt"), ":\(dir.file("remote/"))", "--parents",
                    ]),
                    try LqxCLI.run(["--agent", agentArgument, "cp", ":\(dir.file("local.txt"))", dir.file("back.txt")]),
                    try LqxCLI.run(["--agent", agentArgument, "shutdown", "--reboot", "--delay", "5"]),
                    try LqxCLI.run(["--agent", agentArgument, "cp", dir.file("local.txt"), dir.file("x")]),
                ]
            }
        }
        let info = try JSONSerialization.jsonObject(with: Data(results[0].stdout.utf8)) as? [String: Any]
        #expect(info?["agent_version"] as? String == AgentConfiguration.agentVersion)
        let metrics = try JSONSerialization.jsonObject(with: Data(results[1].stdout.utf8)) as? [String: Any]
        #expect((metrics?["memory"] as? [String: Any])?["total_bytes"] != nil)
        // Zero values are printed too (protobuf's JSON mapping would drop them): loopback never
        // has receive errors, and every memory field is there.
        let interfaces = metrics?["interfaces"] as? [[String: Any]] ?? []
        #expect(interfaces.first { $0["name"] as? String == "lo" }?["rx_errors"] as? Int == 0)
        #expect(
            Set(((metrics?["memory"] as? [String: Any]) ?? [:]).keys) == [
                "total_bytes", "available_bytes", "free_bytes", "buffers_bytes", "cached_bytes", "swap_total_bytes",
                "swap_free_bytes",
            ])
        #expect(info?["capabilities"] is [String])
        #expect(results[2].status == 0, "\(results[2].stderr)")
        #expect(try String(contentsOfFile: dir.file("remote/local.txt"), encoding: .utf8) == payload)
        #expect(results[3].status == 0, "\(results[3].stderr)")
        #expect(try String(contentsOfFile: dir.file("back.txt"), encoding: .utf8) == payload)
        #expect(results[4].status == 0)
        #expect(results[4].stdout.contains("reboot accepted"))
        #expect(results[5].status != 0)
        #expect(results[5].stderr.contains("exactly one of SOURCE and DESTINATION"))
    }
}
