import AgentProtocol
import Glibc
import NIOCore

extension AgentCore {
    func info() -> AgentInfo {
        var uts = utsname()
        uname(&uts)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
        }
        let osRelease = Self.parseOSRelease(
            (try? String(contentsOfFile: "/etc/os-release", encoding: .utf8))
                ?? (try? String(contentsOfFile: "/usr/lib/os-release", encoding: .utf8)) ?? "")
        let bootID =
            (try? String(contentsOfFile: configuration.procRoot + "/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingSpaces() ?? ""
        return .with {
            $0.agentVersion = AgentConfiguration.agentVersion
            $0.protocolVersion = FrameFormat.protocolVersion
            $0.os = .with { os in
                os.id = osRelease["ID"] ?? "linux"
                os.name = osRelease["NAME"] ?? "Linux"
                os.version = osRelease["VERSION"] ?? ""
                os.versionID = osRelease["VERSION_ID"] ?? ""
                os.prettyName = osRelease["PRETTY_NAME"] ?? osRelease["NAME"] ?? "Linux"
            }
            $0.kernelRelease = field(uts.release)
            $0.kernelVersion = field(uts.version)
            $0.machine = field(uts.machine)
            $0.hostname = field(uts.nodename)
            $0.bootID = bootID
            $0.uptimeSeconds = sampler.uptimeSeconds()
            $0.capabilities = Self.capabilities
            $0.agentInstance = instance
        }
    }

    /// Parses os-release(5): KEY=value lines, values optionally quoted.
    static func parseOSRelease(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let trimmed = line.trimmingSpaces()
            guard !trimmed.hasPrefix("#"), let eq = trimmed.firstIndex(of: "=") else { continue }
            let key = String(trimmed[..<eq])
            var value = String(trimmed[trimmed.index(after: eq)...])
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
                value = value.replacing("\\\"", with: "\"").replacing("\\\\", with: "\\")
            }
            result[key] = value
        }
        return result
    }

    func telemetry(_ request: Limiquantix_Agent_V1_TelemetryRequest, context: StreamContext) async throws {
        if request.intervalMs == 0 {
            let sample = try await sample(previous: nil)
            try await context.reply(.with { $0.telemetry = sample.message.wire }, end: true)
            return
        }
        let interval = UInt64(max(request.intervalMs, 100)) * 1_000_000
        var previous: (CPUTimes, [CPUTimes])?
        while !Task.isCancelled {
            let sample = try await sample(previous: previous)
            previous = (sample.snapshot.cpuTotal, sample.snapshot.cpuPerCPU)
            try await context.reply(.with { $0.telemetry = sample.message.wire })
            try await Task.sleep(nanoseconds: interval)
        }
        throw AgentError(.cancelled, "telemetry subscription ended")
    }

    /// Reads one sample. CPU percentages are deltas against `previous`, else against the last
    /// one-shot sample when it is at least 100 ms old, else over a fresh 200 ms window.
    func sample(previous: (CPUTimes, [CPUTimes])?) async throws -> (
        snapshot: ProcSampler.Snapshot, message: TelemetrySample
    ) {
        let sampler = self.sampler
        var baseline = previous
        if baseline == nil {
            let stored = cpuBaseline.withLock { $0 }
            if let stored, NIODeadline.now() - stored.at >= .milliseconds(100) {
                baseline = (stored.total, stored.perCPU)
            } else {
                let first = try await blocking { try sampler.readCPUTimes() }
                try await Task.sleep(nanoseconds: 200_000_000)
                baseline = (first.total, first.perCPU)
            }
        }
        let snapshot = try await blocking { try sampler.snapshot() }
        cpuBaseline.withLock { $0 = (snapshot.cpuTotal, snapshot.cpuPerCPU, .now()) }
        let (baseTotal, basePer) = baseline!
        let message = TelemetrySample.with { m in
            m.timestampMs = Int64(snapshot.timestamp.timeIntervalSince1970 * 1000)
            m.cpuCount = UInt32(snapshot.cpuPerCPU.count)
            m.cpu = .with {
                $0.totalPercent = ProcSampler.cpuPercent(from: baseTotal, to: snapshot.cpuTotal)
                $0.perCpuPercent = snapshot.cpuPerCPU.enumerated().map { index, now in
                    index < basePer.count ? ProcSampler.cpuPercent(from: basePer[index], to: now) : 0
                }
            }
            m.memory = snapshot.memory
            m.load = snapshot.load
            m.filesystems = Array(snapshot.filesystems.prefix(64))
            m.disks = Array(snapshot.disks.prefix(64))
            m.interfaces = snapshot.interfaces.prefix(64).map { interface in
                var bounded = interface
                bounded.addresses = Array(interface.addresses.prefix(16))
                return bounded
            }
            m.processCount = snapshot.processCount
            m.uptimeSeconds = snapshot.uptimeSeconds
        }
        return (snapshot, message)
    }
}
