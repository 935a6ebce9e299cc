import ControlPlane
import ControlPlaneAPI
import GRPCCore
import LQXModel
import LQXServer
import LQXTypes
import NodeAPI
import SwiftProtobuf

/// The rest of a request stream after its first message, handed from the handler to the task
/// that forwards it to the node.
final class RemainingMessages<Element: Sendable>: @unchecked Sendable {
    // Safe: the handler reads the first message, then only the node call's request producer
    // iterates, one task at a time.
    private var iterator: RPCAsyncSequence<Element, any Error>.AsyncIterator

    init(_ sequence: RPCAsyncSequence<Element, any Error>) { iterator = sequence.makeAsyncIterator() }

    func next() async throws -> Element? { try await iterator.next() }
}

/// A message re-read as another type with the same fields and numbers (compute.v1 and node.v1
/// share the in-guest messages apart from how the VM is named).
func transcode<Target: SwiftProtobuf.Message>(_ message: some SwiftProtobuf.Message) throws -> Target {
    try Target(serializedBytes: try message.serializedBytes() as [UInt8])
}

extension VMService {
    /// The caller's principal, or the call fails before any stream is opened.
    func principal(_ metadata: Metadata, _ context: ServerContext) async throws -> Principal {
        try await RPCErrorMapping.mapping { try await auth.principal(metadata, context: context) }
    }

    func exec(request: StreamingServerRequest<Limiquantix_Compute_V1_ExecInput>, context: ServerContext)
        async throws -> StreamingServerResponse<Limiquantix_Compute_V1_ExecOutput>
    {
        let principal = try await principal(request.metadata, context)
        let guest = self.guest
        return StreamingServerResponse { writer in
            try await RPCErrorMapping.mapping {
                let inputs = RemainingMessages(request.messages)
                guard let first = try await inputs.next(), case .start(let start)? = first.kind else {
                    throw LQXError(.invalidSpec, "an exec stream must begin with start")
                }
                guard !start.request.argv.isEmpty else { throw LQXError(.invalidSpec, "request.argv is empty") }
                let project = Self.project(start.vm, principal)
                let (vm, node) = try await guest.target(
                    project: project, name: start.vm.name, by: principal, .operator, to: "run commands")
                let id = vm.meta.id
                let command = start.request.argv.joined(separator: " ")
                let outcome: String
                do throws(LQXError) {
                    outcome = try await guest.nodes.with(node) { stub in
                        try await stub.exec(
                            options: ClientTransport.failFast,
                            requestProducer: { nodeWriter in
                                try await nodeWriter.write(
                                    .with {
                                        $0.start = .with {
                                            $0.vm = id
                                            $0.request = start.request
                                        }
                                    })
                                while let input = try await inputs.next() {
                                    if case .start? = input.kind {
                                        throw LQXError(.invalidSpec, "start may only be the first message")
                                    }
                                    try await nodeWriter.write(try transcode(input))
                                }
                            },
                            onResponse: { response in
                                var outcome = "ended without an exit status"
                                for try await output in response.messages {
                                    if case .exit(let exit)? = output.kind { outcome = Self.describe(exit) }
                                    try await writer.write(try transcode(output))
                                }
                                return outcome
                            })
                    }
                } catch {
                    try? await guest.cluster.recordAudit(
                        principal, vm: vm, action: "exec", detail: command, result: error.fullMessage)
                    throw error
                }
                try await guest.cluster.recordAudit(principal, vm: vm, action: "exec", detail: command, result: outcome)
                return [:]
            }
        }
    }

    static func describe(_ exit: Limiquantix_Types_V1_ExecExit) -> String {
        var text =
            switch exit.status {
            case .exitCode(let code): "exit \(code)"
            case .signal(let signal): "signal \(signal)"
            case nil: "no status"
            }
        if exit.timedOut { text += " (timed out)" }
        return text
    }

    func upload(request: StreamingServerRequest<Limiquantix_Compute_V1_UploadInput>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Types_V1_TransferResult>
    {
        let principal = try await principal(request.metadata, context)
        return ServerResponse(
            message: try await RPCErrorMapping.mapping {
                let inputs = RemainingMessages(request.messages)
                guard let first = try await inputs.next(), case .start(let start)? = first.kind else {
                    throw LQXError(.invalidSpec, "an upload stream must begin with start")
                }
                let (vm, node) = try await guest.target(
                    project: Self.project(start.vm, principal), name: start.vm.name, by: principal, .operator,
                    to: "copy files")
                let id = vm.meta.id
                let detail = "\(start.path) (\(start.size) bytes)"
                do throws(LQXError) {
                    let result = try await guest.nodes.with(node) { stub in
                        try await stub.upload(
                            options: ClientTransport.failFast,
                            requestProducer: { nodeWriter in
                                var begin: Limiquantix_Node_V1_UploadStart = try transcode(start)
                                begin.vm = id
                                try await nodeWriter.write(.with { $0.start = begin })
                                while let input = try await inputs.next() {
                                    guard case .data? = input.kind else {
                                        throw LQXError(.invalidSpec, "start may only be the first message")
                                    }
                                    try await nodeWriter.write(try transcode(input))
                                }
                            })
                    }
                    try await guest.cluster.recordAudit(
                        principal, vm: vm, action: "upload", detail: detail, result: "sha256 \(result.sha256)")
                    return result
                } catch {
                    try? await guest.cluster.recordAudit(
                        principal, vm: vm, action: "upload", detail: detail, result: error.fullMessage)
                    throw error
                }
            })
    }

    func download(request: ServerRequest<Limiquantix_Compute_V1_DownloadRequest>, context: ServerContext)
        async throws -> StreamingServerResponse<Limiquantix_Compute_V1_DownloadOutput>
    {
        let principal = try await principal(request.metadata, context)
        let m = request.message
        let guest = self.guest
        let (vm, node) = try await RPCErrorMapping.mapping {
            try await guest.target(
                project: Self.project(m.vm, principal), name: m.vm.name, by: principal, .operator, to: "copy files")
        }
        return StreamingServerResponse { writer in
            try await RPCErrorMapping.mapping {
                let id = vm.meta.id
                do throws(LQXError) {
                    let sha = try await guest.nodes.with(node) { stub in
                        try await stub.download(
                            .with {
                                $0.vm = id
                                $0.path = m.path
                            }, options: ClientTransport.failFast
                        ) { response in
                            var sha = ""
                            for try await output in response.messages {
                                if case .result(let result)? = output.kind { sha = result.sha256 }
                                try await writer.write(try transcode(output))
                            }
                            return sha
                        }
                    }
                    try await guest.cluster.recordAudit(
                        principal, vm: vm, action: "download", detail: m.path, result: "sha256 \(sha)")
                } catch {
                    try? await guest.cluster.recordAudit(
                        principal, vm: vm, action: "download", detail: m.path, result: error.fullMessage)
                    throw error
                }
                return [:]
            }
        }
    }

    func getTelemetry(request: ServerRequest<Limiquantix_Compute_V1_TelemetryRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_TelemetryHistory>
    {
        try await unary(request.metadata, context) { principal in
            let m = request.message
            let (vm, node) = try await guest.target(
                project: Self.project(m.vm, principal), name: m.vm.name, by: principal, .viewer, to: "read metrics")
            let id = vm.meta.id
            if m.sinceSeconds > 0 {
                guard let collector = guest.telemetry else {
                    throw LQXError(.failedPrecondition, "this control plane keeps no telemetry history")
                }
                let since = Cluster.wallClock() - Int64(m.sinceSeconds) * 1000
                return .with {
                    $0.samples = collector.history(id, sinceUnixMs: since).map { point in
                        Self.telemetry(
                            .with {
                                $0.vm = id
                                $0.receivedUnixMs = point.receivedUnixMs
                                $0.sample = point.sample
                            }, vm, node)
                    }
                }
            }
            if let latest = guest.telemetry?.latest(id) {
                return .with {
                    $0.samples = [
                        Self.telemetry(
                            .with {
                                $0.vm = id
                                $0.receivedUnixMs = latest.point.receivedUnixMs
                                $0.sample = latest.point.sample
                            }, vm, node)
                    ]
                }
            }
            let fetched = try await guest.nodes.with(node) { stub in
                try await stub.getTelemetry(.with { $0.name = id }, options: ClientTransport.failFast)
            }
            return .with { $0.samples = [Self.telemetry(fetched, vm, node)] }
        }
    }

    func watchTelemetry(request: ServerRequest<Limiquantix_Compute_V1_VMRef>, context: ServerContext) async throws
        -> StreamingServerResponse<Limiquantix_Compute_V1_VMTelemetry>
    {
        let principal = try await principal(request.metadata, context)
        let ref = request.message
        let guest = self.guest
        let (vm, node) = try await RPCErrorMapping.mapping {
            try await guest.target(
                project: Self.project(ref, principal), name: ref.name, by: principal, .viewer, to: "read metrics")
        }
        return StreamingServerResponse { writer in
            try await RPCErrorMapping.mapping {
                let id = vm.meta.id
                try await guest.nodes.with(node) { stub in
                    try await stub.watchTelemetry(.with { $0.name = id }, options: ClientTransport.failFast) {
                        response in
                        for try await sample in response.messages {
                            try await writer.write(Self.telemetry(sample, vm, node))
                        }
                    }
                }
                return [:]
            }
        }
    }

    static func telemetry(_ sample: Limiquantix_Node_V1_VMTelemetry, _ vm: VirtualMachine, _ node: Node)
        -> Limiquantix_Compute_V1_VMTelemetry
    {
        .with {
            $0.vm = vm.meta.name
            $0.project = vm.meta.project
            $0.node = node.meta.name
            $0.receivedUnixMs = sample.receivedUnixMs
            $0.sample = sample.sample
        }
    }
}
