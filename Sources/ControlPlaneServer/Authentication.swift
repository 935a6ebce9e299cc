import ControlPlane
import GRPCCore
import LQXModel
import LQXServer

/// Who a call is from: the bearer token in its metadata, verified by the cluster.
struct Authentication: Sendable {
    let cluster: Cluster

    /// The caller's principal; `unauthenticated` with a specific message otherwise.
    func principal(_ metadata: Metadata) async throws(LQXError) -> Principal {
        let values = Array(metadata[stringValues: "authorization"])
        guard values.count == 1, let value = values.first, value.hasPrefix("Bearer "), value.count > 7 else {
            throw LQXError(.unauthenticated, "this call needs an authorization: Bearer TOKEN header")
        }
        return try await cluster.authenticate(bearer: String(value.dropFirst(7)))
    }

    /// Runs `body` for the call's principal, mapping `LQXError` to its gRPC status.
    func call<T>(_ context: ServerContext, _ metadata: Metadata, _ body: (Principal) async throws -> T)
        async throws -> T
    {
        try await RPCErrorMapping.mapping {
            let principal = try await principal(metadata)
            return try await body(principal)
        }
    }
}
