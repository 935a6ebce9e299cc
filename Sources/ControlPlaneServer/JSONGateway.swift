import ControlPlaneAPI
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import GRPCProtobuf
import LQXModel
import LQXServer
import ServiceLifecycle
import SwiftProtobuf

/// Every unary call of the cluster API as HTTP POST with a JSON body at
/// `/limiquantix.compute.v1.<Service>/<Method>` (the Connect protocol's unary JSON form), on the
/// control plane's HTTPS listener. Each request is decoded with protobuf's JSON mapping, made as
/// the gRPC call on the control plane's own API (with the caller's `Authorization` header), and
/// the answer encoded back; an error is `{"code": "not_found", "message": …}` with the HTTP status
/// Connect gives that code. So the JSON form can never do more, or less, than the gRPC one.
final class JSONGateway: Service, Sendable {
    typealias Client = GRPCClient<HTTP2ClientTransport.Posix>
    typealias Call = @Sendable (Client, String, Metadata) async throws -> String

    /// The largest request body taken (the API's messages are small; exec and cp are gRPC only).
    static let maximumBody = 4 << 20
    let api: @Sendable () async throws(LQXError) -> HostPort
    let security: ClientSecurity
    let client = OneShot<Client>()
    let calls: [String: Call]
    /// The API's `FailureLimiter.proxyKey`, sent with each client's address.
    let proxyKey: String

    /// A gateway to the API at `api()` (known once bound), trusting it with `security`.
    init(
        api: @escaping @Sendable () async throws(LQXError) -> HostPort, security: ClientSecurity, proxyKey: String
    ) {
        self.api = api
        self.security = security
        self.proxyKey = proxyKey
        typealias VMs = Limiquantix_Compute_V1_VMService.Method
        typealias Nodes = Limiquantix_Compute_V1_NodeService.Method
        typealias Projects = Limiquantix_Compute_V1_ProjectService.Method
        typealias Tokens = Limiquantix_Compute_V1_TokenService.Method
        typealias Events = Limiquantix_Compute_V1_EventService.Method
        typealias Settings = Limiquantix_Compute_V1_ClusterService.Method
        calls = Dictionary(uniqueKeysWithValues: [
            Self.unary(VMs.CreateVM.descriptor, VMs.CreateVM.Input.self, VMs.CreateVM.Output.self),
            Self.unary(VMs.GetVM.descriptor, VMs.GetVM.Input.self, VMs.GetVM.Output.self),
            Self.unary(VMs.ListVMs.descriptor, VMs.ListVMs.Input.self, VMs.ListVMs.Output.self),
            Self.unary(VMs.UpdateVM.descriptor, VMs.UpdateVM.Input.self, VMs.UpdateVM.Output.self),
            Self.unary(VMs.StartVM.descriptor, VMs.StartVM.Input.self, VMs.StartVM.Output.self),
            Self.unary(VMs.StopVM.descriptor, VMs.StopVM.Input.self, VMs.StopVM.Output.self),
            Self.unary(VMs.RestartVM.descriptor, VMs.RestartVM.Input.self, VMs.RestartVM.Output.self),
            Self.unary(VMs.PauseVM.descriptor, VMs.PauseVM.Input.self, VMs.PauseVM.Output.self),
            Self.unary(VMs.ResumeVM.descriptor, VMs.ResumeVM.Input.self, VMs.ResumeVM.Output.self),
            Self.unary(VMs.DeleteVM.descriptor, VMs.DeleteVM.Input.self, VMs.DeleteVM.Output.self),
            Self.unary(VMs.ExplainVM.descriptor, VMs.ExplainVM.Input.self, VMs.ExplainVM.Output.self),
            Self.unary(VMs.GetTelemetry.descriptor, VMs.GetTelemetry.Input.self, VMs.GetTelemetry.Output.self),
            Self.unary(Nodes.ListNodes.descriptor, Nodes.ListNodes.Input.self, Nodes.ListNodes.Output.self),
            Self.unary(Nodes.GetNode.descriptor, Nodes.GetNode.Input.self, Nodes.GetNode.Output.self),
            Self.unary(Nodes.CordonNode.descriptor, Nodes.CordonNode.Input.self, Nodes.CordonNode.Output.self),
            Self.unary(Nodes.UncordonNode.descriptor, Nodes.UncordonNode.Input.self, Nodes.UncordonNode.Output.self),
            Self.unary(Nodes.LabelNode.descriptor, Nodes.LabelNode.Input.self, Nodes.LabelNode.Output.self),
            Self.unary(Nodes.TaintNode.descriptor, Nodes.TaintNode.Input.self, Nodes.TaintNode.Output.self),
            Self.unary(
                Nodes.SetNodeResources.descriptor, Nodes.SetNodeResources.Input.self,
                Nodes.SetNodeResources.Output.self),
            Self.unary(Nodes.DeleteNode.descriptor, Nodes.DeleteNode.Input.self, Nodes.DeleteNode.Output.self),
            Self.unary(
                Nodes.CreateJoinToken.descriptor, Nodes.CreateJoinToken.Input.self, Nodes.CreateJoinToken.Output.self),
            Self.unary(
                Nodes.IssueOperatorCertificate.descriptor, Nodes.IssueOperatorCertificate.Input.self,
                Nodes.IssueOperatorCertificate.Output.self),
            Self.unary(
                Projects.CreateProject.descriptor, Projects.CreateProject.Input.self,
                Projects.CreateProject.Output.self),
            Self.unary(
                Projects.ListProjects.descriptor, Projects.ListProjects.Input.self, Projects.ListProjects.Output.self),
            Self.unary(Projects.SetQuota.descriptor, Projects.SetQuota.Input.self, Projects.SetQuota.Output.self),
            Self.unary(Tokens.CreateToken.descriptor, Tokens.CreateToken.Input.self, Tokens.CreateToken.Output.self),
            Self.unary(Tokens.ListTokens.descriptor, Tokens.ListTokens.Input.self, Tokens.ListTokens.Output.self),
            Self.unary(Tokens.RevokeToken.descriptor, Tokens.RevokeToken.Input.self, Tokens.RevokeToken.Output.self),
            Self.unary(Events.ListEvents.descriptor, Events.ListEvents.Input.self, Events.ListEvents.Output.self),
            Self.unary(Events.ListAudit.descriptor, Events.ListAudit.Input.self, Events.ListAudit.Output.self),
            Self.unary(
                Settings.GetClusterSettings.descriptor, Settings.GetClusterSettings.Input.self,
                Settings.GetClusterSettings.Output.self),
            Self.unary(
                Settings.SetClusterSetting.descriptor, Settings.SetClusterSetting.Input.self,
                Settings.SetClusterSetting.Output.self),
        ])
    }

    static func unary<Input: SwiftProtobuf.Message & Sendable, Output: SwiftProtobuf.Message & Sendable>(
        _ descriptor: MethodDescriptor, _ input: Input.Type, _ output: Output.Type
    ) -> (String, Call) {
        (
            "/\(descriptor.service.fullyQualifiedService)/\(descriptor.method)",
            { client, json, metadata in
                let request: Input
                do {
                    request = try Input(jsonString: json.isEmpty ? "{}" : json)
                } catch {
                    throw LQXError(.invalidSpec, "the body is not a \(Input.protoMessageName) in JSON", cause: error)
                }
                let response = try await client.unary(
                    request: ClientRequest(message: request, metadata: metadata), descriptor: descriptor,
                    serializer: ProtobufSerializer<Input>(), deserializer: ProtobufDeserializer<Output>(),
                    options: ClientTransport.failFast
                ) { try $0.message }
                return try response.jsonString()
            }
        )
    }

    /// Keeps one connection to the API for the gateway's life.
    func run() async throws {
        let address = try await api()
        let transport = try ClientTransport.make(HostPort(host: "127.0.0.1", port: address.port), security: security)
        try await withGRPCClient(transport: transport) { client in
            self.client.set(.success(client))
            try? await gracefulShutdown()
        }
    }

    /// Answers one POST.
    func handle(path: String, authorization: String?, body: String, peer: String) async -> HTTPService.Reply {
        guard let call = calls[path] else {
            return Self.error(.notFound, "no unary method \(path) (streams — exec, cp, watches — are gRPC only)")
        }
        var metadata: Metadata = [:]
        if let authorization { metadata.addString(authorization, forKey: "authorization") }
        // Failed tokens count against the HTTP client, not against this gateway's connection.
        metadata.addString(peer, forKey: Authentication.forwardedPeerKey)
        metadata.addString(proxyKey, forKey: Authentication.proxyKeyKey)
        do {
            let client = try await client.wait()
            return .init(contentType: "application/json", body: try await call(client, body, metadata))
        } catch let error as LQXError {
            return Self.error(error.code, error.fullMessage)
        } catch let error as RPCError {
            let mapped = RPCErrorMapping.lqxError(error, peer: "the API")
            return Self.error(mapped.code, mapped.fullMessage)
        } catch {
            return Self.error(.internal, "\(error)")
        }
    }

    /// Connect's error code and HTTP status for an error code.
    static func connect(_ code: LQXError.Code) -> (String, HTTPService.Status) {
        switch code {
        case .invalidSpec: ("invalid_argument", .badRequest)
        case .notFound: ("not_found", .notFound)
        case .alreadyExists: ("already_exists", .conflict)
        case .conflict: ("aborted", .conflict)
        case .failedPrecondition: ("failed_precondition", .badRequest)
        case .unauthenticated: ("unauthenticated", .unauthorized)
        case .permissionDenied: ("permission_denied", .forbidden)
        case .resourceExhausted: ("resource_exhausted", .tooManyRequests)
        case .unavailable: ("unavailable", .serviceUnavailable)
        case .timeout: ("deadline_exceeded", .gatewayTimeout)
        case .cancelled: ("canceled", .requestTimeout)
        default: ("internal", .internalServerError)
        }
    }

    static func error(_ code: LQXError.Code, _ message: String) -> HTTPService.Reply {
        let (name, status) = connect(code)
        var escaped = ""
        for scalar in message.unicodeScalars {
            switch scalar {
            case "\"": escaped += "\\\""
            case "\\": escaped += "\\\\"
            default:
                if scalar.value < 0x20 {
                    escaped +=
                        "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count)
                        + String(scalar.value, radix: 16)
                } else {
                    escaped.unicodeScalars.append(scalar)
                }
            }
        }
        return .init(
            status: status, contentType: "application/json",
            body: "{\"code\":\"\(name)\",\"message\":\"\(escaped)\",\"lqx_code\":\"\(code.rawValue)\"}\n")
    }
}
