import AgentProtocol
import Foundation
import GRPCCore
import HostBroker
import NIOCore
import NodeAPI

/// The node's gRPC API (proto/limiquantix/node/v1/node.proto): VM lifecycle through the
/// hypervisor, in-guest operations through each VM's agent session.
public struct NodeService: Limiquantix_Node_V1_Node.SimpleServiceProtocol {
    let manager: VMManager
    let nodeName: String
    /// How long an in-guest operation waits for the VM's agent session.
    let agentTimeout: Duration
    var hypervisor: LibvirtHypervisor { manager.hypervisor }

    public init(manager: VMManager, nodeName: String, agentTimeout: Duration = .seconds(15)) {
        self.manager = manager
        self.nodeName = nodeName
        self.agentTimeout = agentTimeout
    }

    /// The gRPC metadata key carrying the stable error code (`invalid_spec`, `not_found`, …).
    public static let errorCodeKey = "lqx-error-code"

    // MARK: VM lifecycle

    public func createVM(request: Limiquantix_Node_V1_CreateVMRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            let status = try await hypervisor.create(VMSpec(request.spec))
            return vm(status)
        }
    }

    public func startVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            try await hypervisor.start(request.name)
            _ = await manager.waitForState(request.name, timeout: .seconds(10)) { $0.isActive }
            return try await vm(named: request.name)
        }
    }

    public func stopVM(request: Limiquantix_Node_V1_StopVMRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_StopVMResponse
    {
        try await api {
            let method: VMManager.StopMethod
            if request.force {
                if try await hypervisor.status(request.name).state.isActive {
                    try await hypervisor.forceStop(request.name)
                    method = .forced
                } else {
                    method = .alreadyStopped
                }
            } else {
                let timeout = Duration.seconds(request.timeoutSeconds == 0 ? 60 : Int(request.timeoutSeconds))
                method = try await manager.stop(request.name, timeout: timeout)
            }
            _ = await manager.waitForState(request.name, timeout: .seconds(5)) { !$0.isActive }
            let vm = try await vm(named: request.name)
            return .with {
                $0.vm = vm
                $0.method =
                    switch method {
                    case .agent: .agent
                    case .acpi: .acpi
                    case .forced: .forced
                    case .alreadyStopped: .alreadyStopped
                    }
            }
        }
    }

    public func rebootVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            _ = try await managed(request.name)
            _ = try await manager.reboot(request.name)
            return try await vm(named: request.name)
        }
    }

    public func pauseVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            try await hypervisor.pause(request.name)
            return try await vm(named: request.name)
        }
    }

    public func resumeVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            try await hypervisor.resume(request.name)
            return try await vm(named: request.name)
        }
    }

    public func deleteVM(request: Limiquantix_Node_V1_DeleteVMRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_DeleteVMResponse
    {
        try await api {
            _ = try await managed(request.name)
            try await hypervisor.delete(request.name, force: request.force, deleteDisks: !request.keepDisks)
            return Limiquantix_Node_V1_DeleteVMResponse()
        }
    }

    public func getVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api { try await vm(named: request.name) }
    }

    public func listVMs(request: Limiquantix_Node_V1_ListVMsRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_ListVMsResponse
    {
        try await api {
            let vms = try await hypervisor.list().map(vm)
            return .with { $0.vms = vms }
        }
    }

    // MARK: snapshots, disks, console, migration

    public func createSnapshot(request: Limiquantix_Node_V1_CreateSnapshotRequest, context: ServerContext)
        async throws -> Limiquantix_Node_V1_Snapshot
    {
        try await api {
            _ = try await managed(request.vm)
            return try await hypervisor.createSnapshot(
                request.vm, name: request.name, description: request.description_p
            ).proto
        }
    }

    public func revertSnapshot(request: Limiquantix_Node_V1_SnapshotRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            _ = try await managed(request.vm)
            try await hypervisor.revertSnapshot(request.vm, name: request.name)
            return try await vm(named: request.vm)
        }
    }

    public func deleteSnapshot(request: Limiquantix_Node_V1_SnapshotRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_DeleteSnapshotResponse
    {
        try await api {
            _ = try await managed(request.vm)
            try await hypervisor.deleteSnapshot(request.vm, name: request.name)
            return Limiquantix_Node_V1_DeleteSnapshotResponse()
        }
    }

    public func listSnapshots(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_ListSnapshotsResponse
    {
        try await api {
            _ = try await managed(request.name)
            let snapshots = try await hypervisor.snapshots(request.name).map(\.proto)
            return .with { $0.snapshots = snapshots }
        }
    }

    public func attachDisk(request: Limiquantix_Node_V1_AttachDiskRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            _ = try await managed(request.vm)
            _ = try await hypervisor.attachDisk(request.vm, DiskSpec(request.disk))
            return try await vm(named: request.vm)
        }
    }

    public func detachDisk(request: Limiquantix_Node_V1_DetachDiskRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            _ = try await managed(request.vm)
            try await hypervisor.detachDisk(request.vm, target: request.target, deleteImage: request.deleteImage)
            return try await vm(named: request.vm)
        }
    }

    public func getConsole(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_ConsoleInfo
    {
        try await api {
            _ = try await managed(request.name)
            let console = try await hypervisor.console(request.name)
            return .with {
                $0.serialLog = console.serialLog
                $0.pty = console.pty ?? ""
                $0.vnc = console.vnc ?? ""
            }
        }
    }

    public func migrateVM(
        request: Limiquantix_Node_V1_MigrateVMRequest, response: RPCWriter<Limiquantix_Node_V1_MigrationProgress>,
        context: ServerContext
    ) async throws {
        try await api {
            _ = try await managed(request.name)
            let (updates, input) = AsyncStream.makeStream(of: JobProgress.self, bufferingPolicy: .bufferingNewest(1))
            let hypervisor = self.hypervisor
            let migration = Task { () async throws in
                defer { input.finish() }
                try await hypervisor.migrate(
                    request.name, to: request.destinationUri,
                    migrationAddress: request.migrationAddress.isEmpty ? nil : request.migrationAddress,
                    maxDowntimeMilliseconds: request.maxDowntimeMs,
                    bandwidthMiBps: request.bandwidthMibps, progress: { input.yield($0) })
            }
            for await job in updates {
                try? await response.write(
                    .with {
                        $0.dataTotalBytes = job.dataTotal
                        $0.dataProcessedBytes = job.dataProcessed
                        $0.dataRemainingBytes = job.dataRemaining
                        $0.elapsedMs = job.elapsedMilliseconds
                    })
            }
            try await migration.value
            try? await response.write(.with { $0.done = true })
        }
    }

    // MARK: in-guest operations

    public func exec(
        request: RPCAsyncSequence<Limiquantix_Node_V1_ExecInput, any Error>,
        response: RPCWriter<Limiquantix_Node_V1_ExecOutput>, context: ServerContext
    ) async throws {
        let (processes, started) = AsyncStream.makeStream(of: ExecProcess.self, bufferingPolicy: .unbounded)
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Input: `start` creates the process; then stdin, signals and resizes in order. The
            // client ending its side does not end the process (close_stdin does that).
            group.addTask {
                var process: ExecProcess?
                defer { if process == nil { started.finish() } }
                for try await message in request {
                    switch message.kind {
                    case .start(let start):
                        guard process == nil else {
                            throw RPCError(code: .invalidArgument, message: "exec: start sent twice")
                        }
                        let p = try await api { try await startProcess(start) }
                        process = p
                        started.yield(p)
                        started.finish()
                    case .stdin(let data):
                        guard let process else { throw Self.notStarted }
                        guard data.count <= 1 << 20 else {
                            throw RPCError(code: .invalidArgument, message: "exec: stdin messages are at most 1 MiB")
                        }
                        try await agentCall { try await process.write(ByteBuffer(bytes: data)) }
                    case .closeStdin:
                        guard let process else { throw Self.notStarted }
                        try await agentCall { try await process.closeStdin() }
                    case .signal(let number):
                        guard let process else { throw Self.notStarted }
                        try await agentCall { try await process.signal(number) }
                    case .resize(let size):
                        guard let process else { throw Self.notStarted }
                        try await agentCall { try await process.resize(rows: size.rows, cols: size.cols) }
                    case nil:
                        throw RPCError(code: .invalidArgument, message: "exec: empty message")
                    }
                }
            }
            var iterator = processes.makeAsyncIterator()
            guard let process = await iterator.next() else {
                // The input side failed (its error wins) or ended without `start`.
                try await group.next()
                throw RPCError(code: .invalidArgument, message: "exec: the first message must be start")
            }
            try await response.write(.with { $0.startedPid = process.pid })
            try await agentCall {
                for try await event in process {
                    switch event {
                    case .stdout(let bytes):
                        try await response.write(.with { $0.stdout = Data(bytes.readableBytesView) })
                    case .stderr(let bytes):
                        try await response.write(.with { $0.stderr = Data(bytes.readableBytesView) })
                    case .exit(let status):
                        try await response.write(
                            .with {
                                $0.exit = .with {
                                    if let code = status.exitCode { $0.exitCode = code }
                                    if let signal = status.signal { $0.signal = signal }
                                    $0.timedOut = status.timedOut
                                    $0.durationUs = Self.microseconds(status.duration)
                                }
                            })
                    }
                }
            }
            group.cancelAll()
        }
    }

    /// A guest-reported duration in µs, saturating (a hostile value must not trap the daemon).
    static func microseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000)
        let (total, carry) = whole.addingReportingOverflow(UInt64(attoseconds / 1_000_000_000_000))
        return overflow || carry ? .max : total
    }

    static let notStarted = RPCError(code: .invalidArgument, message: "exec: the first message must be start")

    private func startProcess(_ start: Limiquantix_Node_V1_ExecStart) async throws -> ExecProcess {
        let request = start.request
        guard !request.argv.isEmpty else { throw NodeError(.invalidSpec, "exec: argv is empty") }
        var options = ExecOptions(request.argv)
        options.environment = request.env
        if !request.cwd.isEmpty { options.workingDirectory = request.cwd }
        if !request.user.isEmpty { options.user = request.user }
        if request.pty {
            options.pty = (
                request.hasWindow ? request.window.rows : 24, request.hasWindow ? request.window.cols : 80
            )
        }
        if request.timeoutMs > 0 { options.timeout = .milliseconds(Int(request.timeoutMs)) }
        options.stdin = request.stdin
        let session = try await session(start.vm)
        return try await session.exec(options)
    }

    public func upload(
        request: RPCAsyncSequence<Limiquantix_Node_V1_UploadInput, any Error>, context: ServerContext
    ) async throws -> Limiquantix_Node_V1_TransferResult {
        let input = SequentialIterator(request.makeAsyncIterator())
        guard case .start(let start)? = try await input.next()?.kind else {
            throw RPCError(code: .invalidArgument, message: "upload: the first message must be start")
        }
        return try await api {
            let session = try await session(start.vm)
            var options = UploadOptions()
            options.mode = start.mode == 0 ? 0o644 : start.mode & 0o7777
            options.createParents = start.createParents
            options.noOverwrite = start.noOverwrite
            let result = try await session.upload(to: start.path, size: start.size, options: options) {
                while let message = try await input.next() {
                    guard case .data(let data) = message.kind else {
                        throw AgentError(.invalidArgument, "upload: only data may follow start")
                    }
                    if !data.isEmpty { return ByteBuffer(bytes: data) }
                }
                return nil
            }
            return .with {
                $0.size = result.size
                $0.sha256 = result.sha256
            }
        }
    }

    public func download(
        request: Limiquantix_Node_V1_DownloadRequest, response: RPCWriter<Limiquantix_Node_V1_DownloadOutput>,
        context: ServerContext
    ) async throws {
        try await api {
            let session = try await session(request.vm)
            let result = try await session.download(
                request.path,
                start: { size, mode in
                    try await response.write(
                        .with {
                            $0.start = .with {
                                $0.size = size
                                $0.mode = mode
                            }
                        })
                },
                receive: { bytes in try await response.write(.with { $0.data = Data(bytes.readableBytesView) }) })
            try await response.write(
                .with {
                    $0.result = .with {
                        $0.size = result.size
                        $0.sha256 = result.sha256
                    }
                })
        }
    }

    public func getTelemetry(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VMTelemetry
    {
        try await api {
            let status = try await managed(request.name)
            guard let telemetry = manager.latestTelemetry(request.name) else {
                throw NodeError(
                    .failedPrecondition,
                    status.state.isActive
                        ? "no telemetry from VM \(request.name) yet: its agent has not answered"
                        : "VM \(request.name) is not running")
            }
            return telemetry.proto
        }
    }

    public func watchTelemetry(
        request: Limiquantix_Node_V1_VMRef, response: RPCWriter<Limiquantix_Node_V1_VMTelemetry>,
        context: ServerContext
    ) async throws {
        try await api { _ = try await managed(request.name) }
        let samples = manager.watchTelemetry(request.name)
        if let latest = manager.latestTelemetry(request.name) { try await response.write(latest.proto) }
        for await sample in samples { try await response.write(sample.proto) }
    }

    // MARK: node

    public func getNodeInfo(request: Limiquantix_Node_V1_NodeInfoRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_NodeInfo
    {
        try await api {
            let inventory = HostInventory.detect()
            let hypervisorInfo = try await hypervisor.hypervisorInfo()
            let counts = manager.counts()
            return NodeInfoProto.make(
                name: nodeName, inventory: inventory, hypervisor: hypervisorInfo, counts: counts)
        }
    }

    // MARK: helpers

    /// The status of a VM this node manages, or not_found.
    private func managed(_ name: String) async throws(NodeError) -> VMStatus {
        guard let status = try await hypervisor.managedStatus(name) else {
            throw NodeError(.notFound, "no VM named \(name) on this node")
        }
        return status
    }

    private func vm(named name: String) async throws(NodeError) -> Limiquantix_Node_V1_VM {
        vm(try await managed(name))
    }

    private func vm(_ status: VMStatus) -> Limiquantix_Node_V1_VM {
        let info = manager.agentInfo(status.name)
        let connected = manager.agentConnected(status.name)
        return .with {
            $0.name = status.name
            $0.uuid = status.uuid
            $0.state = status.state.proto
            if let spec = status.spec { $0.spec = spec.proto }
            $0.agent = .with {
                $0.connected = connected
                if let info {
                    $0.agentVersion = info.agentVersion
                    $0.osPrettyName = info.os.prettyName
                    $0.hostname = info.hostname
                    $0.bootID = info.bootID
                }
            }
            $0.consoleLog = status.consoleLog
            $0.agentSocket = status.agentSocket
        }
    }

    private func session(_ vm: String) async throws -> AgentSession {
        _ = try await managed(vm)
        return try await manager.agentSession(vm, timeout: agentTimeout)
    }

    /// Runs an operation, turning node and agent errors into gRPC status errors.
    private func api<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as NodeError {
            throw Self.rpcError(error)
        } catch let error as AgentError {
            throw Self.rpcError(error)
        }
    }

    private func agentCall<T>(_ body: () async throws -> T) async throws -> T { try await api(body) }

    static func rpcError(_ error: NodeError) -> RPCError {
        let code: RPCError.Code =
            switch error.code {
            case .invalidSpec: .invalidArgument
            case .alreadyExists: .alreadyExists
            case .notFound: .notFound
            case .failedPrecondition: .failedPrecondition
            case .hypervisor, .io: .internalError
            case .timeout: .deadlineExceeded
            }
        return RPCError(code: code, message: error.message, metadata: [errorCodeKey: .string(error.code.rawValue)])
    }

    static func rpcError(_ error: AgentError) -> RPCError {
        let code: RPCError.Code =
            switch error.code {
            case .notFound: .notFound
            case .invalidArgument: .invalidArgument
            case .alreadyExists: .alreadyExists
            case .denied: .permissionDenied
            case .timeout: .deadlineExceeded
            case .unavailable, .closed: .unavailable
            case .tooManyStreams: .resourceExhausted
            case .cancelled: .cancelled
            case .unsupported: .unimplemented
            case .checksumMismatch: .dataLoss
            default: .internalError
            }
        return RPCError(
            code: code, message: "guest: \(error.message)",
            metadata: [errorCodeKey: .string("agent." + error.code.rawValue)])
    }
}

/// Hands out an iterator's elements to one consumer at a time (the upload source is called again
/// only after the previous call returned, so the iterator is never used concurrently).
final class SequentialIterator<Base: AsyncIteratorProtocol>: @unchecked Sendable where Base.Element: Sendable {
    private var base: Base
    init(_ base: Base) { self.base = base }
    func next() async throws -> Base.Element? { try await base.next() }
}

extension VMTelemetry {
    var proto: Limiquantix_Node_V1_VMTelemetry {
        .with {
            $0.vm = vm
            $0.receivedUnixMs = receivedUnixMilliseconds
            $0.sample = sample
        }
    }
}
