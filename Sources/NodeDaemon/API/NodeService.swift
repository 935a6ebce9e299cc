import AgentProtocol
import Foundation
import GRPCCore
import HostBroker
import LQXModel
import LQXServer
import LQXTypes
import NIOCore
import NodeAPI
import NodeCore
import Synchronization

/// The node's gRPC API (proto/limiquantix/node/v1/node.proto): VM lifecycle through the
/// hypervisor, in-guest operations through each VM's agent session.
public struct NodeService: Limiquantix_Node_V1_Node.SimpleServiceProtocol {
    let controller: VMController
    let nodeName: String
    /// The highest placement epoch seen per VM (lifecycle calls carrying a lower one are refused).
    let epochs: EpochLedger
    var manager: VMManager { controller.manager }

    /// Serves `controller`'s VMs as node `nodeName`, checking epochs against `epochs`.
    public init(controller: VMController, nodeName: String, epochs: EpochLedger) {
        self.controller = controller
        self.nodeName = nodeName
        self.epochs = epochs
    }

    /// The gRPC metadata key carrying the stable error code (`invalid_spec`, `not_found`, …).
    public static let errorCodeKey = "lqx-error-code"

    // MARK: VM lifecycle

    /// The `CreateVM` RPC: validates the spec and defines the VM, stopped.
    public func createVM(request: Limiquantix_Node_V1_CreateVMRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            let spec = VMSpec(request.spec)
            try epochs.admit(spec.name, epoch: request.epoch)
            return vm(try await controller.create(spec))
        }
    }

    /// The `PrepareIncomingVM` RPC.
    public func prepareIncomingVM(request: Limiquantix_Node_V1_CreateVMRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_PrepareIncomingVMResponse
    {
        try await api {
            let spec = VMSpec(request.spec)
            try epochs.admit(spec.name, epoch: request.epoch)
            try await controller.prepareIncoming(spec)
            return Limiquantix_Node_V1_PrepareIncomingVMResponse()
        }
    }

    /// The `StartVM` RPC.
    public func startVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            try epochs.admit(request.name, epoch: request.epoch)
            return vm(try await controller.start(request.name))
        }
    }

    /// The `StopVM` RPC: graceful (agent, then ACPI, then forced after the timeout) or forced.
    public func stopVM(request: Limiquantix_Node_V1_StopVMRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_StopVMResponse
    {
        try await api {
            try epochs.admit(request.name, epoch: request.epoch)
            let mode: VMController.StopMode =
                request.force
                ? .force : .graceful(timeout: request.timeoutSeconds == 0 ? nil : .seconds(request.timeoutSeconds))
            let outcome = try await controller.stop(request.name, mode: mode)
            let vm = vm(outcome.status)
            return .with {
                $0.vm = vm
                $0.method =
                    switch outcome.method {
                    case .agent: .agent
                    case .acpi: .acpi
                    case .forced: .forced
                    case .alreadyStopped: .alreadyStopped
                    }
            }
        }
    }

    /// The `RebootVM` RPC.
    public func rebootVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            try epochs.admit(request.name, epoch: request.epoch)
            return vm(try await controller.reboot(request.name))
        }
    }

    /// The `PauseVM` RPC.
    public func pauseVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            try epochs.admit(request.name, epoch: request.epoch)
            return vm(try await controller.pause(request.name))
        }
    }

    /// The `ResumeVM` RPC.
    public func resumeVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            try epochs.admit(request.name, epoch: request.epoch)
            return vm(try await controller.resume(request.name))
        }
    }

    /// The `DeleteVM` RPC.
    public func deleteVM(request: Limiquantix_Node_V1_DeleteVMRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_DeleteVMResponse
    {
        try await api {
            try epochs.admit(request.name, epoch: request.epoch)
            try await controller.delete(request.name, force: request.force, keepDisks: request.keepDisks)
            return Limiquantix_Node_V1_DeleteVMResponse()
        }
    }

    /// The `GetVM` RPC.
    public func getVM(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api { vm(try await controller.status(request.name)) }
    }

    /// The `ListVMs` RPC.
    public func listVMs(request: Limiquantix_Node_V1_ListVMsRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_ListVMsResponse
    {
        try await api {
            let vms = try await controller.list().map(vm)
            return .with { $0.vms = vms }
        }
    }

    // MARK: snapshots, disks, console, migration

    /// The `CreateSnapshot` RPC.
    public func createSnapshot(request: Limiquantix_Node_V1_CreateSnapshotRequest, context: ServerContext)
        async throws -> Limiquantix_Node_V1_Snapshot
    {
        try await api {
            try await controller.createSnapshot(
                request.vm, name: request.name.isEmpty ? nil : request.name, description: request.description_p
            ).proto
        }
    }

    /// The `RevertSnapshot` RPC.
    public func revertSnapshot(request: Limiquantix_Node_V1_SnapshotRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api { vm(try await controller.revertSnapshot(request.vm, name: request.name)) }
    }

    /// The `DeleteSnapshot` RPC.
    public func deleteSnapshot(request: Limiquantix_Node_V1_SnapshotRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_DeleteSnapshotResponse
    {
        try await api {
            try await controller.deleteSnapshot(request.vm, name: request.name)
            return Limiquantix_Node_V1_DeleteSnapshotResponse()
        }
    }

    /// The `ListSnapshots` RPC.
    public func listSnapshots(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_ListSnapshotsResponse
    {
        try await api {
            let snapshots = try await controller.snapshots(request.name).map(\.proto)
            return .with { $0.snapshots = snapshots }
        }
    }

    /// The `AttachDisk` RPC.
    public func attachDisk(request: Limiquantix_Node_V1_AttachDiskRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api { vm(try await controller.attachDisk(request.vm, DiskSpec(request.disk))) }
    }

    /// The `DetachDisk` RPC.
    public func detachDisk(request: Limiquantix_Node_V1_DetachDiskRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VM
    {
        try await api {
            vm(try await controller.detachDisk(request.vm, target: request.target, deleteImage: request.deleteImage))
        }
    }

    /// The `GetConsole` RPC.
    public func getConsole(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_ConsoleInfo
    {
        try await api {
            let console = try await controller.console(request.name)
            return .with {
                $0.serialLog = console.serialLog
                $0.pty = console.pty ?? ""
                $0.vnc = console.vnc ?? ""
            }
        }
    }

    /// The `MigrateVM` RPC: progress about once a second; cancelling the call aborts the migration.
    public func migrateVM(
        request: Limiquantix_Node_V1_MigrateVMRequest, response: RPCWriter<Limiquantix_Node_V1_MigrationProgress>,
        context: ServerContext
    ) async throws {
        try await api {
            try epochs.admit(request.name, epoch: request.epoch)
            let migration = try MigrationRequest(
                destinationURI: request.destinationUri,
                migrationAddress: request.migrationAddress.isEmpty ? nil : request.migrationAddress,
                maxDowntimeMilliseconds: request.maxDowntimeMs, bandwidthMiBps: request.bandwidthMibps)
            let (updates, input) = AsyncStream.makeStream(of: JobProgress.self, bufferingPolicy: .bufferingNewest(1))
            let controller = self.controller, cancelled = RPCCancelled()
            // The migration is a child of this call. When the RPC is cancelled (the client went
            // away, a deadline passed, the server is stopping), the progress loop ends and the
            // migration task is cancelled, which aborts the hypervisor's job.
            try await withRPCCancellationHandler {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        defer { input.finish() }
                        try await controller.migrate(request.name, migration) { input.yield($0) }
                    }
                    for await job in updates {
                        try await response.write(
                            .with {
                                $0.dataTotalBytes = job.dataTotal
                                $0.dataProcessedBytes = job.dataProcessed
                                $0.dataRemainingBytes = job.dataRemaining
                                $0.elapsedMs = job.elapsedMilliseconds
                            })
                    }
                    if cancelled.isSet { group.cancelAll() }
                    try await group.waitForAll()
                }
            } onCancelRPC: {
                cancelled.set()
                input.finish()
            }
            try await response.write(.with { $0.done = true })
        }
    }

    // MARK: in-guest operations

    /// The `Exec` RPC: `start` first, then stdin, signals and resizes; output and the exit status back.
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
        guard !request.argv.isEmpty else { throw LQXError(.invalidSpec, "exec: argv is empty") }
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
        let session = try await controller.session(start.vm)
        return try await session.exec(options)
    }

    /// The `Upload` RPC: `start`, then data, relayed to the agent with its hash checked.
    public func upload(
        request: RPCAsyncSequence<Limiquantix_Node_V1_UploadInput, any Error>, context: ServerContext
    ) async throws -> Limiquantix_Types_V1_TransferResult {
        let input = SequentialIterator(request.makeAsyncIterator())
        guard case .start(let start)? = try await input.next()?.kind else {
            throw RPCError(code: .invalidArgument, message: "upload: the first message must be start")
        }
        return try await api {
            let session = try await controller.session(start.vm)
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

    /// The `Download` RPC: the file's size and mode, its data, then size and hash.
    public func download(
        request: Limiquantix_Node_V1_DownloadRequest, response: RPCWriter<Limiquantix_Node_V1_DownloadOutput>,
        context: ServerContext
    ) async throws {
        try await api {
            let session = try await controller.session(request.vm)
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

    /// The `GetTelemetry` RPC: the latest in-guest sample.
    public func getTelemetry(request: Limiquantix_Node_V1_VMRef, context: ServerContext) async throws
        -> Limiquantix_Node_V1_VMTelemetry
    {
        try await api { try await controller.telemetry(request.name).proto }
    }

    /// The `WatchTelemetry` RPC: the latest sample, then each new one.
    public func watchTelemetry(
        request: Limiquantix_Node_V1_VMRef, response: RPCWriter<Limiquantix_Node_V1_VMTelemetry>,
        context: ServerContext
    ) async throws {
        let (latest, samples) = try await api { try await controller.watchTelemetry(request.name) }
        if let latest { try await response.write(latest.proto) }
        for await sample in samples { try await response.write(sample.proto) }
    }

    /// The `WatchAllTelemetry` RPC: the latest sample of every VM, then each new one.
    public func watchAllTelemetry(
        request: Limiquantix_Node_V1_WatchAllTelemetryRequest, response: RPCWriter<Limiquantix_Node_V1_VMTelemetry>,
        context: ServerContext
    ) async throws {
        let (latest, samples) = manager.watchAllTelemetry()
        for sample in latest { try await response.write(sample.proto) }
        for await sample in samples { try await response.write(sample.proto) }
    }

    // MARK: node

    /// The `GetNodeInfo` RPC: inventory, hypervisor and counts.
    public func getNodeInfo(request: Limiquantix_Node_V1_NodeInfoRequest, context: ServerContext) async throws
        -> Limiquantix_Node_V1_NodeInfo
    {
        try await api {
            let inventory = HostInventory.detect()
            let hypervisorInfo = try await controller.hypervisor.hypervisorInfo()
            let counts = manager.counts()
            return NodeInfoProto.make(
                name: nodeName, inventory: inventory, hypervisor: hypervisorInfo, counts: counts)
        }
    }

    // MARK: helpers

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

    /// Runs an operation, turning node and agent errors into gRPC status errors.
    private func api<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as LQXError {
            throw Self.rpcError(error)
        } catch let error as AgentError {
            throw Self.rpcError(error)
        }
    }

    private func agentCall<T>(_ body: () async throws -> T) async throws -> T { try await api(body) }

    static func rpcError(_ error: LQXError) -> RPCError {
        let codes: [LQXError.Code: RPCError.Code] = [
            .invalidSpec: .invalidArgument, .alreadyExists: .alreadyExists, .notFound: .notFound,
            .failedPrecondition: .failedPrecondition, .timeout: .deadlineExceeded, .staleEpoch: .failedPrecondition,
        ]
        return RPCError(
            code: codes[error.code] ?? .internalError, message: error.fullMessage,
            metadata: [errorCodeKey: .string(error.code.rawValue)])
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

/// Set once when an RPC is cancelled (from gRPC's cancellation handler).
final class RPCCancelled: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .releasing) }
    var isSet: Bool { flag.load(ordering: .acquiring) }
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
            $0.sample = Limiquantix_Types_V1_TelemetrySample(sample)
        }
    }
}

extension Limiquantix_Types_V1_TelemetrySample {
    /// A guest's sample as the node API's message. node.v1 keeps the agent protocol's field names
    /// and numbers for it (node.proto), so the agent message's encoding is this message's;
    /// `NodeMessageTests` checks every field, and fails first should the schemas ever diverge.
    init(_ sample: TelemetrySample) {
        do {
            self = try Self(serializedBytes: sample.wire.serializedBytes() as [UInt8])
        } catch {
            // Unreachable: encoding a message built in memory and decoding it under the same
            // numbering cannot fail.
            self = Self()
        }
    }
}
