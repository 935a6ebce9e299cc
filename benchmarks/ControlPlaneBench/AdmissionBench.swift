import ArgumentParser
import ControlPlane
import LQXModel
import LQXTestSupport

/// HA admission control decision time: "tolerate k host failures" checked for one more HA VM
/// on clusters of N nodes (benchmarks/controlplane.sh, part `admission`).
struct AdmissionBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admission",
        abstract: "Admission control (tolerate k failures) p50/p99 at N nodes, roomy and nearly full.")

    @Option(help: "Cluster sizes, comma-separated.") var nodes: String = "1000"
    @Option(help: "Host failures tolerated.") var tolerate = 2
    @Option(help: "VMs per node (half of them HA, with the fixture's selectors and anti-affinity).")
    var vmsPerNode = 10
    @Option(help: "Decisions measured per cluster.") var decisions = 200

    func run() async throws {
        say("| nodes | VMs (HA) | k | cluster | decision p50 / p99 | sets looked at / packed | answer |")
        say("|---:|---:|---:|---|---|---|---|")
        for count in nodes.split(separator: ",").compactMap({ Int($0) }) {
            for fill in [Fill.roomy, .tight] {
                var random = SplitMix64(seed: 7)
                let nodeObjects = (0..<count).map { Fixture.node($0, random: &random, now: 0) }
                var vms = (0..<count * vmsPerNode).map { index -> VirtualMachine in
                    var vm = Fixture.vm(
                        index, project: "default", node: "node-\(index / vmsPerNode)", random: &random, now: 0)
                    vm.spec.ha = HAPolicy(
                        enabled: index % 2 == 0, priority: HAPolicy.Priority.allCases[index % 5])
                    return vm
                }
                if fill == .tight { vms += filler(nodeObjects, vms, random: &random) }
                let admission = HAAdmission()
                var samples = Samples()
                var work = HAAdmission.Work()
                var answer = "admitted"
                for index in 0..<decisions {
                    var candidate = Fixture.vm(
                        count * vmsPerNode + index, project: "default", node: "node-\(index % count)",
                        random: &random, now: 0)
                    candidate.spec.ha = HAPolicy(enabled: true)
                    let all = vms + [candidate]
                    var one = HAAdmission.Work()
                    let (refusal, time) = await timed {
                        admission.check(nodes: nodeObjects, vms: all, tolerate: tolerate, work: &one)
                    }
                    samples.add(time)
                    work.setsVisited += one.setsVisited
                    work.setsPacked += one.setsPacked
                    if let refusal { answer = "refused: \(refusal.failedNodes.joined(separator: ", "))" }
                }
                let ha = vms.filter(\.spec.ha.enabled).count
                say(
                    "| \(count) | \(vms.count) (\(ha)) | \(tolerate) | \(fill.rawValue) | \(samples.summary) | \(work.setsVisited / decisions) / \(work.setsPacked / decisions) | \(answer) |"
                )
            }
        }
    }

    enum Fill: String { case roomy = "roomy (fixture)", tight = "memory ~90 % allocated (non-HA filler)" }

    /// Non-HA VMs that bring every node to about 90 % of its memory.
    func filler(_ nodes: [Node], _ vms: [VirtualMachine], random: inout SplitMix64) -> [VirtualMachine] {
        var used: [String: Int] = [:]
        for vm in vms { used[vm.status.nodeID, default: 0] += vm.spec.machine.memoryMiB }
        var out: [VirtualMachine] = []
        for node in nodes {
            let room = node.allocatable.memoryMiB * 9 / 10 - used[node.meta.id, default: 0]
            guard room > 0 else { continue }
            var vm = Fixture.vm(1_000_000 + out.count, project: "default", node: node.meta.id, random: &random, now: 0)
            vm.spec = Fixture.spec(vm.meta.name, size: (1, room))
            vm.spec.ha = HAPolicy(enabled: false)
            out.append(vm)
        }
        return out
    }
}
