import ControlPlane
import ControlPlaneAPI
import Foundation
import GRPCCore
import LQXModel
import LQXServer
import LQXTypes

/// `VMService`: VMs' spec and status, their power state and the scheduler's explanation; the
/// in-guest calls are relayed to the VM's node (`VMService+Guest.swift`).
struct VMService: Limiquantix_Compute_V1_VMService.ServiceProtocol {
    let cluster: Cluster
    let guest: GuestRelay
    var auth: Authentication { Authentication(cluster: cluster) }

    /// The project a reference means: its own, else the token's, else `default`.
    static func project(_ ref: Limiquantix_Compute_V1_VMRef, _ principal: Principal) -> String {
        project(ref.project, principal)
    }

    static func project(_ project: String, _ principal: Principal) -> String {
        !project.isEmpty ? project : principal.project.isEmpty ? Cluster.defaultProject : principal.project
    }

    /// VMs as messages, with their nodes' names.
    func messages(_ vms: [VirtualMachine]) async throws(LQXError) -> [CP.VM] {
        // One VM: its node alone; a page: every node's name in one read.
        var names: [String: String] = [:]
        let ids = Set(vms.map(\.status.nodeID)).subtracting([""])
        if ids.count == 1, let id = ids.first {
            names[id] = try await cluster.repository.node(id: id)?.meta.name
        } else if !ids.isEmpty {
            names = try await cluster.repository.nodeNames()
        }
        return vms.map { vm in
            var message = vm.proto(nodeName: names[vm.status.nodeID] ?? "")
            if let point = guest.telemetry?.latest(vm.meta.id)?.point {
                message.status.usage = .with {
                    $0.cpuPercent = point.sample.cpu.totalPercent
                    $0.memoryTotalBytes = point.sample.memory.totalBytes
                    $0.memoryAvailableBytes = point.sample.memory.availableBytes
                    $0.sampledUnixMs = point.receivedUnixMs
                }
                message.status.agent.lastSeenUnixMs = point.receivedUnixMs
                for interface in point.sample.interfaces where interface.name != "lo" {
                    message.status.agent.addresses += interface.addresses
                }
            }
            return message
        }
    }

    func one(_ vm: VirtualMachine) async throws(LQXError) -> CP.VM { try await messages([vm])[0] }

    func unary<Output: Sendable>(
        _ metadata: Metadata, _ context: ServerContext, _ body: (Principal) async throws -> Output
    ) async throws -> ServerResponse<Output> {
        ServerResponse(message: try await auth.call(context, metadata, body))
    }

    func createVM(request: ServerRequest<Limiquantix_Compute_V1_CreateVMRequest>, context: ServerContext)
        async throws -> ServerResponse<CP.VM>
    {
        try await unary(request.metadata, context) { principal in
            let m = request.message
            let create = CreateVM(
                project: Self.project(m.project, principal), name: m.name,
                labels: try Labels(m.labels, field: "labels"), spec: try VirtualMachine.Spec(m.spec, name: m.name))
            return try await one(try await cluster.createVM(create, by: principal))
        }
    }

    func getVM(request: ServerRequest<Limiquantix_Compute_V1_VMRef>, context: ServerContext) async throws
        -> ServerResponse<CP.VM>
    {
        try await unary(request.metadata, context) { principal in
            let ref = request.message
            return try await one(try await cluster.vm(Self.project(ref, principal), ref.name, by: principal))
        }
    }

    /// VMs in a page answer by default, and at most.
    static let defaultPageSize = 500
    static let maximumPageSize = 1000

    func listVMs(request: ServerRequest<Limiquantix_Compute_V1_ListVMsRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_ListVMsResponse>
    {
        try await unary(request.metadata, context) { principal in
            let m = request.message
            let selector = try Labels(m.labelSelector, field: "label_selector")
            guard m.pageSize <= Self.maximumPageSize else {
                throw LQXError(.invalidSpec, "page_size: at most \(Self.maximumPageSize) (got \(m.pageSize))")
            }
            let after = try PageToken(m.pageToken)
            var nodeID: String?
            if !m.node.isEmpty {
                guard let node = try await cluster.repository.node(name: m.node) else {
                    return Limiquantix_Compute_V1_ListVMsResponse()
                }
                nodeID = node.meta.id
            }
            // Read, filtered and paged in the store's order from where the last page ended: a page
            // costs its own size, not the cluster's (one more VM tells whether another page follows).
            let size = m.pageSize == 0 ? Self.defaultPageSize : Int(m.pageSize)
            let phase = m.filterPhase ? m.phase : nil
            var page = try await cluster.vms(
                project: m.project.isEmpty ? nil : m.project, after: after.map { ($0.project, $0.name) },
                limit: size + 1, by: principal
            ) { vm in
                !selector.values.contains { vm.meta.labels.values[$0.key] != $0.value }
                    && (nodeID == nil || vm.status.nodeID == nodeID) && (phase == nil || vm.status.phase.proto == phase)
            }
            let more = page.count > size
            if more { page.removeLast() }
            let messages = try await messages(page)
            return .with {
                $0.vms = messages
                if more, let last = page.last { $0.nextPageToken = PageToken(last.meta).text }
            }
        }
    }

    func updateVM(request: ServerRequest<Limiquantix_Compute_V1_UpdateVMRequest>, context: ServerContext)
        async throws -> ServerResponse<CP.VM>
    {
        try await unary(request.metadata, context) { principal in
            let m = request.message
            let project = Self.project(m.vm, principal)
            return try await one(
                try await cluster.updateVM(
                    project, m.vm.name, spec: try VirtualMachine.Spec(m.spec, name: m.vm.name),
                    labels: try Labels(m.labels, field: "labels"), resourceVersion: m.resourceVersion, by: principal))
        }
    }

    func power(
        _ ref: Limiquantix_Compute_V1_VMRef, _ state: VirtualMachine.RunState, _ metadata: Metadata,
        _ context: ServerContext, operation: String
    ) async throws -> ServerResponse<CP.VM> {
        try await unary(metadata, context) { principal in
            let project = Self.project(ref, principal)
            let vm: VirtualMachine
            do throws(LQXError) {
                vm = try await cluster.setRunState(project, ref.name, state, by: principal)
            } catch {
                try? await cluster.recordPower(operation, project: project, name: ref.name, by: principal, error: error)
                throw error
            }
            try await cluster.recordPower(operation, project: project, name: ref.name, by: principal, error: nil)
            return try await one(vm)
        }
    }

    func startVM(request: ServerRequest<Limiquantix_Compute_V1_VMRef>, context: ServerContext) async throws
        -> ServerResponse<CP.VM>
    {
        try await power(request.message, .running, request.metadata, context, operation: "start")
    }

    func stopVM(request: ServerRequest<Limiquantix_Compute_V1_StopVMRequest>, context: ServerContext) async throws
        -> ServerResponse<CP.VM>
    {
        try await power(request.message.vm, .stopped, request.metadata, context, operation: "stop")
    }

    func restartVM(request: ServerRequest<Limiquantix_Compute_V1_VMRef>, context: ServerContext) async throws
        -> ServerResponse<CP.VM>
    {
        try await unary(request.metadata, context) { principal in
            let ref = request.message
            let project = Self.project(ref, principal)
            try await guest.reboot(project: project, name: ref.name, by: principal)
            return try await one(try await cluster.vm(project, ref.name, by: principal))
        }
    }

    func pauseVM(request: ServerRequest<Limiquantix_Compute_V1_VMRef>, context: ServerContext) async throws
        -> ServerResponse<CP.VM>
    {
        try await power(request.message, .paused, request.metadata, context, operation: "pause")
    }

    func resumeVM(request: ServerRequest<Limiquantix_Compute_V1_VMRef>, context: ServerContext) async throws
        -> ServerResponse<CP.VM>
    {
        try await power(request.message, .running, request.metadata, context, operation: "resume")
    }

    func deleteVM(request: ServerRequest<Limiquantix_Compute_V1_VMRef>, context: ServerContext) async throws
        -> ServerResponse<Limiquantix_Compute_V1_DeleteVMResponse>
    {
        try await unary(request.metadata, context) { principal in
            let ref = request.message
            let project = Self.project(ref, principal)
            do throws(LQXError) {
                try await cluster.deleteVM(project, ref.name, by: principal)
            } catch {
                try? await cluster.recordPower("delete", project: project, name: ref.name, by: principal, error: error)
                throw error
            }
            try await cluster.recordPower("delete", project: project, name: ref.name, by: principal, error: nil)
            return .init()
        }
    }

    func explainVM(request: ServerRequest<Limiquantix_Compute_V1_VMRef>, context: ServerContext) async throws
        -> ServerResponse<Limiquantix_Compute_V1_Explanation>
    {
        try await unary(request.metadata, context) { principal in
            let ref = request.message
            let decision = try await cluster.explain(Self.project(ref, principal), ref.name, by: principal)
            return .with { explanation in
                explanation.chosen = decision.chosen?.node ?? ""
                explanation.summary = decision.summary
                explanation.verdicts = decision.verdicts.map { verdict in
                    .with {
                        $0.node = verdict.node
                        $0.fits = verdict.rejection == nil
                        $0.score = Int32(clamping: verdict.score ?? 0)
                        $0.reason = verdict.rejection?.reason ?? ""
                        $0.message = verdict.rejection?.message ?? ""
                    }
                }
            }
        }
    }
}

/// Where a page of VMs continues: after this project and name (base64 of both, NUL-separated).
struct PageToken: Equatable {
    var project: String
    var name: String

    init(_ meta: ObjectMeta) {
        project = meta.project
        name = meta.name
    }

    /// The token of a request; nil for the first page.
    init?(_ text: String) throws(LQXError) {
        guard !text.isEmpty else { return nil }
        let parts = Data(base64Encoded: text).map { String(decoding: $0, as: UTF8.self) }?.split(
            separator: "\u{0}", omittingEmptySubsequences: false)
        guard let parts, parts.count == 2 else {
            throw LQXError(.invalidSpec, "page_token: not a next_page_token of this API")
        }
        project = String(parts[0])
        name = String(parts[1])
    }

    var text: String { Data((project + "\u{0}" + name).utf8).base64EncodedString() }
}
