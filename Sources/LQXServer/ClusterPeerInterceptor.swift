import GRPCCore
import LQXModel

/// On a joined node's mutual-TLS API: admits only the control plane and operators holding a
/// certificate of the cluster CA (the TLS handshake already checked the CA). Another node's
/// certificate is refused, so one compromised node cannot drive the others.
public struct ClusterPeerInterceptor: ServerInterceptor {
    /// An interceptor.
    public init() {}

    /// Rejects calls from peers that are not the control plane or an operator.
    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>, context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        switch context.peerIdentity {
        case .controlPlane?, .operator?:
            return try await next(request, context)
        case .node(let id)?:
            return StreamingServerResponse(
                error: RPCErrorMapping.rpcError(
                    LQXError(.permissionDenied, "node \(id)'s certificate cannot call another node's API")))
        case nil:
            return StreamingServerResponse(
                error: RPCErrorMapping.rpcError(
                    LQXError(.unauthenticated, "this node API needs a client certificate of the cluster CA")))
        }
    }
}
