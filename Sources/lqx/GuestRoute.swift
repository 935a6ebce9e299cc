#if NodeClient
    import ControlPlaneAPI
    import Foundation
    import GRPCCore
    import LQXServer
    import LQXTypes
    import NodeAPI
    import SwiftProtobuf

    /// How `exec`, `cp` and `metrics` reach a VM by name: straight to one node daemon
    /// (`--node`), or through the control plane, which relays to the VM's node. The node API's
    /// in-guest messages are the commands' own; the cluster API shares their fields and numbers
    /// apart from how the VM is named, so they are re-read as its messages on the way.
    enum GuestRoute: Sendable {
        case node(NodeTarget)
        case cluster(ClusterEndpoint)

        /// Where errors say the call went.
        var peer: String {
            switch self {
            case .node(let target): "the node at \(target.address)"
            case .cluster(let endpoint): "the control plane at \(endpoint.address)"
            }
        }

        func exec<R: Sendable>(
            requestProducer: @Sendable @escaping (RPCWriter<Limiquantix_Node_V1_ExecInput>) async throws -> Void,
            onResponse:
                @Sendable @escaping (RPCAsyncSequence<Limiquantix_Node_V1_ExecOutput, any Error>) async throws -> R
        ) async throws -> R {
            switch self {
            case .node(let target):
                return try await NodeConnection.with(target) { stub in
                    try await stub.exec(
                        options: NodeConnection.callOptions, requestProducer: requestProducer,
                        onResponse: { try await onResponse($0.messages) })
                }
            case .cluster(let endpoint):
                let ref = endpoint.ref, metadata = endpoint.metadata
                return try await endpoint.vms { client in
                    try await client.exec(
                        metadata: metadata, options: ClientTransport.failFast,
                        requestProducer: { writer in
                            try await requestProducer(
                                RPCWriter(
                                    wrapping: Rewriting(writer) { (input: Limiquantix_Node_V1_ExecInput) in
                                        guard case .start(let start)? = input.kind else { return try reread(input) }
                                        return .with {
                                            $0.start = .with {
                                                $0.vm = ref(start.vm)
                                                $0.request = start.request
                                            }
                                        }
                                    }))
                        },
                        onResponse: { response in try await onResponse(reread(response.messages)) })
                }
            }
        }

        func upload(
            requestProducer: @Sendable @escaping (RPCWriter<Limiquantix_Node_V1_UploadInput>) async throws -> Void
        ) async throws -> Limiquantix_Types_V1_TransferResult {
            switch self {
            case .node(let target):
                return try await NodeConnection.with(target) { stub in
                    try await stub.upload(
                        options: NodeConnection.callOptions, requestProducer: requestProducer,
                        onResponse: { try $0.message })
                }
            case .cluster(let endpoint):
                let ref = endpoint.ref, metadata = endpoint.metadata
                return try await endpoint.vms { client in
                    try await client.upload(
                        metadata: metadata, options: ClientTransport.failFast,
                        requestProducer: { writer in
                            try await requestProducer(
                                RPCWriter(
                                    wrapping: Rewriting(writer) { (input: Limiquantix_Node_V1_UploadInput) in
                                        guard case .start(let start)? = input.kind else { return try reread(input) }
                                        return .with {
                                            $0.start = .with {
                                                $0.vm = ref(start.vm)
                                                $0.path = start.path
                                                $0.size = start.size
                                                $0.mode = start.mode
                                                $0.createParents = start.createParents
                                                $0.noOverwrite = start.noOverwrite
                                            }
                                        }
                                    }))
                        })
                }
            }
        }

        func download<R: Sendable>(
            vm: String, path: String,
            onResponse:
                @Sendable @escaping (RPCAsyncSequence<Limiquantix_Node_V1_DownloadOutput, any Error>) async throws
                -> R
        ) async throws -> R {
            switch self {
            case .node(let target):
                return try await NodeConnection.with(target) { stub in
                    try await stub.download(
                        .with {
                            $0.vm = vm
                            $0.path = path
                        }, options: NodeConnection.callOptions
                    ) { try await onResponse($0.messages) }
                }
            case .cluster(let endpoint):
                let ref = endpoint.ref, metadata = endpoint.metadata
                return try await endpoint.vms { client in
                    try await client.download(
                        .with {
                            $0.vm = ref(vm)
                            $0.path = path
                        }, metadata: metadata, options: ClientTransport.failFast
                    ) { try await onResponse(reread($0.messages)) }
                }
            }
        }

        /// The VM's latest in-guest telemetry sample.
        func telemetry(vm: String) async throws -> Limiquantix_Types_V1_TelemetrySample {
            switch self {
            case .node(let target):
                return try await NodeConnection.with(target) {
                    try await $0.getTelemetry(.with { $0.name = vm }, options: NodeConnection.callOptions).sample
                }
            case .cluster(let endpoint):
                let ref = endpoint.ref, metadata = endpoint.metadata
                let history = try await endpoint.vms { client in
                    try await client.getTelemetry(.with { $0.vm = ref(vm) }, metadata: metadata)
                }
                guard let last = history.samples.last else { throw CLIError("no telemetry for \(vm) yet") }
                return last.sample
            }
        }
    }

    extension AgentOptions {
        /// The route to a VM by name: `--node`, else the control plane when one is configured;
        /// nil with `--agent` (or nothing configured: the agent path reports what is missing).
        func guestRoute() throws -> GuestRoute? {
            guard agent == nil else { return nil }
            if let node = nodeAddress {
                return .node(try NodeTarget(address: node, credentials: nodeCredentialsDirectory))
            }
            if cluster.configured { return .cluster(try cluster.endpoint()) }
            return nil
        }
    }

    extension GuestRoute {
        /// Calls `body` with each sample of the VM as its node collects it, until cancelled.
        func watchTelemetry(
            vm: String, _ body: @Sendable @escaping (Limiquantix_Types_V1_TelemetrySample) async throws -> Void
        ) async throws {
            switch self {
            case .node(let target):
                try await NodeConnection.with(target) { stub in
                    try await stub.watchTelemetry(.with { $0.name = vm }, options: NodeConnection.callOptions) {
                        for try await telemetry in $0.messages { try await body(telemetry.sample) }
                    }
                }
            case .cluster(let endpoint):
                let ref = endpoint.ref, metadata = endpoint.metadata
                try await endpoint.vms { client in
                    try await client.watchTelemetry(ref(vm), metadata: metadata) {
                        for try await telemetry in $0.messages { try await body(telemetry.sample) }
                    }
                }
            }
        }
    }

    /// A message re-read as another type with the same fields and numbers.
    func reread<Target: SwiftProtobuf.Message>(_ message: some SwiftProtobuf.Message) throws -> Target {
        try Target(serializedBytes: try message.serializedBytes() as [UInt8])
    }

    /// A stream of messages re-read as another type.
    func reread<Source: SwiftProtobuf.Message & Sendable, Target: SwiftProtobuf.Message & Sendable>(
        _ messages: RPCAsyncSequence<Source, any Error>
    ) -> RPCAsyncSequence<Target, any Error> {
        RPCAsyncSequence(wrapping: messages.map { (message: Source) throws -> Target in try reread(message) })
    }

    /// A writer that rewrites each element for the writer underneath.
    struct Rewriting<Element: Sendable, Base: Sendable>: RPCWriterProtocol {
        let base: RPCWriter<Base>
        let rewrite: @Sendable (Element) throws -> Base

        init(_ base: RPCWriter<Base>, _ rewrite: @escaping @Sendable (Element) throws -> Base) {
            self.base = base
            self.rewrite = rewrite
        }

        func write(_ element: Element) async throws { try await base.write(try rewrite(element)) }

        func write(contentsOf elements: some Sequence<Element>) async throws {
            for element in elements { try await write(element) }
        }
    }
#endif
