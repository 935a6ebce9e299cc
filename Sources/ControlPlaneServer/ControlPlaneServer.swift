import ControlPlane
import GRPCCore

/// The cluster API's gRPC services over a `Cluster` (compute.v1). Built so far: projects, tokens,
/// the operators' node calls and events; the VM service and the node-facing service come next.
public enum ControlPlaneServer {
    /// The services to register on a gRPC server.
    public static func services(_ cluster: Cluster) -> [any RegistrableRPCService] {
        [
            ProjectService(cluster: cluster), TokenService(cluster: cluster), NodeAdminService(cluster: cluster),
            EventService(cluster: cluster),
        ]
    }
}
