import ControlPlaneAPI
import GRPCCore
import LQXModel
import Testing

@testable import ControlPlaneServer

@Suite("JSON gateway")
struct JSONGatewayTests {
    /// The methods that stream (gRPC only) and the node-facing service (nodes speak gRPC).
    static let streaming: Set<String> = [
        "Exec", "Upload", "Download", "WatchTelemetry", "DrainNode", "WatchEvents",
    ]

    @Test("every unary method of the operators' services is served as JSON, and nothing else")
    func everyUnaryMethod() {
        let gateway = JSONGateway(
            api: { () throws(LQXError) -> HostPort in throw LQXError(.unavailable, "not used") },
            security: .plaintext, proxyKey: "")
        let services: [[MethodDescriptor]] = [
            Limiquantix_Compute_V1_VMService.Method.descriptors,
            Limiquantix_Compute_V1_NodeService.Method.descriptors,
            Limiquantix_Compute_V1_ProjectService.Method.descriptors,
            Limiquantix_Compute_V1_TokenService.Method.descriptors,
            Limiquantix_Compute_V1_EventService.Method.descriptors,
            Limiquantix_Compute_V1_ClusterService.Method.descriptors,
        ]
        let unary = Set(
            services.joined().filter { !Self.streaming.contains($0.method) }.map {
                "/\($0.service.fullyQualifiedService)/\($0.method)"
            })
        #expect(Set(gateway.calls.keys) == unary)
    }
}
