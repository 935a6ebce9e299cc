import Crypto
import Foundation
import LQXModel
import SwiftASN1
import X509

/// Who a certificate of the cluster CA names: the control plane, a node (by id) or an operator.
/// Carried as the subject's common name (`controlplane`, `node:<id>`, `operator:<name>`).
public enum ClusterIdentity: Sendable, Equatable, CustomStringConvertible {
    /// The control plane (server on its listeners, client of the node APIs).
    case controlPlane
    /// A joined node.
    case node(String)
    /// An operator allowed to call node APIs directly (`lqx --node`).
    case `operator`(String)

    /// The common name it is written as.
    public var description: String {
        switch self {
        case .controlPlane: "controlplane"
        case .node(let id): "node:\(id)"
        case .operator(let name): "operator:\(name)"
        }
    }

    /// Parses a common name; nil when it names none of the three.
    public init?(commonName: String) {
        if commonName == "controlplane" {
            self = .controlPlane
        } else if commonName.hasPrefix("node:"), commonName.count > 5 {
            self = .node(String(commonName.dropFirst(5)))
        } else if commonName.hasPrefix("operator:"), commonName.count > 9 {
            self = .operator(String(commonName.dropFirst(9)))
        } else {
            return nil
        }
    }

    /// The identity a certificate's subject names (nil: not one of ours).
    public init?(certificate: Certificate) {
        guard let cn = certificate.subject.commonName else { return nil }
        self.init(commonName: cn)
    }
}

extension DistinguishedName {
    /// The first common name, if any.
    var commonName: String? {
        for rdn in self {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                return String(describing: attribute.value)
            }
        }
        return nil
    }
}

/// The cluster's certificate authority: it signs the control plane's certificate and every
/// node's. Keys are P-256; private keys are written 0600 and never leave the control plane's
/// state directory (a node's key never leaves the node: it sends a certificate request).
public struct ClusterCA: Sendable {
    /// The CA certificate.
    public let certificate: Certificate
    private let key: Certificate.PrivateKey
    /// How long issued certificates are valid.
    public static let leafValidity: TimeInterval = 365 * 86_400
    static let caValidity: TimeInterval = 10 * 365 * 86_400

    /// A new CA named `name`.
    public static func create(name: String = "limiquantix cluster CA") throws(LQXError) -> ClusterCA {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        do {
            let subject = try DistinguishedName {
                OrganizationName("limiquantix")
                CommonName(name)
            }
            let now = Date()
            let certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
                notValidBefore: now - 300, notValidAfter: now + caValidity, issuer: subject, subject: subject,
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: key.publicKey)
                }, issuerPrivateKey: key)
            return ClusterCA(certificate: certificate, key: key)
        } catch {
            throw LQXError(.internal, "cannot create the cluster CA", cause: error)
        }
    }

    /// The CA in `certificatePEM` with its key in `keyPEM`.
    public init(certificatePEM: String, keyPEM: String) throws(LQXError) {
        do {
            certificate = try Certificate(pemEncoded: certificatePEM)
            key = try Certificate.PrivateKey(pemEncoded: keyPEM)
        } catch {
            throw LQXError(.invalidSpec, "the cluster CA files cannot be read", cause: error)
        }
        guard key.publicKey == certificate.publicKey else {
            throw LQXError(.invalidSpec, "the cluster CA key does not belong to its certificate")
        }
    }

    private init(certificate: Certificate, key: Certificate.PrivateKey) {
        self.certificate = certificate
        self.key = key
    }

    /// The CA certificate as PEM.
    public var certificatePEM: String { PKIFiles.terminated((try? certificate.serializeAsPEM().pemString) ?? "") }
    /// The CA key as PEM (write it 0600).
    public var keyPEM: String { PKIFiles.terminated((try? key.serializeAsPEM().pemString) ?? "") }
    /// The SHA-256 of the CA certificate's DER, lower-case hex: what a node pins (`--ca-sha256`).
    public var fingerprint: String { PKIFiles.fingerprint(of: certificate) }

    /// A certificate for `identity` with `publicKey`, valid for `hosts` (DNS names or IP
    /// addresses; server certificates need them, client-only ones may have none) and for
    /// `validity` seconds from `now`.
    public func issue(
        for identity: ClusterIdentity, publicKey: Certificate.PublicKey, hosts: [String], now: Date = Date(),
        validity: TimeInterval = leafValidity
    ) throws(LQXError) -> Certificate {
        do {
            let subject = try DistinguishedName {
                OrganizationName("limiquantix")
                CommonName(identity.description)
            }
            var names: [GeneralName] = []
            for host in hosts {
                if let ip = PKIFiles.ipAddressBytes(host) {
                    names.append(.ipAddress(ASN1OctetString(contentBytes: ip[...])))
                } else {
                    names.append(.dnsName(host))
                }
            }
            let authority = try certificate.extensions.subjectKeyIdentifier?.keyIdentifier
            return try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
                notValidBefore: now - 300, notValidAfter: now + validity, issuer: certificate.subject,
                subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([.serverAuth, .clientAuth])
                    if !names.isEmpty { SubjectAlternativeNames(names) }
                    if let authority { AuthorityKeyIdentifier(keyIdentifier: authority) }
                }, issuerPrivateKey: key)
        } catch {
            throw LQXError(.internal, "cannot issue a certificate for \(identity)", cause: error)
        }
    }

    /// Signs a certificate request (PKCS#10 DER) of a node or an operator: the request must be
    /// signed by its own key; the subject it asks for is ignored, the certificate names
    /// `identity` and `hosts`.
    public func sign(
        requestDER: [UInt8], for identity: ClusterIdentity, hosts: [String], validity: TimeInterval = leafValidity
    ) throws(LQXError) -> Certificate {
        guard !requestDER.isEmpty, requestDER.count <= 16 * 1024 else {
            throw LQXError(.invalidSpec, "certificate_request must be a PKCS#10 request of at most 16 KiB")
        }
        let request: CertificateSigningRequest
        do {
            request = try CertificateSigningRequest(derEncoded: requestDER)
        } catch {
            throw LQXError(.invalidSpec, "certificate_request is not a PKCS#10 request in DER", cause: error)
        }
        guard request.publicKey.isValidSignature(request.signature, for: request) else {
            throw LQXError(.invalidSpec, "certificate_request is not signed by its own key")
        }
        return try issue(for: identity, publicKey: request.publicKey, hosts: hosts, validity: validity)
    }

    /// Whether `certificate` was signed by this CA.
    public func issued(_ certificate: Certificate) -> Bool {
        certificate.issuer == self.certificate.subject
            && self.certificate.publicKey.isValidSignature(certificate.signature, for: certificate)
    }
}

/// A private key and a certificate request for it, as a node makes them before joining.
public struct KeyAndRequest: Sendable {
    /// The key as PEM (write it 0600).
    public let keyPEM: String
    /// The PKCS#10 request in DER.
    public let requestDER: [UInt8]

    /// A fresh P-256 key and a request naming `commonName`.
    public static func generate(commonName: String) throws(LQXError) -> KeyAndRequest {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        do {
            let request = try CertificateSigningRequest(
                version: .v1, subject: try DistinguishedName { CommonName(commonName) }, privateKey: key,
                attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
            var serializer = DER.Serializer()
            try serializer.serialize(request)
            return KeyAndRequest(
                keyPEM: PKIFiles.terminated(try key.serializeAsPEM().pemString), requestDER: serializer.serializedBytes)
        } catch {
            throw LQXError(.internal, "cannot create a certificate request", cause: error)
        }
    }
}

/// Reading and writing the PEM files of the cluster's PKI.
public enum PKIFiles {
    /// Writes `contents` to `path` atomically (a temporary file renamed over it) with `mode`
    /// (0600 for keys and tokens), creating the directory (0700) when missing.
    public static func write(_ contents: String, to path: String, mode: mode_t = 0o600) throws(LQXError) {
        let directory = (path as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw LQXError(.io, "cannot create \(directory)", cause: error)
        }
        let temporary = path + ".tmp"
        unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw LQXError(.io, "cannot create \(temporary): \(String(cString: strerror(errno)))") }
        let bytes = Array(contents.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw LQXError(.io, "cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// The contents of `path`, or nil when it does not exist.
    public static func read(_ path: String) throws(LQXError) -> String? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw LQXError(.io, "cannot read \(path)", cause: error)
        }
    }

    /// A certificate as PEM.
    public static func pem(_ certificate: Certificate) throws(LQXError) -> String {
        do {
            return terminated(try certificate.serializeAsPEM().pemString)
        } catch {
            throw LQXError(.internal, "cannot encode a certificate", cause: error)
        }
    }

    /// `pem` ending in a newline, so PEM documents concatenate into a valid chain file.
    static func terminated(_ pem: String) -> String {
        pem.hasSuffix("\n") ? pem : pem + "\n"
    }

    /// A certificate's DER.
    public static func der(_ certificate: Certificate) throws(LQXError) -> [UInt8] {
        var serializer = DER.Serializer()
        do {
            try serializer.serialize(certificate)
        } catch {
            throw LQXError(.internal, "cannot encode a certificate", cause: error)
        }
        return serializer.serializedBytes
    }

    /// A certificate from DER.
    public static func certificate(der: [UInt8]) throws(LQXError) -> Certificate {
        do {
            return try Certificate(derEncoded: der)
        } catch {
            throw LQXError(.invalidSpec, "not an X.509 certificate in DER", cause: error)
        }
    }

    /// A certificate from PEM.
    public static func certificate(pem: String) throws(LQXError) -> Certificate {
        do {
            return try Certificate(pemEncoded: pem)
        } catch {
            throw LQXError(.invalidSpec, "not an X.509 certificate in PEM", cause: error)
        }
    }

    /// SHA-256 of the certificate's DER, lower-case hex.
    public static func fingerprint(of certificate: Certificate) -> String {
        let der = (try? der(certificate)) ?? []
        return SHA256.hash(data: der).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    /// The 4 or 16 bytes of an IP address literal, nil for a host name.
    static func ipAddressBytes(_ host: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }
}
