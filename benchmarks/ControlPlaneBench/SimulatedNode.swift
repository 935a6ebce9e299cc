import ControlPlane
import ControlPlaneAPI
import Foundation
import GRPCCore
import LQXModel
import LQXServer
import LQXTestSupport
import LQXTypes
import NodeAPI
import NodeCore
import NodeDaemon
import Synchronization

/// A node as the control plane sees one, without a hypervisor: it joins with a token through the
/// node daemon's own join code (certificate request, pinned CA), serves the node API over mutual
/// TLS with its certificate (the lifecycle calls the reconciler makes, kept in memory, and
/// `WatchAllTelemetry` with an in-guest sample per running VM every interval), and heartbeats
/// its capacity and VMs over mutual TLS — at once when a VM changes, like `lqx-node`. Calls the
/// control plane never makes of a node (exec, snapshots, …) answer `unimplemented`.
final class SimulatedNode: Sendable {
    let name: String
    let address: HostPort
    let files: MembershipFiles
    let membership: ClusterMembership
    let telemetryInterval: Duration
    private let state = Mutex(State())
    private let changed: AsyncStream<Void>.Continuation
    private let changes: AsyncStream<Void>

    struct VM {
        var uuid: String
        var spec: Limiquantix_Types_V1_VMSpec
        var state: Limiquantix_Node_V1_VMState
    }

    private struct State {
        var vms: [String: VM] = [:]
    }

    static let cpus = 64
    static let memoryMiB = 262_144

    /// Joins the cluster at `controlPlane` as `name`, to be reached at `address`.
    init(
        name: String, address: HostPort, controlPlane: HostPort, token: String, caFile: String, directory: String,
        telemetryInterval: Duration
    ) async throws {
        self.name = name
        self.address = address
        self.telemetryInterval = telemetryInterval
        files = MembershipFiles(stateDirectory: directory)
        var inventory = HostInventory.detect()
        inventory.cpu.logical = Self.cpus
        inventory.memory.totalBytes = UInt64(Self.memoryMiB) * 1024 * 1024
        let hypervisor = HypervisorInfo(
            uri: "simulated:///", libvirtVersion: "0", hypervisorVersion: "0", domainType: "kvm", uefi: false,
            vhostVsock: false, machineTypes: ["pc"], capabilitiesXML: "<capabilities/>")
        membership = try await ClusterJoin.join(
            controlPlane: controlPlane, token: token, trust: .file(caFile),
            details: JoinDetails(name: name, advertise: address, inventory: inventory, hypervisor: hypervisor),
            files: files)
        (changes, changed) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Serves the node API and heartbeats until cancelled.
    func run() async throws {
        let server = GRPCService(
            address: address,
            security: .mutualTLS(certificateChain: files.certificate, privateKey: files.key, clientCA: files.ca),
            services: [API(node: self)])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.server.serve() }
            group.addTask { try await self.heartbeats() }
            try await group.next()
            group.cancelAll()
        }
    }

    private func heartbeats() async throws {
        let heartbeat = try membership.heartbeatAddress()
        try await ClientTransport.with(
            heartbeat,
            security: .mutualTLS(certificateChain: files.certificate, privateKey: files.key, caFile: files.ca)
        ) { client in
            let agent = Limiquantix_Compute_V1_NodeAgentService.Client(wrapping: client)
            var interval = Duration.milliseconds(max(100, self.membership.heartbeatIntervalMs))
            var wakeups = self.changes.makeAsyncIterator()
            while !Task.isCancelled {
                let request = self.heartbeatRequest()
                if let response = try? await agent.heartbeat(request, options: ClientTransport.failFast),
                    response.heartbeatIntervalMs > 0
                {
                    interval = .milliseconds(max(100, Int(response.heartbeatIntervalMs)))
                }
                try await Task.sleep(for: .milliseconds(100))
                let rest = interval - .milliseconds(100)
                let timer = Task {
                    try? await Task.sleep(for: rest)
                    if !Task.isCancelled { self.changed.yield() }
                }
                _ = await wakeups.next()
                timer.cancel()
            }
        }
    }

    private func heartbeatRequest() -> Limiquantix_Compute_V1_HeartbeatRequest {
        let vms = state.withLock { $0.vms }
        return .with {
            $0.nodeID = membership.nodeID
            $0.capacity = .with {
                $0.cpus = UInt32(Self.cpus)
                $0.memoryMib = UInt64(Self.memoryMiB)
            }
            $0.vms = vms.sorted { $0.key < $1.key }.map { name, vm in
                .with {
                    $0.id = vm.uuid
                    $0.name = name
                    $0.state = Self.stateName(vm.state)
                    $0.agentConnected = vm.state == .running
                }
            }
        }
    }

    static func stateName(_ state: Limiquantix_Node_V1_VMState) -> String {
        switch state {
        case .running: "running"
        case .paused: "paused"
        case .shutOff: "shut_off"
        default: "unknown"
        }
    }

    /// The VM as the node API answers it (its agent counts as connected while it runs).
    func proto(_ name: String) throws -> Limiquantix_Node_V1_VM {
        guard let vm = state.withLock({ $0.vms[name] }) else {
            throw LQXError(.notFound, "VM \(name) does not exist on \(self.name)")
        }
        return .with {
            $0.name = name
            $0.uuid = vm.uuid
            $0.state = vm.state
            $0.spec = vm.spec
            $0.agent = .with {
                $0.connected = vm.state == .running
                $0.agentVersion = "simulated"
            }
        }
    }

    func create(_ spec: Limiquantix_Types_V1_VMSpec) throws -> Limiquantix_Node_V1_VM {
        try state.withLock { (state) throws(LQXError) in
            guard state.vms[spec.name] == nil else { throw LQXError(.alreadyExists, "VM \(spec.name) exists") }
            state.vms[spec.name] = VM(uuid: UUID().uuidString.lowercased(), spec: spec, state: .shutOff)
        }
        changed.yield()
        return try proto(spec.name)
    }

    /// Moves a VM from one of `from` to `to`; already there is `failedPrecondition`, as on a node.
    func transition(_ name: String, from: [Limiquantix_Node_V1_VMState], to: Limiquantix_Node_V1_VMState) throws
        -> Limiquantix_Node_V1_VM
    {
        try state.withLock { (state) throws(LQXError) in
            guard let vm = state.vms[name] else { throw LQXError(.notFound, "VM \(name) does not exist") }
            guard from.contains(vm.state) else {
                throw LQXError(.failedPrecondition, "VM \(name) is \(Self.stateName(vm.state))")
            }
            state.vms[name]?.state = to
        }
        changed.yield()
        return try proto(name)
    }

    func delete(_ name: String) throws {
        let removed = state.withLock { $0.vms.removeValue(forKey: name) }
        guard removed != nil else { throw LQXError(.notFound, "VM \(name) does not exist") }
        changed.yield()
    }

    /// One sample per running VM per interval, shaped like a small Linux guest's.
    func telemetry(_ response: RPCWriter<Limiquantix_Node_V1_VMTelemetry>) async throws {
        var tick: UInt64 = 0
        while !Task.isCancelled {
            let running = state.withLock { $0.vms.filter { $0.value.state == .running }.map(\.key) }.sorted()
            let now = Cluster.wallClock()
            tick += 1
            for name in running {
                try await response.write(Self.sample(name, tick: tick, now: now))
            }
            try await Task.sleep(for: telemetryInterval)
        }
    }

    static func sample(_ name: String, tick: UInt64, now: Int64) -> Limiquantix_Node_V1_VMTelemetry {
        let jitter = Double((UInt64(truncatingIfNeeded: name.hashValue) &+ tick) % 100)
        return .with {
            $0.vm = name
            $0.receivedUnixMs = now
            $0.sample = .with {
                $0.timestampMs = now
                $0.cpu = .with {
                    $0.totalPercent = jitter / 4
                    $0.perCpuPercent = [jitter / 4]
                }
                $0.memory = .with {
                    $0.totalBytes = 512 << 20
                    $0.availableBytes = UInt64(300 + jitter) << 20
                }
                $0.filesystems = [
                    .with {
                        $0.mountPoint = "/"
                        $0.device = "/dev/vda1"
                        $0.type = "ext4"
                        $0.totalBytes = 10 << 30
                        $0.usedBytes = UInt64(2 << 30) + UInt64(jitter) << 20
                        $0.freeBytes = $0.totalBytes - $0.usedBytes
                    }
                ]
                $0.interfaces = [
                    .with {
                        $0.name = "eth0"
                        $0.rxBytes = tick * 4096
                        $0.txBytes = tick * 2048
                    }
                ]
                $0.processCount = 40
                $0.uptimeSeconds = Double(tick) * 5
                $0.cpuCount = 1
            }
        }
    }
}

extension SimulatedNode {
    /// The node API of a simulated node.
    struct API: Limiquantix_Node_V1_Node.SimpleServiceProtocol {
        let node: SimulatedNode

        private static func unimplemented(_ call: String) -> RPCError {
            RPCError(code: .unimplemented, message: "\(call): a simulated node (lqx-cp-bench) does not do this")
        }

        func createVM(request: Limiquantix_Node_V1_CreateVMRequest, context: ServerContext) async throws
            -> Limiquantix_Node_V1_VM
        { try await RPCErrorMapping.mapping { try node.create(request.spec) } }

        func startVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
            -> Limiquantix_Node_V1_VM
        { try await RPCErrorMapping.mapping { try node.transition(request.name, from: [.shutOff], to: .running) } }

        func stopVM(request: Limiquantix_Node_V1_StopVMRequest, context: ServerContext) async throws
            -> Limiquantix_Node_V1_StopVMResponse
        {
            try await RPCErrorMapping.mapping {
                let vm = try node.transition(request.name, from: [.running, .paused], to: .shutOff)
                return .with {
                    $0.vm = vm
                    $0.method = .agent
                }
            }
        }

        func rebootVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
            -> Limiquantix_Node_V1_VM
        { try await RPCErrorMapping.mapping { try node.proto(request.name) } }

        func pauseVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
            -> Limiquantix_Node_V1_VM
        { try await RPCErrorMapping.mapping { try node.transition(request.name, from: [.running], to: .paused) } }

        func resumeVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
            -> Limiquantix_Node_V1_VM
        { try await RPCErrorMapping.mapping { try node.transition(request.name, from: [.paused], to: .running) } }

        func deleteVM(request: Limiquantix_Node_V1_DeleteVMRequest, context: ServerContext) async throws
            -> Limiquantix_Node_V1_DeleteVMResponse
        {
            try await RPCErrorMapping.mapping { try node.delete(request.name) }
            return .init()
        }

        func getVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
            -> Limiquantix_Node_V1_VM
        { try await RPCErrorMapping.mapping { try node.proto(request.name) } }

        func listVMs(request: Limiquantix_Node_V1_ListVMsRequest, context: ServerContext) async throws
            -> Limiquantix_Node_V1_ListVMsResponse
        {
            let names = node.state.withLock { Array($0.vms.keys) }.sorted()
            return try await RPCErrorMapping.mapping { .with { $0.vms = names.compactMap { try? node.proto($0) } } }
        }

        func createSnapshot(request: Limiquantix_Node_V1_CreateSnapshotRequest, context: ServerContext)
            async throws -> Limiquantix_Node_V1_Snapshot
        { throw Self.unimplemented("CreateSnapshot") }

        func revertSnapshot(request: Limiquantix_Node_V1_SnapshotRef, context: ServerContext) async throws
            -> Limiquantix_Node_V1_VM
        { throw Self.unimplemented("RevertSnapshot") }

        func deleteSnapshot(request: Limiquantix_Node_V1_SnapshotRef, context: ServerContext) async throws
            -> Limiquantix_Node_V1_DeleteSnapshotResponse
        { throw Self.unimplemented("DeleteSnapshot") }

        func listSnapshots(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
            -> Limiquantix_Node_V1_ListSnapshotsResponse
        { throw Self.unimplemented("ListSnapshots") }

        func attachDisk(request: Limiquantix_Node_V1_AttachDiskRequest, context: ServerContext) async throws
            -> Limiquantix_Node_V1_VM
        { throw Self.unimplemented("AttachDisk") }

        func detachDisk(request: Limiquantix_Node_V1_DetachDiskRequest, context: ServerContext) async throws
            -> Limiquantix_Node_V1_VM
        { throw Self.unimplemented("DetachDisk") }

        func getConsole(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
            -> Limiquantix_Node_V1_ConsoleInfo
        { throw Self.unimplemented("GetConsole") }

        func migrateVM(
            request: Limiquantix_Node_V1_MigrateVMRequest, response: RPCWriter<Limiquantix_Node_V1_MigrationProgress>,
            context: ServerContext
        ) async throws { throw Self.unimplemented("MigrateVM") }

        func prepareIncomingVM(request: Limiquantix_Node_V1_CreateVMRequest, context: ServerContext) async throws
            -> Limiquantix_Node_V1_PrepareIncomingVMResponse
        { throw Self.unimplemented("PrepareIncomingVM") }

        func exec(
            request: RPCAsyncSequence<Limiquantix_Node_V1_ExecInput, any Error>,
            response: RPCWriter<Limiquantix_Node_V1_ExecOutput>, context: ServerContext
        ) async throws { throw Self.unimplemented("Exec") }

        func upload(request: RPCAsyncSequence<Limiquantix_Node_V1_UploadInput, any Error>, context: ServerContext)
            async throws -> Limiquantix_Types_V1_TransferResult
        { throw Self.unimplemented("Upload") }

        func download(
            request: Limiquantix_Node_V1_DownloadRequest, response: RPCWriter<Limiquantix_Node_V1_DownloadOutput>,
            context: ServerContext
        ) async throws { throw Self.unimplemented("Download") }

        func getTelemetry(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
            -> Limiquantix_Node_V1_VMTelemetry
        { SimulatedNode.sample(request.name, tick: 1, now: Cluster.wallClock()) }

        func watchTelemetry(
            request: Limiquantix_Node_V1_VMRef, response: RPCWriter<Limiquantix_Node_V1_VMTelemetry>,
            context: ServerContext
        ) async throws { throw Self.unimplemented("WatchTelemetry") }

        func watchAllTelemetry(
            request: Limiquantix_Node_V1_WatchAllTelemetryRequest, response: RPCWriter<Limiquantix_Node_V1_VMTelemetry>,
            context: ServerContext
        ) async throws { try await node.telemetry(response) }

        func getNodeInfo(request: Limiquantix_Node_V1_NodeInfoRequest, context: ServerContext) async throws
            -> Limiquantix_Node_V1_NodeInfo
        { throw Self.unimplemented("GetNodeInfo") }
    }
}
