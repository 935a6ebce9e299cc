import ControlPlane
import DequeModule
import LQXModel
import LQXServer
import LQXTypes
import Logging
import NodeAPI
import ServiceLifecycle
import Synchronization

/// Collects every VM's in-guest telemetry from the nodes: one stream per READY node
/// (`WatchAllTelemetry`), not a poll per VM. Keeps each VM's latest sample whole and a bounded
/// recent history of its summary figures (CPU, memory, load, processes, uptime): at most
/// `historyLength` samples and `retention` old, for VMs the store still has.
final class TelemetryCollector: Service, Sendable {
    /// One sample as the history keeps it.
    struct Point: Sendable {
        var receivedUnixMs: Int64
        var sample: Limiquantix_Types_V1_TelemetrySample
    }

    struct Latest: Sendable {
        var nodeID: String
        var point: Point
    }

    private struct State {
        var latest: [String: Latest] = [:]
        var history: [String: Deque<Point>] = [:]
        var following: Set<String> = []
    }

    let cluster: Cluster
    let nodes: NodeCalls
    let logger: Logger
    let historyLength: Int
    let retentionMs: Int64
    private let state = Mutex(State())

    init(
        cluster: Cluster, nodes: NodeCalls, historyLength: Int = 720, retention: Duration = .seconds(3600),
        logger: Logger
    ) {
        self.cluster = cluster
        self.nodes = nodes
        self.historyLength = historyLength
        self.retentionMs = retention.components.seconds * 1000
        self.logger = logger
    }

    /// Follows every READY node until graceful shutdown; a stream that ends or fails is opened
    /// again at the next check (every 2 s).
    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                while !Task.isCancelled {
                    for node in await self.check() {
                        group.addTask { await self.follow(node) }
                    }
                    try? await Task.sleep(for: .seconds(2))
                }
                group.cancelAll()
            }
        }
    }

    /// Drops what belongs to VMs the store no longer has; returns the READY nodes not followed yet.
    func check() async -> [Node] {
        guard let nodes = try? await cluster.repository.nodes(), let vms = try? await cluster.repository.vms() else {
            return []
        }
        let known = Set(vms.map(\.meta.id))
        return state.withLock { state -> [Node] in
            state.latest = state.latest.filter { known.contains($0.key) }
            state.history = state.history.filter { known.contains($0.key) }
            let ready = nodes.filter { $0.status.phase == .ready && !state.following.contains($0.meta.id) }
            for node in ready { state.following.insert(node.meta.id) }
            return ready
        }
    }

    func follow(_ node: Node) async {
        defer { _ = state.withLock { $0.following.remove(node.meta.id) } }
        do {
            try await nodes.with(node) { stub in
                try await stub.watchAllTelemetry(.init()) { response in
                    for try await telemetry in response.messages { self.record(telemetry, node: node.meta.id) }
                }
            }
        } catch {
            logger.debug("telemetry stream of node \(node.meta.name) ended: \(error.fullMessage)")
        }
        try? await Task.sleep(for: .seconds(1))
    }

    /// Keeps a sample of the VM whose node-side name (its id) it carries.
    func record(_ telemetry: Limiquantix_Node_V1_VMTelemetry, node: String) {
        var summary = Limiquantix_Types_V1_TelemetrySample()
        summary.timestampMs = telemetry.sample.timestampMs
        summary.cpu.totalPercent = telemetry.sample.cpu.totalPercent
        summary.memory = telemetry.sample.memory
        summary.load = telemetry.sample.load
        summary.processCount = telemetry.sample.processCount
        summary.uptimeSeconds = telemetry.sample.uptimeSeconds
        summary.cpuCount = telemetry.sample.cpuCount
        let limit = historyLength, oldest = telemetry.receivedUnixMs - retentionMs
        state.withLock { state in
            if let previous = state.latest[telemetry.vm], previous.point.receivedUnixMs >= telemetry.receivedUnixMs {
                return  // the same sample again after a reconnect
            }
            state.latest[telemetry.vm] = Latest(
                nodeID: node, point: Point(receivedUnixMs: telemetry.receivedUnixMs, sample: telemetry.sample))
            var history = state.history[telemetry.vm] ?? []
            history.append(Point(receivedUnixMs: telemetry.receivedUnixMs, sample: summary))
            while history.count > limit || (history.first.map { $0.receivedUnixMs < oldest } ?? false) {
                history.removeFirst()
            }
            state.history[telemetry.vm] = history
        }
    }

    /// The VM's latest sample (whole), if any arrived.
    func latest(_ vmID: String) -> Latest? { state.withLock { $0.latest[vmID] } }

    /// The VM's history since `sinceUnixMs` (summary figures), oldest first.
    func history(_ vmID: String, sinceUnixMs: Int64) -> [Point] {
        state.withLock { state in Array((state.history[vmID] ?? []).filter { $0.receivedUnixMs >= sinceUnixMs }) }
    }

    /// Every VM's latest sample.
    func allLatest() -> [String: Latest] { state.withLock { $0.latest } }
}
