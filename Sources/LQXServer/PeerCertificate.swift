import GRPCCore
import GRPCNIOTransportHTTP2Posix
import X509

extension ServerContext {
    /// The certificate the peer presented in the TLS handshake (a mutual-TLS listener verified it
    /// against its client CA before the call started); nil on plaintext or server-only TLS.
    public var peerCertificate: Certificate? {
        (transportSpecific as? HTTP2ServerTransport.Posix.Context)?.peerCertificate
    }

    /// The cluster identity named by the peer's certificate, if it presented one of ours.
    public var peerIdentity: ClusterIdentity? {
        peerCertificate.flatMap { ClusterIdentity(certificate: $0) }
    }
}
