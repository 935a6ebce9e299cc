import ControlPlane
import ControlPlaneAPI
import Foundation
import GRPCCore
import LQXModel
import LQXServer

/// `NodeService`: the operators' view of nodes (list, cordon, labels, taints, resources, join tokens).
struct NodeAdminService: Limiquantix_Compute_V1_NodeService.ServiceProtocol {
    let cluster: Cluster
    /// The cluster CA: its fingerprint is returned with join tokens, and it signs operator
    /// certificates (nil: a control plane without the node side has neither).
    var ca: ClusterCA?
    var caFingerprint: String { ca?.fingerprint ?? "" }
    var auth: Authentication { Authentication(cluster: cluster) }

    /// The nodes as messages, each with what its VMs take.
    func messages(_ nodes: [Node]) async throws(LQXError) -> [Limiquantix_Compute_V1_Node] {
        let wanted = Set(nodes.map(\.meta.id))
        var taken: [String: (resources: Node.Resources, count: Int)] = [:]
        for vm in try await cluster.repository.vms() where wanted.contains(vm.status.nodeID) {
            var entry = taken[vm.status.nodeID, default: (Node.Resources(), 0)]
            entry.resources.cpus += vm.spec.machine.vcpus
            entry.resources.memoryMiB += vm.spec.machine.memoryMiB
            entry.count += 1
            taken[vm.status.nodeID] = entry
        }
        return nodes.map { node in
            let entry = taken[node.meta.id, default: (Node.Resources(), 0)]
            return node.proto(allocated: entry.resources, vmCount: entry.count)
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
                let m = request.message
                guard m.pageSize <= VMService.maximumPageSize else {
                    throw LQXError(
                        .invalidSpec, "page_size: at most \(VMService.maximumPageSize) (got \(m.pageSize))")
                }
                let after = try PageToken(m.pageToken)
                let size = m.pageSize == 0 ? VMService.defaultPageSize : Int(m.pageSize)
                // Nodes come sorted by name: the page starts after the previous page's last name.
                let all = try await cluster.nodes(by: principal)
                var start = all.startIndex
                if let after {
                    var high = all.endIndex
                    while start < high {
                        let middle = (start + high) / 2
                        if all[middle].meta.name <= after.name { start = middle + 1 } else { high = middle }
                    }
                }
                let page = Array(all[start..<min(all.endIndex, start + size)])
                let more = start + size < all.endIndex
                let nodes = try await messages(page)
                return .with {
                    $0.nodes = nodes
                    if more, let last = page.last { $0.nextPageToken = PageToken(last.meta).text }
                }
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
                    let names = try await cluster.repository.nodeNames()
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

    func deleteNode(request: ServerRequest<Limiquantix_Compute_V1_NodeRef>, context: ServerContext) async throws
        -> ServerResponse<Limiquantix_Compute_V1_DeleteNodeResponse>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                try await cluster.deleteNode(request.message.name, by: principal)
                return Limiquantix_Compute_V1_DeleteNodeResponse()
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

    func issueOperatorCertificate(
        request: ServerRequest<Limiquantix_Compute_V1_IssueOperatorCertificateRequest>, context: ServerContext
    ) async throws -> ServerResponse<Limiquantix_Compute_V1_OperatorCertificate> {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let m = request.message
                let ttl = m.ttlSeconds == 0 ? Cluster.operatorCertificateTTL.default : .seconds(Int64(m.ttlSeconds))
                let user = try cluster.authorizeOperatorCertificate(ttl: ttl, by: principal)
                guard let ca else {
                    throw LQXError(.failedPrecondition, "this control plane has no cluster CA (no node listener)")
                }
                let identity = ClusterIdentity.operator(user)
                let certificate = try ca.sign(
                    requestDER: Array(m.certificateRequest), for: identity, hosts: [],
                    validity: TimeInterval(ttl.components.seconds))
                let fingerprint = PKIFiles.fingerprint(of: certificate)
                let pem = try PKIFiles.pem(certificate)
                try await cluster.recordAudit(
                    principal, project: "", vmName: "", action: "operator-certificate",
                    detail: "\(identity) for \(ttl.components.seconds) s", result: "sha256 \(fingerprint)")
                return .with {
                    $0.certificatePem = pem
                    $0.caPem = ca.certificatePEM
                    $0.identity = identity.description
                    $0.expiresUnixMs = Int64(certificate.notValidAfter.timeIntervalSince1970 * 1000)
                    $0.sha256 = fingerprint
                }
            })
    }
}
