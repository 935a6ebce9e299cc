import ControlPlane
import LQXModel

/// The control plane's Prometheus exposition: nodes and VMs by phase, and per node what is
/// allocated of what it offers.
enum ControlPlaneMetrics {
    static func exposition(_ cluster: Cluster) async -> String {
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
