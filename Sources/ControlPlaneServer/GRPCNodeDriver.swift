import ControlPlane
import GRPCCore
import LQXModel
import LQXServer
import LQXTypes
import NodeAPI

/// The reconciler's node operations over each node's API (mutual TLS with the control plane's
/// certificate). A node answering that it already is where the reconciler wants it counts as
/// success: the operation is then read back.
struct GRPCNodeDriver: NodeDriver {
    let nodes: NodeCalls
    /// How long a graceful stop may take before the node stops the VM at once.
    var stopTimeoutSeconds: UInt32 = 60

    func get(_ vmID: String, on node: Node) async throws(LQXError) -> ObservedVM? {
        do {
            let vm = try await nodes.with(node) { stub in
                try await stub.getVM(.with { $0.name = vmID }, options: ClientTransport.failFast)
            }
            return Self.observed(vm)
        } catch  where error.code == .notFound {
            return nil
        }
    }

    func create(_ machine: VMSpec, start: Bool, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM {
        do {
            let spec = machine.proto
            _ = try await nodes.with(node) { stub in
                try await stub.createVM(
                    .with {
                        $0.spec = spec
                        $0.epoch = epoch
                    }, options: ClientTransport.failFast)
            }
        } catch  where error.code == .alreadyExists {
            // Defined by an earlier attempt whose answer was lost — unless the node has no such
            // VM, when what is in the way (e.g. disks kept from an earlier definition) is the error.
            guard try await get(machine.name, on: node) != nil else { throw error }
        }
        return start
            ? try await self.start(machine.name, epoch: epoch, on: node) : try await read(machine.name, on: node)
    }

    func start(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM {
        try await operation(vmID, on: node) { stub in
            _ = try await stub.startVM(
                .with {
                    $0.name = vmID; $0.epoch = epoch
                }, options: ClientTransport.failFast)
        }
    }

    func stop(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM {
        let timeout = stopTimeoutSeconds
        return try await operation(vmID, on: node) { stub in
            _ = try await stub.stopVM(
                .with {
                    $0.name = vmID
                    $0.timeoutSeconds = timeout
                    $0.epoch = epoch
                }, options: ClientTransport.failFast)
        }
    }

    func pause(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM {
        try await operation(vmID, on: node) { stub in
            _ = try await stub.pauseVM(
                .with {
                    $0.name = vmID; $0.epoch = epoch
                }, options: ClientTransport.failFast)
        }
    }

    func resume(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) -> ObservedVM {
        try await operation(vmID, on: node) { stub in
            _ = try await stub.resumeVM(
                .with {
                    $0.name = vmID; $0.epoch = epoch
                }, options: ClientTransport.failFast)
        }
    }

    func delete(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) {
        do {
            _ = try await nodes.with(node) { stub in
                try await stub.deleteVM(
                    .with {
                        $0.name = vmID
                        $0.force = true
                        $0.epoch = epoch
                    }, options: ClientTransport.failFast)
            }
        } catch  where error.code == .notFound {
            // Gone already.
        }
    }

    func undefine(_ vmID: String, epoch: Int64, on node: Node) async throws(LQXError) {
        do {
            _ = try await nodes.with(node) { stub in
                try await stub.deleteVM(
                    .with {
                        $0.name = vmID
                        $0.keepDisks = true
                        $0.epoch = epoch
                    }, options: ClientTransport.failFast)
            }
        } catch  where error.code == .notFound {
            // Gone already.
        }
    }

    func prepareIncoming(_ machine: VMSpec, epoch: Int64, on node: Node) async throws(LQXError) {
        let spec = machine.proto
        _ = try await nodes.with(node) { stub in
            try await stub.prepareIncomingVM(
                .with {
                    $0.spec = spec
                    $0.epoch = epoch
                }, options: ClientTransport.failFast)
        }
    }

    func migrate(_ vmID: String, epoch: Int64, from source: Node, to target: Node) async throws(LQXError) {
        guard let destination = target.status.migration else {
            throw LQXError(.failedPrecondition, "node \(target.meta.name) takes no live migrations")
        }
        let done = try await nodes.with(source) { stub in
            try await stub.migrateVM(
                .with {
                    $0.name = vmID
                    $0.destinationUri = destination.uri
                    $0.migrationAddress = destination.address
                    $0.epoch = epoch
                }, options: ClientTransport.failFast
            ) { response in
                var done = false
                for try await progress in response.messages where progress.done { done = true }
                return done
            }
        }
        guard done else {
            throw LQXError(
                .unavailable, "node \(source.meta.name) ended the migration of \(vmID) without saying it was done")
        }
    }

    /// Runs `body`, then reads the VM back; a `failedPrecondition` answer (already in that
    /// state) is not an error.
    func operation(
        _ vmID: String, on node: Node, _ body: @Sendable @escaping (NodeCalls.Stub) async throws -> Void
    ) async throws(LQXError) -> ObservedVM {
        do {
            try await nodes.with(node, body)
        } catch  where error.code == .failedPrecondition {
            // Already there (or not possible now): what the node reports decides the next pass.
        }
        return try await read(vmID, on: node)
    }

    func read(_ vmID: String, on node: Node) async throws(LQXError) -> ObservedVM {
        guard let observed = try await get(vmID, on: node) else {
            throw LQXError(.notFound, "node \(node.meta.name) does not have VM \(vmID)")
        }
        return observed
    }

    static func observed(_ vm: Limiquantix_Node_V1_VM) -> ObservedVM {
        let state =
            switch vm.state {
            case .running: "running"
            case .paused: "paused"
            case .shuttingDown: "shutting_down"
            case .shutOff: "shut_off"
            case .crashed: "crashed"
            case .suspended: "suspended"
            case .blocked: "blocked"
            default: "unknown"
            }
        return ObservedVM(
            id: vm.name, name: vm.name, state: state, agentConnected: vm.agent.connected,
            agent: VirtualMachine.AgentFacts(
                version: vm.agent.agentVersion, osPrettyName: vm.agent.osPrettyName, hostname: vm.agent.hostname))
    }
}
