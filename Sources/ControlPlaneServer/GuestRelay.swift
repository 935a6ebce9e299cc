import ControlPlane
import ControlPlaneAPI
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel
import LQXServer
import LQXTypes
import NodeAPI
import Synchronization

/// The control plane's client of node APIs: mutual TLS with its own certificate, to the
/// address a node registered. One HTTP/2 connection per node address, kept open and shared by
/// every call to that node (reconciler operations, relays, the telemetry stream), so a cluster
/// of 1,000 nodes costs 1,000 connections, not a TLS handshake per operation. A connection
/// that breaks is re-established by its client; one whose node moved to another address is
/// closed when the first call to the new address opens its own.
final class NodeCalls: Sendable {
    typealias Stub = Limiquantix_Node_V1_Node.Client<HTTP2ClientTransport.Posix>
    let security: ClientSecurity
    private let pool = Mutex<[String: Pooled]>([:])

    private struct Pooled: Sendable {
        var address: HostPort
        var client: GRPCClient<HTTP2ClientTransport.Posix>
    }

    init(security: ClientSecurity) { self.security = security }

    deinit {
        for pooled in pool.withLock({ Array($0.values) }) { pooled.client.beginGracefulShutdown() }
    }

    /// The open client for `node`'s address, made (and its connection started) on first use.
    private func client(_ node: Node, _ address: HostPort) throws(LQXError) -> GRPCClient<HTTP2ClientTransport.Posix> {
        if let pooled = pool.withLock({ $0[node.meta.id] }), pooled.address == address { return pooled.client }
        let client = GRPCClient(transport: try ClientTransport.make(address, security: security))
        let (chosen, replaced) = pool.withLock { pool -> (GRPCClient<HTTP2ClientTransport.Posix>, Pooled?) in
            if let pooled = pool[node.meta.id], pooled.address == address { return (pooled.client, nil) }
            let old = pool[node.meta.id]
            pool[node.meta.id] = Pooled(address: address, client: client)
            return (client, old)
        }
        replaced?.client.beginGracefulShutdown()
        if chosen === client {
            Task.detached { try? await client.runConnections() }
        }
        return chosen
    }

    func with<T: Sendable>(_ node: Node, _ body: @Sendable @escaping (Stub) async throws -> T) async throws(LQXError)
        -> T
    {
        let address = try HostPort(parsing: node.status.address, for: .connect, field: "node \(node.meta.name) address")
        let client = try client(node, address)
        do {
            return try await body(Stub(wrapping: client))
        } catch let error as LQXError {
            throw error
        } catch let error as RPCError {
            let mapped = RPCErrorMapping.lqxError(error, peer: address.description)
            if mapped.code == .unavailable {
                throw LQXError(.unavailable, "node \(node.meta.name) cannot be reached", cause: mapped)
            }
            throw mapped
        } catch {
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
