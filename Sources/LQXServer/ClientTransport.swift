import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel

/// How a client secures its connection to a server of the cluster.
public enum ClientSecurity: Sendable, Equatable {
    /// No TLS.
    case plaintext
    /// TLS trusting only the CA in the PEM file `caFile`, checking the server's name or address.
    case tls(caFile: String)
    /// TLS trusting only the CA in PEM `caPEM`, checking the server's name or address.
    case tlsTrusting(caPEM: String)
    /// Mutual TLS: presents the certificate chain and key (PEM files) and trusts only `caFile`.
    case mutualTLS(certificateChain: String, privateKey: String, caFile: String)
    /// TLS that checks nothing about the server: only for fetching a CA certificate whose
    /// fingerprint the caller then compares with one it was given.
    case unverifiedTLS

    var transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
        switch self {
        case .plaintext:
            return .plaintext
        case .tls(let ca):
            return .tls { $0.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
        case .tlsTrusting(let pem):
            return .tls { $0.trustRoots = .certificates([.bytes(Array(pem.utf8), format: .pem)]) }
        case .mutualTLS(let chain, let key, let ca):
            return .mTLS(
                certificateChain: [.file(path: chain, format: .pem)], privateKey: .file(path: key, format: .pem)
            ) { $0.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
        case .unverifiedTLS:
            return .tls { $0.serverCertificateVerification = .noVerification }
        }
    }
}

/// Client connections to cluster servers (node daemons, the control plane).
public enum ClientTransport {
    /// A transport to `address` secured by `security`.
    public static func make(_ address: HostPort, security: ClientSecurity) throws(LQXError)
        -> HTTP2ClientTransport.Posix
    {
        let host = address.host
        let octets = host.split(separator: ".")
        let target: any ResolvableTarget =
            if address.isIPv6 {
                .ipv6(address: host, port: address.port)
            } else if octets.count == 4, octets.allSatisfy({ UInt8($0) != nil }) {
                .ipv4(address: host, port: address.port)
            } else {
                .dns(host: host, port: address.port)
            }
        do {
            return try HTTP2ClientTransport.Posix(target: target, transportSecurity: security.transportSecurity)
        } catch {
            throw LQXError(.invalidSpec, "cannot set up a connection to \(address)", cause: error)
        }
    }

    /// Calls fail at once when the server cannot be reached (instead of waiting for it).
    public static let failFast: CallOptions = {
        var options = CallOptions.defaults
        options.waitForReady = false
        return options
    }()

    /// Runs `body` with a client connected to `address`; an `RPCError` from the server becomes
    /// the `LQXError` it carried (its `lqx-error-code`), others an `unavailable` error.
    public static func with<T: Sendable>(
        _ address: HostPort, security: ClientSecurity,
        _ body: @Sendable @escaping (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T
    ) async throws(LQXError) -> T {
        let transport = try make(address, security: security)
        do {
            return try await withGRPCClient(transport: transport) { client in try await body(client) }
        } catch let error as LQXError {
            throw error
        } catch let error as RPCError {
            throw RPCErrorMapping.lqxError(error, peer: address.description)
        } catch {
            throw LQXError(.unavailable, "the call to \(address) failed", cause: error)
        }
    }
}

extension RPCErrorMapping {
    /// The `LQXError` a server sent (its `lqx-error-code`), or `unavailable` when the call did
    /// not reach a limiquantix service.
    public static func lqxError(_ error: RPCError, peer: String) -> LQXError {
        for entry in error.metadata where entry.key == errorCodeKey {
            if case .string(let value) = entry.value {
                return LQXError(LQXError.Code(rawValue: value), error.message)
            }
        }
        let code: LQXError.Code =
            switch error.code {
            case .unauthenticated: .unauthenticated
            case .permissionDenied: .permissionDenied
            case .deadlineExceeded: .timeout
            case .cancelled: .cancelled
            default: .unavailable
            }
        return LQXError(code, "\(peer): \(error.message)")
    }
}
