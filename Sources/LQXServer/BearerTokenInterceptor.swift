import GRPCCore
import LQXModel

/// Checks `authorization: Bearer TOKEN` on every call before the service sees it; a call without
/// a token, or with one `verify` rejects, fails with `unauthenticated`.
public struct BearerTokenInterceptor: ServerInterceptor {
    /// Decides whether a token is valid (e.g. a hash lookup in the store); throwing `LQXError`
    /// gives the caller that error instead of the generic one.
    public typealias Verify = @Sendable (_ token: String, _ method: MethodDescriptor) async throws -> Bool

    private let verify: Verify

    /// An interceptor asking `verify` about each call's token.
    public init(verify: @escaping Verify) { self.verify = verify }

    /// Rejects the call unless its token verifies.
    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>, context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let values = request.metadata[stringValues: "authorization"].map { $0 }
        guard values.count == 1, let value = values.first, value.hasPrefix("Bearer "), value.count > 7 else {
            return StreamingServerResponse(
                error: RPCErrorMapping.rpcError(
                    LQXError(.unauthenticated, "this call needs an authorization: Bearer TOKEN header")))
        }
        let token = String(value.dropFirst(7))
        do {
            guard try await verify(token, context.descriptor) else {
                return StreamingServerResponse(
                    error: RPCErrorMapping.rpcError(LQXError(.unauthenticated, "the token is not valid")))
            }
        } catch let error as LQXError {
            return StreamingServerResponse(error: RPCErrorMapping.rpcError(error))
        }
        return try await next(request, context)
    }
}
