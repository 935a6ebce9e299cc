import ControlPlane
import ControlPlaneAPI
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel
import LQXServer
import LQXTypes
import NodeAPI

/// The control plane's client of node APIs: mutual TLS with its own certificate, to the
/// address a node registered. One connection per call (operations and relays are long next to
/// a TLS handshake on a management network).
struct NodeCalls: Sendable {
    typealias Stub = Limiquantix_Node_V1_Node.Client<HTTP2ClientTransport.Posix>
    let security: ClientSecurity

    func with<T: Sendable>(_ node: Node, _ body: @Sendable @escaping (Stub) async throws -> T) async throws(LQXError)
        -> T
    {
        let address = try HostPort(parsing: node.status.address, for: .connect, field: "node \(node.meta.name) address")
        do {
            return try await ClientTransport.with(address, security: security) { client in
                try await body(Stub(wrapping: client))
            }
        } catch  where error.code == .unavailable {
            throw LQXError(.unavailable, "node \(node.meta.name) cannot be reached", cause: error)
        }
    }
}

/// Relays in-guest calls (exec, file transfer, telemetry, reboot) to the node a VM runs on and
/// audits each with the caller, the VM, what was run or moved and the result. Nothing is
/// buffered here beyond one message in each direction: gRPC flow control on both legs carries
/// the backpressure end to end.
struct GuestRelay: Sendable {
    let cluster: Cluster
    let nodes: NodeCalls
    /// What the control plane collected from the nodes (nil: in-process tests without one).
    var telemetry: TelemetryCollector?

    /// The VM (operators of its project, or viewers for `read`) and its node, which must be READY.
    func target(project: String, name: String, by principal: Principal, _ role: Role, to action: String)
        async throws(LQXError) -> (VirtualMachine, Node)
    {
        try principal.require(role, project: project, to: "\(action) in VMs of \(project)")
        let vm = try await cluster.vm(project, name, by: principal)
        guard !vm.status.nodeID.isEmpty, let node = try await cluster.repository.node(id: vm.status.nodeID) else {
            throw LQXError(.failedPrecondition, "VM \(name) is \(vm.status.phase.rawValue): it runs on no node yet")
        }
        guard node.status.phase == .ready || node.status.phase == .draining else {
            throw LQXError(
                .unavailable, "VM \(name)'s node \(node.meta.name) is \(node.status.phase.rawValue): try again later")
        }
        return (vm, node)
    }

    /// Reboots the guest through its agent (else ACPI), audited.
    func reboot(project: String, name: String, by principal: Principal) async throws(LQXError) {
        let (vm, node) = try await target(project: project, name: name, by: principal, .operator, to: "reboot")
        let id = vm.meta.id
        do {
            _ = try await nodes.with(node) { stub in
                try await stub.rebootVM(.with { $0.name = id }, options: ClientTransport.failFast)
            }
            try await cluster.recordAudit(principal, vm: vm, action: "restart", detail: "", result: "ok")
        } catch {
            try? await cluster.recordAudit(principal, vm: vm, action: "restart", detail: "", result: error.fullMessage)
            throw error
        }
    }
}

extension Cluster {
    /// Audits a power operation asked of the control plane (start, stop, pause, resume, delete).
    func recordPower(
        _ operation: String, project: String, name: String, by principal: Principal, error: LQXError?
    ) async throws(LQXError) {
        try await recordAudit(
            principal, project: project, vmName: name, action: operation, detail: "", result: error?.fullMessage ?? "ok"
        )
    }
}
