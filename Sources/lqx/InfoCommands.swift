import AgentProtocol
import ArgumentParser
import Foundation
import HostBroker
import SwiftProtobuf

struct Info: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the agent's version and the guest's OS, kernel and uptime.")
    @OptionGroup var options: AgentOptions
    @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

    func run() async throws {
        try await runReportingErrors {
            let info = try await options.withSession { try await $0.info() }
            if output == .json {
                print(try JSONOutput.render(info))
                return
            }
            let safe = TerminalText.safe
            print("agent:     lqx-agent \(safe(info.agentVersion)) (protocol \(info.protocolVersion))")
            print("os:        \(safe(info.os.prettyName))")
            print("kernel:    \(safe(info.kernelRelease)) \(safe(info.machine))")
            print("hostname:  \(safe(info.hostname))")
            print("boot id:   \(safe(info.bootID))")
            print("uptime:    \(formatDuration(info.uptimeSeconds))")
            print("features:  \(info.capabilities.map(safe).joined(separator: " "))")
        }
    }
}

struct Ping: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure the round trip to the agent.")
    @OptionGroup var options: AgentOptions
    @Option(name: .shortAndLong, help: "Number of pings.") var count: Int = 1

    func run() async throws {
        try await runReportingErrors {
            let count = max(1, self.count)
            let times = try await options.withSession { session in
                var times: [Duration] = []
                for _ in 0..<count { times.append(try await session.ping()) }
                return times
            }
            for (index, time) in times.enumerated() {
                print("pong from agent: seq=\(index + 1) time=\(formatMillis(time))")
            }
        }
    }
}

struct Shutdown: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Power off the guest (or reboot / halt) through the agent.",
        discussion:
            "The agent acknowledges, syncs file systems, then uses systemd when present, else the reboot syscall.")
    @OptionGroup var options: AgentOptions
    @Flag(help: "Reboot instead of powering off.") var reboot = false
    @Flag(help: "Halt instead of powering off.") var halt = false
    @Option(help: "Seconds to wait before acting.") var delay: UInt32 = 0

    func validate() throws {
        if reboot && halt { throw ValidationError("--reboot and --halt exclude each other") }
    }

    func run() async throws {
        try await runReportingErrors {
            let action: PowerAction = reboot ? .reboot : (halt ? .halt : .poweroff)
            let accepted = try await options.withSession { try await $0.shutdown(action, delay: delay) }
            let verb = action == .reboot ? "reboot" : (action == .halt ? "halt" : "poweroff")
            print(
                "\(verb) accepted by the agent (method \(accepted.method)\(accepted.delaySeconds > 0 ? ", in \(accepted.delaySeconds) s" : ""))"
            )
        }
    }
}

func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0, seconds < 1e12 else { return "?" }
    let s = Int(seconds)
    let d = s / 86400, h = (s % 86400) / 3600, m = (s % 3600) / 60
    return d > 0 ? "\(d)d \(h)h \(m)m" : (h > 0 ? "\(h)h \(m)m" : "\(m)m \(s % 60)s")
}

func formatMillis(_ duration: Duration) -> String {
    let ms = Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    return String(format: "%.3f ms", ms)
}

func formatBytes(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}
