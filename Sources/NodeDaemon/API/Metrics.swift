import AgentProtocol
import Foundation
import HostBroker
import LQXModel
import NodeCore
import POSIXSupport

/// Prometheus text exposition (format 0.0.4) of the node and every VM's in-guest telemetry,
/// rendered at scrape time from the node's current state (VMs come and go; nothing to unregister).
///
/// Guest-reported strings (mount points, interface and device names) become label values: they
/// are escaped, cut to 128 bytes, and at most `maxSeriesPerKind` of each kind are exported per VM,
/// so a hostile guest cannot break the exposition or flood the scraper.
public struct MetricsExposition {
    /// The most filesystems, disks or network interfaces exported per VM (each kind counted apart).
    public static let maxSeriesPerKind = 32
    /// The most bytes of a label value that are kept; the rest is cut.
    public static let maxLabelBytes = 128

    private var families: [String: (help: String, type: String, samples: [String])] = [:]
    private var order: [String] = []

    /// Creates an empty exposition.
    public init() {}

    /// Adds a sample with `labels` and `value` to the metric family `name`; the family's first
    /// sample sets its `type` (`gauge`, `counter`) and `help`. Label values are escaped and cut.
    public mutating func add(
        _ name: String, _ type: String, _ help: String, _ labels: KeyValuePairs<String, String>, _ value: Double
    ) {
        if families[name] == nil {
            families[name] = (help, type, [])
            order.append(name)
        }
        let rendered = labels.map { "\($0.key)=\"\(Self.escape($0.value))\"" }.joined(separator: ",")
        families[name]!.samples.append("\(name){\(rendered)} \(Self.format(value))")
    }

    /// The exposition: each family's HELP and TYPE lines, then its samples, in the order the
    /// families were first added.
    public var text: String {
        var out = ""
        for name in order {
            let family = families[name]!
            out += "# HELP \(name) \(family.help)\n# TYPE \(name) \(family.type)\n"
            for sample in family.samples { out += sample + "\n" }
        }
        return out
    }

    static func escape(_ value: String) -> String {
        // A cut inside a UTF-8 sequence decodes as U+FFFD.
        let cut = String(decoding: value.utf8.prefix(maxLabelBytes), as: UTF8.self)
        var out = ""
        for scalar in cut.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F { out += "?" } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out
    }

    static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}

extension MetricsExposition {
    /// Everything the node exports.
    static func node(name: String, manager: VMManager, vms: [VMStatus], procRoot: String = "/proc") -> String {
        var m = MetricsExposition()
        let node = name
        m.add(
            "lqx_node_info", "gauge", "The node daemon (value 1).",
            ["node": node, "version": LimiquantixVersion.current], 1)
        let counts = manager.counts()
        m.add("lqx_node_vms", "gauge", "VMs defined on this node.", ["node": node], Double(vms.count))
        m.add(
            "lqx_node_vms_running", "gauge", "VMs running on this node.", ["node": node],
            Double(vms.filter { $0.state == .running }.count))
        m.add(
            "lqx_node_agents_connected", "gauge", "VMs whose agent has a session open.", ["node": node],
            Double(counts.agentsConnected))
        HostMetrics.read(procRoot: procRoot).add(to: &m, node: node)

        for vm in vms {
            let labels: KeyValuePairs<String, String> = ["node": node, "vm": vm.name]
            m.add(
                "lqx_vm_running", "gauge", "1 while the VM runs, else 0.", labels, vm.state == .running ? 1 : 0)
            m.add(
                "lqx_vm_agent_connected", "gauge", "1 while the VM's agent has a session open.", labels,
                manager.agentConnected(vm.name) ? 1 : 0)
            if let agent = manager.agent(vm.name) {
                m.add(
                    "lqx_vm_agent_sessions_total", "counter",
                    "Agent sessions established since the VM's broker started (reconnections add one).", labels,
                    Double(agent.sessionsEstablished))
            }
        }
        let now = Date().timeIntervalSince1970
        for telemetry in manager.allTelemetry() {
            let s = telemetry.sample, vm = telemetry.vm
            let labels: KeyValuePairs<String, String> = ["node": node, "vm": vm]
            m.add(
                "lqx_guest_telemetry_age_seconds", "gauge", "Seconds since the node received the VM's last sample.",
                labels, max(0, now - Double(telemetry.receivedUnixMilliseconds) / 1000))
            m.add(
                "lqx_guest_cpu_percent", "gauge", "Guest CPU busy, percent of all its CPUs.", labels, s.cpu.totalPercent
            )
            m.add("lqx_guest_cpus", "gauge", "CPUs the guest sees.", labels, Double(s.cpuCount))
            m.add("lqx_guest_memory_total_bytes", "gauge", "Guest MemTotal.", labels, Double(s.memory.totalBytes))
            m.add(
                "lqx_guest_memory_available_bytes", "gauge", "Guest MemAvailable.", labels,
                Double(s.memory.availableBytes))
            m.add("lqx_guest_load1", "gauge", "Guest 1-minute load average.", labels, s.load.one)
            m.add("lqx_guest_processes", "gauge", "Processes in the guest.", labels, Double(s.processCount))
            m.add("lqx_guest_uptime_seconds", "gauge", "Guest uptime.", labels, s.uptimeSeconds)
            for fs in s.filesystems.prefix(maxSeriesPerKind) {
                let l: KeyValuePairs<String, String> = ["node": node, "vm": vm, "mountpoint": fs.mountPoint]
                m.add("lqx_guest_filesystem_size_bytes", "gauge", "Guest filesystem size.", l, Double(fs.totalBytes))
                m.add(
                    "lqx_guest_filesystem_used_bytes", "gauge", "Guest filesystem bytes used.", l, Double(fs.usedBytes))
            }
            for disk in s.disks.prefix(maxSeriesPerKind) {
                let l: KeyValuePairs<String, String> = ["node": node, "vm": vm, "device": disk.name]
                m.add(
                    "lqx_guest_disk_read_bytes_total", "counter", "Bytes read by a guest disk.", l,
                    Double(disk.readBytes))
                m.add(
                    "lqx_guest_disk_written_bytes_total", "counter", "Bytes written by a guest disk.", l,
                    Double(disk.writtenBytes))
            }
            for nic in s.interfaces.prefix(maxSeriesPerKind) {
                let l: KeyValuePairs<String, String> = ["node": node, "vm": vm, "interface": nic.name]
                m.add(
                    "lqx_guest_network_receive_bytes_total", "counter", "Bytes received by a guest interface.", l,
                    Double(nic.rxBytes))
                m.add(
                    "lqx_guest_network_transmit_bytes_total", "counter", "Bytes sent by a guest interface.", l,
                    Double(nic.txBytes))
            }
        }
        return m.text
    }
}

/// The host's own numbers and the daemon process's, from /proc.
struct HostMetrics {
    var cpuSeconds: [(mode: String, seconds: Double)] = []
    var memoryTotal: Double = 0
    var memoryAvailable: Double = 0
    var load1: Double = 0
    var processResident: Double = 0
    var processCPUSeconds: Double = 0

    static func read(procRoot: String) -> HostMetrics {
        var h = HostMetrics()
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        if let stat = Self.file("\(procRoot)/stat"), let cpu = stat.split(separator: "\n").first,
            cpu.hasPrefix("cpu ")
        {
            let fields = cpu.split(separator: " ").dropFirst().compactMap { Double($0) }
            let modes = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
            for (index, mode) in modes.enumerated() where index < fields.count {
                h.cpuSeconds.append((mode, fields[index] / ticks))
            }
        }
        if let meminfo = Self.file("\(procRoot)/meminfo") {
            let values = ProcMeminfo.parse(meminfo)
            if let total = values["MemTotal"] { h.memoryTotal = Double(total) }
            if let available = values["MemAvailable"] { h.memoryAvailable = Double(available) }
        }
        if let load = Self.file("\(procRoot)/loadavg"), let first = load.split(separator: " ").first {
            h.load1 = Double(first) ?? 0
        }
        if let stat = Self.file("\(procRoot)/self/stat"), let close = stat.lastIndex(of: ")") {
            // Fields after the command name: state is field 3; utime 14, stime 15, rss 24.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 22 {
                h.processCPUSeconds = ((Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)) / ticks
                h.processResident = (Double(fields[21]) ?? 0) * Double(sysconf(Int32(_SC_PAGESIZE)))
            }
        }
        return h
    }

    static func file(_ path: String) -> String? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        return (try? handle.readToEnd()).map { String(decoding: $0, as: UTF8.self) }
    }

    func add(to m: inout MetricsExposition, node: String) {
        for (mode, seconds) in cpuSeconds {
            m.add(
                "lqx_node_cpu_seconds_total", "counter", "Host CPU time by mode, all CPUs.",
                ["node": node, "mode": mode], seconds)
        }
        m.add("lqx_node_memory_total_bytes", "gauge", "Host MemTotal.", ["node": node], memoryTotal)
        m.add("lqx_node_memory_available_bytes", "gauge", "Host MemAvailable.", ["node": node], memoryAvailable)
        m.add("lqx_node_load1", "gauge", "Host 1-minute load average.", ["node": node], load1)
        m.add(
            "lqx_node_daemon_resident_bytes", "gauge", "Resident memory of lqx-node.", ["node": node], processResident)
        m.add(
            "lqx_node_daemon_cpu_seconds_total", "counter", "CPU time used by lqx-node.", ["node": node],
            processCPUSeconds)
    }
}
