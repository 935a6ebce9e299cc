import ControlPlane
import LQXModel
import LQXTypes

/// The control plane's Prometheus exposition: nodes and VMs by phase, and per node what is
/// allocated of what it offers.
enum ControlPlaneMetrics {
    static func exposition(_ cluster: Cluster, telemetry: TelemetryCollector? = nil) async -> String {
        guard let nodes = try? await cluster.repository.nodes(), let vms = try? await cluster.repository.vms() else {
            return "# the store is not reachable\nlqx_controlplane_store_up 0\n"
        }
        var out =
            "# HELP lqx_controlplane_store_up Whether the store answered.\n# TYPE lqx_controlplane_store_up gauge\n"
        out += "lqx_controlplane_store_up 1\n"
        out += "# HELP lqx_controlplane_nodes Nodes by phase.\n# TYPE lqx_controlplane_nodes gauge\n"
        for phase in Node.Phase.allCases {
            out += "lqx_controlplane_nodes{phase=\"\(phase.rawValue)\"} \(nodes.count { $0.status.phase == phase })\n"
        }
        out += "# HELP lqx_controlplane_vms VMs by phase.\n# TYPE lqx_controlplane_vms gauge\n"
        for phase in VirtualMachine.Phase.allCases {
            out += "lqx_controlplane_vms{phase=\"\(phase.rawValue)\"} \(vms.count { $0.status.phase == phase })\n"
        }
        out += "# HELP lqx_controlplane_node_vcpus_allocated vCPUs of the VMs placed on a node.\n"
        out += "# TYPE lqx_controlplane_node_vcpus_allocated gauge\n"
        var allocated: [String: Int] = [:]
        for vm in vms {
            if !vm.status.nodeID.isEmpty { allocated[vm.status.nodeID, default: 0] += vm.spec.machine.vcpus }
        }
        for node in nodes {
            out +=
                "lqx_controlplane_node_vcpus_allocated{node=\"\(label(node.meta.name))\"} \(allocated[node.meta.id] ?? 0)\n"
        }
        if let telemetry { out += vmSeries(telemetry.allLatest(), vms: vms, nodes: nodes) }
        return out
    }

    /// The latest in-guest figures of every VM, labelled vm, project and node.
    static func vmSeries(
        _ latest: [String: TelemetryCollector.Latest], vms: [VirtualMachine], nodes: [Node]
    ) -> String {
        let byID = Dictionary(uniqueKeysWithValues: vms.map { ($0.meta.id, $0) })
        let nodeNames = Dictionary(uniqueKeysWithValues: nodes.map { ($0.meta.id, $0.meta.name) })
        let series: [(String, String, (Limiquantix_Types_V1_TelemetrySample) -> Double)] = [
            ("lqx_vm_cpu_percent", "CPU use in the guest, percent of its CPUs.", { $0.cpu.totalPercent }),
            ("lqx_vm_memory_total_bytes", "Guest memory (MemTotal).", { Double($0.memory.totalBytes) }),
            (
                "lqx_vm_memory_available_bytes", "Guest memory available (MemAvailable).",
                { Double($0.memory.availableBytes) }
            ),
            ("lqx_vm_load1", "Guest load average over 1 minute.", { $0.load.one }),
            ("lqx_vm_processes", "Processes in the guest.", { Double($0.processCount) }),
            ("lqx_vm_uptime_seconds", "Guest uptime.", { $0.uptimeSeconds }),
        ]
        var out = ""
        let rows = latest.compactMap { id, latest -> (String, TelemetryCollector.Latest)? in
            guard let vm = byID[id] else { return nil }
            let labels =
                "vm=\"\(label(vm.meta.name))\",project=\"\(label(vm.meta.project))\",node=\"\(label(nodeNames[latest.nodeID] ?? ""))\""
            return (labels, latest)
        }.sorted { $0.0 < $1.0 }
        for (name, help, value) in series {
            out += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n"
            for (labels, latest) in rows {
                let number = value(latest.point.sample)
                out += "\(name){\(labels)} \(number.isFinite ? "\(number)" : "NaN")\n"
            }
        }
        return out
    }

    static func label(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}
