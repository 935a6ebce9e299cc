import ControlPlane
import ControlPlaneAPI
import GRPCCore
import LQXModel
import LQXServer

/// `NodeAgentService`: the node-facing side. `GetClusterCA` and `Join` need no bearer token (a
/// join token authorises joining); every other call must come over the mutual-TLS node listener
/// with the certificate the node received when it joined, naming the node it speaks for.
struct NodeAgentService: Limiquantix_Compute_V1_NodeAgentService.ServiceProtocol {
    let cluster: Cluster
    let ca: ClusterCA
    /// How often nodes are asked to heartbeat.
    let heartbeatInterval: Duration
    /// The port of the mutual-TLS node listener, told to joining nodes (once bound).
    let nodePort: OneShot<Int>

    var intervalMilliseconds: UInt32 {
        UInt32(
            clamping: heartbeatInterval.components.seconds * 1000 + heartbeatInterval.components.attoseconds
                / 1_000_000_000_000_000)
    }

    func getClusterCA(
        request: ServerRequest<Limiquantix_Compute_V1_GetClusterCARequest>, context: ServerContext
    ) async throws -> ServerResponse<Limiquantix_Compute_V1_ClusterCA> {
        let ca = self.ca
        return ServerResponse(
            message: try await RPCErrorMapping.mapping { () throws(LQXError) in
                let der = try PKIFiles.der(ca.certificate)
                return .with {
                    $0.certificate = .init(der)
                    $0.sha256 = ca.fingerprint
                }
            })
    }

    func join(request: ServerRequest<Limiquantix_Compute_V1_JoinRequest>, context: ServerContext) async throws
        -> ServerResponse<Limiquantix_Compute_V1_JoinResponse>
    {
        let m = request.message
        return ServerResponse(
            message: try await RPCErrorMapping.mapping {
                let csr = Array(m.certificateRequest)
                // An address that keeps sending bad join tokens is refused for a while.
                try cluster.authFailures.check(context.remotePeer)
                // The request is checked before the token is spent on it.
                _ = try ca.sign(requestDER: csr, for: .node("check"), hosts: [])
                let registration = NodeRegistration(
                    name: m.name, address: m.address, capacity: Node.Resources(m.capacity),
                    inventory: Node.Inventory(m.inventory), version: m.version)
                let node = try await register(m.joinToken, registration, peer: context.remotePeer)
                let host = try HostPort(parsing: node.status.address, for: .connect, field: "address").host
                let certificate = try PKIFiles.der(
                    try ca.sign(requestDER: csr, for: .node(node.meta.id), hosts: [host]))
                let caDER = try PKIFiles.der(ca.certificate)
                let port = try await nodePort.wait()
                return .with {
                    $0.nodeID = node.meta.id
                    $0.certificate = .init(certificate)
                    $0.caCertificate = .init(caDER)
                    $0.heartbeatIntervalMs = intervalMilliseconds
                    $0.nodePort = UInt32(clamping: port)
                }
            })
    }

    /// Registers the node; a bad token counts against the caller's address.
    func register(_ token: String, _ registration: NodeRegistration, peer: String) async throws(LQXError) -> Node {
        do {
            return try await cluster.registerNode(joinToken: token, registration)
        } catch {
            if error.code == .unauthenticated { cluster.authFailures.failed(peer) }
            throw error
        }
    }

    func heartbeat(request: ServerRequest<Limiquantix_Compute_V1_HeartbeatRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_HeartbeatResponse>
    {
        let m = request.message
        return ServerResponse(
            message: try await RPCErrorMapping.mapping {
                try requireNode(m.nodeID, context)
                let migration =
                    m.migrationUri.isEmpty
                    ? nil : try Node.MigrationTarget(uri: m.migrationUri, address: m.migrationAddress)
                guard m.sharedStorage.count <= SharedStorage.maximumPerNode else {
                    throw LQXError(
                        .invalidSpec,
                        "shared_storage: at most \(SharedStorage.maximumPerNode) (got \(m.sharedStorage.count))")
                }
                var storages: [SharedStorage] = []
                for declared in m.sharedStorage {
                    let storage = try SharedStorage(id: declared.id, path: declared.path)
                    if !storages.contains(storage) { storages.append(storage) }
                }
                let wanted = try await cluster.heartbeat(
                    nodeID: m.nodeID, capacity: m.hasCapacity ? Node.Resources(m.capacity) : nil,
                    vms: m.vms.map {
                        ObservedVM(
                            id: $0.id, name: $0.name, state: $0.state, agentConnected: $0.agentConnected,
                            agent: VirtualMachine.AgentFacts(
                                version: $0.agentVersion, osPrettyName: $0.osPrettyName, hostname: $0.hostname))
                    },
                    paths: m.checksPaths
                        ? Dictionary(m.paths.map { ($0.path, $0.present) }, uniquingKeysWith: { $0 && $1 }) : nil,
                    migration: migration, sharedStorage: storages)
                return .with {
                    $0.heartbeatIntervalMs = intervalMilliseconds
                    $0.checkPaths = wanted
                }
            })
    }

    /// The call must carry a certificate of this cluster's CA naming node `nodeID`.
    func requireNode(_ nodeID: String, _ context: ServerContext) throws(LQXError) {
        guard let certificate = context.peerCertificate, ca.issued(certificate) else {
            throw LQXError(
                .unauthenticated,
                "node calls need the node's cluster certificate, over the control plane's node port (mutual TLS)")
        }
        guard ClusterIdentity(certificate: certificate) == .node(nodeID) else {
            throw LQXError(
                .permissionDenied,
                "the certificate names \(ClusterIdentity(certificate: certificate)?.description ?? "no identity"), not node \(nodeID)"
            )
        }
    }
}

extension Node.Resources {
    init(_ message: Limiquantix_Compute_V1_Resources) {
        self.init(cpus: Int(message.cpus), memoryMiB: Int(clamping: message.memoryMib))
    }
}

extension Node.Inventory {
    init(_ m: Limiquantix_Compute_V1_NodeInventory) {
        self.init(
            cpuModel: m.cpuModel, sockets: Int(m.sockets), cores: Int(m.cores), threads: Int(m.threads),
            hypervisor: m.hypervisor, vsock: m.vsock, uefi: m.uefi)
    }
}
