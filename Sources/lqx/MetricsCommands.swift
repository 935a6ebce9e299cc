import AgentProtocol
import ArgumentParser
import Foundation
import HostBroker
import SwiftProtobuf

struct Metrics: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show one in-guest telemetry sample (through a node: the latest it collected from VM NAME).")
    @OptionGroup var options: AgentOptions
    @Argument(help: "VM name (with --node).") var vm: String?
    @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
    @Option(
        name: .customLong("since"),
        help: "Through a control plane: the history of the last 30s, 15m, 1h (CPU, memory, load, processes).")
    var since: String?

    func validate() throws {
        if !options.namesVMs, vm != nil {
            throw ValidationError("a VM name needs --node HOST:PORT or a control plane (lqx login, --server)")
        }
    }

    func run() async throws {
        if let route = try options.guestRoute() { return try await runThrough(route) }
        try await runReportingErrors {
            let sample = try await options.withSession { try await $0.telemetry() }
            if output == .json {
                print(try JSONOutput.render(sample))
            } else {
                print(render(sample), terminator: "")
            }
        }
    }
}

struct Top: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Live view of in-guest telemetry (Ctrl-C to quit).")
    @OptionGroup var options: AgentOptions
    @Argument(help: "VM name (through a node or the control plane).") var vm: String?
    @Option(help: "Seconds between samples (with --agent; a node sends them as it collects them).")
    var interval: Double = 2

    func run() async throws {
        if let route = try options.guestRoute() {
            guard let vm else { throw ValidationError("missing VM name: lqx top NAME") }
            return try await runThrough(route, vm: vm)
        }
        try await runReportingErrors {
            let every = Duration.milliseconds(Int64(max(interval, 0.1) * 1000))
            try await options.withSession { session in
                for try await sample in session.telemetry(every: every) {
                    FileHandle.standardOutput.write(Data(("\u{1B}[H\u{1B}[2J" + render(sample)).utf8))
                }
            }
        }
    }
}

func render(_ s: TelemetrySample) -> String {
    let safe = TerminalText.safe
    var out = ""
    let m = s.memory
    // Guest numbers go through interpolation (a u32 as `%d` would print 4294967295 as -1) and
    // guest strings through TerminalText.safe.
    out += String(format: "cpu   %5.1f%% of ", s.cpu.totalPercent) + "\(s.cpuCount) CPUs   "
    out += String(format: "load %.2f %.2f %.2f", s.load.one, s.load.five, s.load.fifteen)
    out += "   processes \(s.processCount)   uptime \(formatDuration(s.uptimeSeconds))\n"
    out += "      per CPU: " + s.cpu.perCpuPercent.map { String(format: "%.0f%%", $0) }.joined(separator: " ") + "\n"
    let used = m.totalBytes > m.availableBytes ? m.totalBytes - m.availableBytes : 0
    let swapUsed = m.swapTotalBytes > m.swapFreeBytes ? m.swapTotalBytes - m.swapFreeBytes : 0
    out +=
        "mem   \(formatBytes(used)) used of \(formatBytes(m.totalBytes)), \(formatBytes(m.availableBytes)) available"
    out +=
        m.swapTotalBytes > 0
        ? ", swap \(formatBytes(swapUsed)) of \(formatBytes(m.swapTotalBytes))\n" : "\n"
    out += "file systems\n"
    for fs in s.filesystems {
        out +=
            "  " + safe(fs.mountPoint).padding(toLength: 24, withPad: " ", startingAt: 0)
            + " \(safe(fs.type).padding(toLength: 8, withPad: " ", startingAt: 0)) \(formatBytes(fs.usedBytes)) used of \(formatBytes(fs.totalBytes))\n"
    }
    out += "disks\n"
    for d in s.disks {
        out +=
            "  " + safe(d.name).padding(toLength: 12, withPad: " ", startingAt: 0)
            + " read \(formatBytes(d.readBytes)), written \(formatBytes(d.writtenBytes))\n"
    }
    out += "network\n"
    for n in s.interfaces {
        out +=
            "  " + safe(n.name).padding(toLength: 12, withPad: " ", startingAt: 0) + (n.up ? " up  " : " down")
            + " rx \(formatBytes(n.rxBytes)) tx \(formatBytes(n.txBytes))  \(n.addresses.map(safe).joined(separator: " "))\n"
    }
    return out
}
