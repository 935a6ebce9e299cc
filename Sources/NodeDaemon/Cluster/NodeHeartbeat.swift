import ControlPlaneAPI
import Foundation
import GRPCCore
import LQXModel
import LQXServer
import Logging
import NodeCore
import ServiceLifecycle

/// Heartbeats to the control plane over mutual TLS with the node's certificate: capacity and
/// every VM with its state, at the interval the control plane asks for, and at once when a VM's
/// state changes or its agent connects (pushed, not polled). A failed heartbeat is
/// logged and retried at the next interval; the node keeps running its VMs regardless.
public final class NodeHeartbeat: Service, Sendable {
    let membership: ClusterMembership
    let files: MembershipFiles
    let manager: VMManager
    let migration: NodeConfiguration.MigrationTarget?
    let sharedStorage: [SharedStorage]
    let logger: Logger

    /// Heartbeats for `membership`, reporting `manager`'s VMs, where live migrations come in
    /// and the storage this host shares with others.
    public init(
        membership: ClusterMembership, files: MembershipFiles, manager: VMManager,
        migration: NodeConfiguration.MigrationTarget? = nil, sharedStorage: [SharedStorage] = [], logger: Logger
    ) {
        self.membership = membership
        self.files = files
        self.manager = manager
        self.migration = migration
        self.sharedStorage = sharedStorage
        self.logger = logger
    }

    /// Heartbeats until graceful shutdown.
    public func run() async throws {
        let address = try membership.heartbeatAddress()
        let transport = try ClientTransport.make(
            address,
            security: .mutualTLS(certificateChain: files.certificate, privateKey: files.key, caFile: files.ca))
        let capacity = Limiquantix_Compute_V1_Resources.with {
            let inventory = HostInventory.detect()
            $0.cpus = UInt32(clamping: inventory.cpu.logical)
            $0.memoryMib = inventory.memory.totalBytes / (1024 * 1024)
        }
        // A VM that changes is reported at once (at most every 100 ms), not at the next interval.
        let (wake, wakeUp) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let changes = manager.changes()
        try await withGRPCClient(transport: transport) { client in
            let agent = Limiquantix_Compute_V1_NodeAgentService.Client(wrapping: client)
            await cancelWhenGracefulShutdown {
                // Cancelled by the defer when heartbeats stop.
                let forward = Task {
                    for await _ in changes { wakeUp.yield() }
                }
                defer { forward.cancel() }
                var wakeups = wake.makeAsyncIterator()
                var interval = Duration.milliseconds(max(100, self.membership.heartbeatIntervalMs))
                var failing = false
                // The paths the control plane asked about in its last reply.
                var asked: [String] = []
                while !Task.isCancelled {
                    do {
                        let request = try await self.request(capacity: capacity, paths: asked)
                        let response = try await agent.heartbeat(request, options: ClientTransport.failFast)
                        if response.heartbeatIntervalMs > 0 {
                            interval = .milliseconds(max(100, Int(response.heartbeatIntervalMs)))
                        }
                        let next = Array(response.checkPaths.prefix(Self.maxPaths))
                        if next != asked {
                            // New questions are answered at once (a VM waits for the answer).
                            asked = next
                            wakeUp.yield()
                        }
                        if failing {
                            self.logger.notice(
                                "heartbeats reach the control plane again", metadata: ["to": "\(address)"])
                            failing = false
                        }
                    } catch {
                        if !failing {
                            let message =
                                (error as? RPCError).map {
                                    RPCErrorMapping.lqxError($0, peer: address.description).fullMessage
                                }
                                ?? "\(error)"
                            self.logger.warning("heartbeat failed: \(message)", metadata: ["to": "\(address)"])
                        }
                        failing = true
                    }
                    try? await Task.sleep(for: .milliseconds(100))
                    // The rest of the interval, or less when a VM changes; the timer is cancelled
                    // once the wait ends either way.
                    let rest = interval - .milliseconds(100)
                    let timer = Task {
                        try? await Task.sleep(for: rest)
                        if !Task.isCancelled { wakeUp.yield() }
                    }
                    _ = await wakeups.next()
                    timer.cancel()
                }
            }
        }
    }

    /// The most paths answered in one heartbeat.
    static let maxPaths = 256

    func request(capacity: Limiquantix_Compute_V1_Resources, paths: [String] = []) async throws(LQXError)
        -> Limiquantix_Compute_V1_HeartbeatRequest
    {
        let vms = try await manager.hypervisor.list()
        return .with {
            $0.nodeID = membership.nodeID
            $0.capacity = capacity
            $0.checksPaths = true
            $0.migrationUri = migration?.uri ?? ""
            $0.migrationAddress = migration?.address ?? ""
            $0.sharedStorage = sharedStorage.map { storage in
                .with {
                    $0.id = storage.id
                    $0.path = storage.path
                }
            }
            $0.paths = paths.map { path in
                .with {
                    $0.path = path
                    $0.present = Self.present(path)
                }
            }
            $0.vms = vms.map { vm in
                .with {
                    $0.id = vm.uuid
                    $0.name = vm.name
                    $0.state = vm.state.rawValue
                    $0.agentConnected = manager.agentConnected(vm.name)
                    if let info = manager.agentInfo(vm.name) {
                        $0.agentVersion = info.agentVersion
                        $0.osPrettyName = info.os.prettyName
                        $0.hostname = info.hostname
                    }
                }
            }
        }
    }

    /// Whether this host has `path` for a VM: absolute, a readable regular file or block device.
    static func present(_ path: String) -> Bool {
        guard path.hasPrefix("/"), path.utf8.count <= 4096, !path.utf8.contains(0) else { return false }
        var info = stat()
        guard stat(path, &info) == 0, access(path, R_OK) == 0 else { return false }
        let type = info.st_mode & S_IFMT
        return type == S_IFREG || type == S_IFBLK
    }
}
