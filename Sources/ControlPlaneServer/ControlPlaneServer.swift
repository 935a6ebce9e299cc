import ControlPlane
import GRPCCore
import LQXModel
import LQXServer

/// The cluster API's gRPC services over a `Cluster` (compute.v1): VMs (with the in-guest relays
/// to their nodes), projects, tokens, the operators' node calls, events, and the node-facing
/// join and heartbeats.
public enum ControlPlaneServer {
    /// The services to register on a gRPC server; with `nodes`, the node-facing service too
    /// (join and heartbeats, signing with the cluster CA).
    /// `nodeClient` secures the calls the control plane makes to node APIs (in-guest relays).
    public static func services(
        _ cluster: Cluster, nodes: NodeFacing? = nil, nodeClient: ClientSecurity = .plaintext
    ) -> [any RegistrableRPCService] {
        services(cluster, nodes: nodes, calls: NodeCalls(security: nodeClient), telemetry: nil)
    }

    static func services(
        _ cluster: Cluster, nodes: NodeFacing?, calls: NodeCalls, telemetry: TelemetryCollector?
    ) -> [any RegistrableRPCService] {
        let relay = GuestRelay(cluster: cluster, nodes: calls, telemetry: telemetry)
        var services: [any RegistrableRPCService] = [
            VMService(cluster: cluster, guest: relay), ProjectService(cluster: cluster), TokenService(cluster: cluster),
            NodeAdminService(cluster: cluster, ca: nodes?.ca),
            EventService(cluster: cluster), ClusterService(cluster: cluster),
        ]
        if let nodes {
            services.append(
                NodeAgentService(
                    cluster: cluster, ca: nodes.ca, heartbeatInterval: nodes.heartbeatInterval,
                    nodePort: nodes.nodePort))
        }
        return services
    }

    /// The reconciler's driver: node operations over the node APIs, secured by `nodeClient`.
    public static func nodeDriver(_ nodeClient: ClientSecurity) -> any NodeDriver {
        GRPCNodeDriver(nodes: NodeCalls(security: nodeClient))
    }

    /// What the node-facing service needs.
    public struct NodeFacing: Sendable {
        /// The cluster CA, which signs node certificates.
        public var ca: ClusterCA
        /// How often nodes heartbeat.
        public var heartbeatInterval: Duration
        /// The mutual-TLS port nodes heartbeat to, once it is bound.
        public var nodePort: OneShot<Int>

        /// Creates the settings.
        public init(ca: ClusterCA, heartbeatInterval: Duration, nodePort: OneShot<Int>) {
            self.ca = ca
            self.heartbeatInterval = heartbeatInterval
            self.nodePort = nodePort
        }
    }
}
