import AgentProtocol
import Foundation

/// The `-o json` documents of `info` and `metrics`.
///
/// Every field is always present (protobuf's JSON mapping leaves out zero values, which tools
/// reading the output would have to know to default); names are the schema's snake_case field
/// names and 64-bit integers are JSON numbers.
enum JSONOutput {
    static func render(_ info: AgentInfo) throws -> String {
        try encode(
            InfoDocument(
                agent_version: info.agentVersion, protocol_version: info.protocolVersion,
                os: .init(
                    id: info.os.id, name: info.os.name, version: info.os.version, version_id: info.os.versionID,
                    pretty_name: info.os.prettyName),
                kernel_release: info.kernelRelease, kernel_version: info.kernelVersion, machine: info.machine,
                hostname: info.hostname, boot_id: info.bootID, uptime_seconds: JSONNumber(info.uptimeSeconds),
                capabilities: info.capabilities, agent_instance: info.agentInstance))
    }

    static func render(_ sample: TelemetrySample) throws -> String {
        let m = sample.memory, l = sample.load
        return try encode(
            SampleDocument(
                timestamp_ms: sample.timestampMs,
                cpu: .init(
                    total_percent: JSONNumber(sample.cpu.totalPercent),
                    per_cpu_percent: sample.cpu.perCpuPercent.map(JSONNumber.init)),
                memory: .init(
                    total_bytes: m.totalBytes, available_bytes: m.availableBytes, free_bytes: m.freeBytes,
                    buffers_bytes: m.buffersBytes, cached_bytes: m.cachedBytes, swap_total_bytes: m.swapTotalBytes,
                    swap_free_bytes: m.swapFreeBytes),
                load: .init(
                    one: JSONNumber(l.one), five: JSONNumber(l.five), fifteen: JSONNumber(l.fifteen),
                    runnable: l.runnable, total: l.total),
                filesystems: sample.filesystems.map {
                    .init(
                        mount_point: $0.mountPoint, device: $0.device, type: $0.type, total_bytes: $0.totalBytes,
                        used_bytes: $0.usedBytes, free_bytes: $0.freeBytes, total_inodes: $0.totalInodes,
                        free_inodes: $0.freeInodes)
                },
                disks: sample.disks.map {
                    .init(
                        name: $0.name, reads_completed: $0.readsCompleted, read_bytes: $0.readBytes,
                        writes_completed: $0.writesCompleted, written_bytes: $0.writtenBytes, io_time_ms: $0.ioTimeMs)
                },
                interfaces: sample.interfaces.map {
                    .init(
                        name: $0.name, rx_bytes: $0.rxBytes, rx_packets: $0.rxPackets, rx_errors: $0.rxErrors,
                        rx_dropped: $0.rxDropped, tx_bytes: $0.txBytes, tx_packets: $0.txPackets,
                        tx_errors: $0.txErrors, tx_dropped: $0.txDropped, addresses: $0.addresses,
                        mac_address: $0.macAddress, up: $0.up)
                },
                process_count: sample.processCount, uptime_seconds: JSONNumber(sample.uptimeSeconds),
                cpu_count: sample.cpuCount))
    }

    /// A guest's floating-point number: JSON has no NaN or infinity, so those are `null` (the key
    /// stays present), never an encoding failure.
    struct JSONNumber: Encodable {
        var value: Double
        init(_ value: Double) { self.value = value }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            if value.isFinite { try container.encode(value) } else { try container.encodeNil() }
        }
    }

    private static func encode(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    // Property names are the JSON keys (the schema's field names).
    // swift-format-ignore: AlwaysUseLowerCamelCase
    private struct InfoDocument: Encodable {
        struct OS: Encodable {
            var id, name, version, version_id, pretty_name: String
        }
        var agent_version: String
        var protocol_version: UInt32
        var os: OS
        var kernel_release, kernel_version, machine, hostname, boot_id: String
        var uptime_seconds: JSONNumber
        var capabilities: [String]
        var agent_instance: UInt64
    }

    // swift-format-ignore: AlwaysUseLowerCamelCase
    private struct SampleDocument: Encodable {
        struct CPU: Encodable {
            var total_percent: JSONNumber
            var per_cpu_percent: [JSONNumber]
        }
        struct Memory: Encodable {
            var total_bytes, available_bytes, free_bytes, buffers_bytes, cached_bytes, swap_total_bytes,
                swap_free_bytes: UInt64
        }
        struct Load: Encodable {
            var one, five, fifteen: JSONNumber
            var runnable, total: UInt32
        }
        struct Filesystem: Encodable {
            var mount_point, device, type: String
            var total_bytes, used_bytes, free_bytes, total_inodes, free_inodes: UInt64
        }
        struct Disk: Encodable {
            var name: String
            var reads_completed, read_bytes, writes_completed, written_bytes, io_time_ms: UInt64
        }
        struct Interface: Encodable {
            var name: String
            var rx_bytes, rx_packets, rx_errors, rx_dropped, tx_bytes, tx_packets, tx_errors, tx_dropped: UInt64
            var addresses: [String]
            var mac_address: String
            var up: Bool
        }
        var timestamp_ms: Int64
        var cpu: CPU
        var memory: Memory
        var load: Load
        var filesystems: [Filesystem]
        var disks: [Disk]
        var interfaces: [Interface]
        var process_count: UInt32
        var uptime_seconds: JSONNumber
        var cpu_count: UInt32
    }
}
