import GRPCNIOTransportHTTP2Posix

/// How a server's listener is secured.
public enum ServerSecurity: Sendable, Equatable {
    /// No TLS (loopback or a trusted management network only).
    case plaintext
    /// TLS with a PEM certificate chain and key; clients are not asked for certificates.
    case tls(certificateChain: String, privateKey: String)
    /// Mutual TLS: clients must present a certificate signed by a CA in `clientCA` (PEM).
    case mutualTLS(certificateChain: String, privateKey: String, clientCA: String)

    /// The gRPC transport's form.
    var transportSecurity: HTTP2ServerTransport.Posix.TransportSecurity {
        switch self {
        case .plaintext:
            return .plaintext
        case .tls(let chain, let key):
            return .tls(
                certificateChain: [.file(path: chain, format: .pem)], privateKey: .file(path: key, format: .pem))
        case .mutualTLS(let chain, let key, let ca):
            return .mTLS(
                certificateChain: [.file(path: chain, format: .pem)], privateKey: .file(path: key, format: .pem)
            ) { config in
                config.trustRoots = .certificates([.file(path: ca, format: .pem)])
                config.clientCertificateVerification = .noHostnameVerification
            }
        }
    }
}
