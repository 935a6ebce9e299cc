import ControlPlane
import Foundation
import LQXModel
import LQXTestSupport

/// A synthetic cluster shaped like a real one: nodes of three sizes in three zones, some with a
/// GPU label and taint, some cordoned; VMs of common sizes, some in anti-affinity groups.
enum Fixture {
    static let zones = ["a", "b", "c"]
    static let sizes: [(cpus: Int, memoryMiB: Int)] = [(1, 1024), (2, 2048), (2, 4096), (4, 8192), (8, 16384)]

    static func node(_ index: Int, random: inout SplitMix64, now: Int64) -> Node {
        let (cpus, memory) = [(32, 131_072), (64, 262_144), (128, 524_288)][index % 3]
        var labels = ["zone": zones[index % zones.count], "rack": "r\(index / 40)"]
        var taints: [NodeSpec.Taint] = []
        if index % 20 == 0 {
            labels["gpu"] = "true"
            taints.append(NodeSpec.Taint(key: "gpu", value: "true", effect: .noSchedule))
        }
        let spec = NodeSpec(
            labels: (try? Labels(labels)) ?? [:], taints: taints, schedulable: index % 50 != 7, cpuOvercommit: 4,
            memoryOvercommit: 1)
        return Node(
            meta: ObjectMeta(id: "node-\(index)", name: String(format: "node-%05d", index), createdUnixMs: now),
            spec: spec,
            status: Node.Status(
                phase: .ready, address: "10.0.\(index / 250).\(index % 250):8443",
                capacity: Node.Resources(cpus: cpus, memoryMiB: memory)))
    }

    static func request(_ index: Int, random: inout SplitMix64) -> SchedulingRequest {
        SchedulingRequest(placement(index, random: &random), size: sizes[Int(random.next() % UInt64(sizes.count))])
    }

    static func placement(_ index: Int, random: inout SplitMix64) -> Placement {
        var placement = Placement()
        switch random.next() % 10 {
        case 0: placement.nodeSelector = ["zone": zones[Int(random.next() % 3)]]
        case 1: placement.antiAffinity = [Placement.GroupRule(group: "db-\(random.next() % 200)")]
        case 2: placement.antiAffinity = [Placement.GroupRule(group: "web-\(random.next() % 50)", hard: false)]
        case 3: placement.tolerations = [Placement.Toleration(key: "gpu", value: "true", effect: .noSchedule)]
        default: break
        }
        return placement
    }

    static func vm(_ index: Int, project: String, node: String, random: inout SplitMix64, now: Int64) -> VirtualMachine
    {
        let size = sizes[Int(random.next() % UInt64(sizes.count))]
        let name = String(format: "vm-%06d", index)
        var vm = VirtualMachine(
            meta: ObjectMeta(id: "vm-\(index)", name: name, project: project, createdUnixMs: now),
            spec: spec(name, size: size, placement: placement(index, random: &random)))
        vm.status.nodeID = node
        vm.status.phase = node.isEmpty ? .pending : .running
        vm.status.epoch = node.isEmpty ? 0 : 1
        return vm
    }

    static func spec(_ name: String, size: (cpus: Int, memoryMiB: Int), placement: Placement = Placement())
        -> VirtualMachine.Spec
    {
        VirtualMachine.Spec(
            machine: VMSpec(
                name: name, vcpus: size.cpus, memoryMiB: size.memoryMiB,
                boot: .kernel(path: "/var/lib/limiquantix/vmlinuz", initrd: nil, cmdline: "console=ttyS0")),
            placement: placement)
    }
}

extension SchedulingRequest {
    init(_ placement: Placement, size: (cpus: Int, memoryMiB: Int)) {
        self.init(cpus: size.cpus, memoryMiB: size.memoryMiB, placement: placement)
    }
}

/// Latency samples and their percentiles.
struct Samples {
    private(set) var values: [Double] = []
    mutating func add(_ seconds: Double) { values.append(seconds) }
    mutating func add(_ duration: Duration) { values.append(duration.seconds) }

    func percentile(_ p: Double) -> Double {
        guard !values.isEmpty else { return .nan }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)]
    }

    var count: Int { values.count }
    var mean: Double { values.reduce(0, +) / Double(max(1, values.count)) }

    /// "p50 X, p99 Y, max Z" in milliseconds.
    var summary: String {
        String(
            format: "p50 %.3f ms, p99 %.3f ms, max %.3f ms (n=%d)", percentile(0.5) * 1000, percentile(0.99) * 1000,
            percentile(1) * 1000, count)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// Times `body`.
func timed<T>(_ body: () async throws -> T) async rethrows -> (T, Duration) {
    let clock = ContinuousClock()
    let start = clock.now
    let value = try await body()
    return (value, clock.now - start)
}

/// Prints a line at once (results are piped to tee).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

extension Samples {
    /// Adds every sample of `other`.
    mutating func merge(_ other: Samples) {
        for value in other.values { add(value) }
    }
}
