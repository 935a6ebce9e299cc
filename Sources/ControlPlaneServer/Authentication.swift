import ControlPlane
import GRPCCore
import LQXModel
import LQXServer

/// Who a call is from: the bearer token in its metadata, verified by the cluster. An address
/// whose tokens keep failing is refused for a while (`Cluster.authFailures`) before its token is
/// looked at.
struct Authentication: Sendable {
    let cluster: Cluster

    /// The metadata keys the JSON gateway sends its HTTP client's address in, with the proof that
    /// it is the gateway of this process (`FailureLimiter.proxyKey`).
    static let forwardedPeerKey = "lqx-forwarded-peer"
    static let proxyKeyKey = "lqx-proxy-key"

    /// The caller's principal; `unauthenticated` with a specific message otherwise.
    func principal(_ metadata: Metadata, context: ServerContext) async throws(LQXError) -> Principal {
        let values = Array(metadata[stringValues: "authorization"])
        guard values.count == 1, let value = values.first, value.hasPrefix("Bearer "), value.count > 7 else {
            throw LQXError(.unauthenticated, "this call needs an authorization: Bearer TOKEN header")
        }
        let peer = Self.peer(metadata, context: context, proxyKey: cluster.authFailures.proxyKey)
        try cluster.authFailures.check(peer)
        do {
            return try await cluster.authenticate(bearer: String(value.dropFirst(7)))
        } catch  where error.code == .unauthenticated {
            cluster.authFailures.failed(peer)
            throw error
        }
    }

    /// Whom a call's failures count against: the HTTP client the JSON gateway of this process
    /// forwards for (only with the gateway's key), else the connection's peer.
    static func peer(_ metadata: Metadata, context: ServerContext, proxyKey: String) -> String {
        let keys = Array(metadata[stringValues: proxyKeyKey])
        if keys.count == 1, FailureLimiter.same(keys[0], proxyKey),
            let forwarded = metadata[stringValues: forwardedPeerKey].first(where: { _ in true })
        {
            return forwarded
        }
        return context.remotePeer
    }

    /// Runs `body` for the call's principal, mapping `LQXError` to its gRPC status.
    func call<T>(_ context: ServerContext, _ metadata: Metadata, _ body: (Principal) async throws -> T)
        async throws -> T
    {
        try await RPCErrorMapping.mapping {
            let principal = try await principal(metadata, context: context)
            return try await body(principal)
        }
    }
}
