import ControlPlane
import ControlPlaneAPI
import GRPCCore
import LQXModel
import LQXServer

/// `NodeService`: the operators' view of nodes (list, cordon, labels, taints, resources, join tokens).
struct NodeAdminService: Limiquantix_Compute_V1_NodeService.ServiceProtocol {
    let cluster: Cluster
    /// The cluster CA's fingerprint, returned with join tokens (empty when there is none).
    var caFingerprint = ""
    var auth: Authentication { Authentication(cluster: cluster) }

    /// The nodes as messages, each with what its VMs take.
    func messages(_ nodes: [Node]) async throws(LQXError) -> [Limiquantix_Compute_V1_Node] {
        let vms = try await cluster.repository.vms()
        return nodes.map { node in
            let mine = vms.filter { $0.status.nodeID == node.meta.id }
            let allocated = Node.Resources(
                cpus: mine.reduce(0) { $0 + $1.spec.machine.vcpus },
                memoryMiB: mine.reduce(0) { $0 + $1.spec.machine.memoryMiB })
            return node.proto(allocated: allocated, vmCount: mine.count)
        }
    }

    func one(_ node: Node) async throws(LQXError) -> Limiquantix_Compute_V1_Node {
        try await messages([node])[0]
    }

    func listNodes(request: ServerRequest<Limiquantix_Compute_V1_ListNodesRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_ListNodesResponse>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let nodes = try await messages(try await cluster.nodes(by: principal))
                return .with { $0.nodes = nodes }
            })
    }

    func getNode(request: ServerRequest<Limiquantix_Compute_V1_NodeRef>, context: ServerContext) async throws
        -> ServerResponse<Limiquantix_Compute_V1_Node>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                try await one(try await cluster.node(request.message.name, by: principal))
            })
    }

    func cordonNode(request: ServerRequest<Limiquantix_Compute_V1_NodeRef>, context: ServerContext) async throws
        -> ServerResponse<Limiquantix_Compute_V1_Node>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                try await one(try await cluster.setSchedulable(request.message.name, false, by: principal))
            })
    }

    func uncordonNode(request: ServerRequest<Limiquantix_Compute_V1_NodeRef>, context: ServerContext) async throws
        -> ServerResponse<Limiquantix_Compute_V1_Node>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                try await one(try await cluster.setSchedulable(request.message.name, true, by: principal))
            })
    }

    func drainNode(
        request: ServerRequest<Limiquantix_Compute_V1_NodeRef>, context: ServerContext
    ) async throws -> StreamingServerResponse<Limiquantix_Compute_V1_DrainProgress> {
        let name = request.message.name
        let cluster = self.cluster
        let moving = try await auth.call(context, request.metadata) { principal in
            try await cluster.drainNode(name, by: principal)
        }
        return StreamingServerResponse { writer in
            try await RPCErrorMapping.mapping {
                let (changes, stop) = cluster.feed.changes()
                defer { stop() }
                var updates = changes.makeAsyncIterator()
                var reported = Set<String>()
                while true {
                    guard let node = try await cluster.repository.node(name: name) else {
                        throw LQXError(.notFound, "node \(name) was removed during the drain")
                    }
                    let names = Dictionary(
                        uniqueKeysWithValues: try await cluster.repository.nodes().map { ($0.meta.id, $0.meta.name) })
                    var current: [VirtualMachine] = []
                    for vm in moving {
                        if let now = try await cluster.repository.vm(id: vm.meta.id) { current.append(now) }
                    }
                    let remaining = current.count { $0.status.nodeID == node.meta.id || $0.status.nodeID.isEmpty }
                    for now in current {
                        let unschedulable = now.status.conditions["Scheduled"]?.status == false
                        let key = now.status.nodeID.isEmpty ? (unschedulable ? "wait" : "") : now.status.nodeID
                        guard !key.isEmpty, now.status.nodeID != node.meta.id,
                            reported.insert(now.meta.id + key).inserted
                        else { continue }
                        try await writer.write(
                            .with {
                                $0.vm = "\(now.meta.project)/\(now.meta.name)"
                                $0.action = "restart"
                                $0.target = names[now.status.nodeID] ?? ""
                                $0.done = !now.status.nodeID.isEmpty
                                $0.remaining = UInt32(clamping: remaining)
                                if now.status.nodeID.isEmpty {
                                    $0.error = now.status.conditions["Scheduled"]?.message ?? "waiting for room"
                                }
                            })
                    }
                    if node.status.phase == .maintenance {
                        try await writer.write(
                            .with {
                                $0.done = true
                                $0.remaining = 0
                            })
                        return [:]
                    }
                    guard await updates.next() != nil else { return [:] }
                }
            }
        }
    }

    func labelNode(request: ServerRequest<Limiquantix_Compute_V1_LabelNodeRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_Node>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let m = request.message
                return try await one(
                    try await cluster.setLabel(m.name, key: m.key, value: m.hasValue ? m.value : nil, by: principal))
            })
    }

    func taintNode(request: ServerRequest<Limiquantix_Compute_V1_TaintNodeRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_Node>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let m = request.message
                return try await one(
                    try await cluster.setTaint(
                        m.name, key: m.key, value: m.value, effect: NodeSpec.Taint.Effect.from(m.effect), by: principal)
                )
            })
    }

    func setNodeResources(
        request: ServerRequest<Limiquantix_Compute_V1_SetNodeResourcesRequest>, context: ServerContext
    ) async throws -> ServerResponse<Limiquantix_Compute_V1_Node> {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let m = request.message
                return try await one(
                    try await cluster.setResources(
                        m.name, cpuOvercommit: m.hasCpuOvercommit ? m.cpuOvercommit : nil,
                        memoryOvercommit: m.hasMemoryOvercommit ? m.memoryOvercommit : nil,
                        reservedCPUs: m.hasReservedCpus ? Int(m.reservedCpus) : nil,
                        reservedMemoryMiB: m.hasReservedMemoryMib ? Int(clamping: m.reservedMemoryMib) : nil,
                        by: principal))
            })
    }

    func createJoinToken(
        request: ServerRequest<Limiquantix_Compute_V1_CreateJoinTokenRequest>, context: ServerContext
    ) async throws -> ServerResponse<Limiquantix_Compute_V1_JoinToken> {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let ttl = request.message.ttlSeconds == 0 ? 3600 : Int64(request.message.ttlSeconds)
                let issued = try await cluster.createJoinToken(ttl: .seconds(ttl), by: principal)
                return .with {
                    $0.token = issued.token
                    $0.expiresUnixMs = issued.expiresUnixMs
                    $0.caSha256 = caFingerprint
                }
            })
    }
}
