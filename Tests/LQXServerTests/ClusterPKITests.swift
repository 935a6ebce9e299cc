import Foundation
import LQXModel
import Testing
import X509

@testable import LQXServer

@Suite("cluster PKI: CA, certificates, requests, files")
struct ClusterPKITests {
    @Test("a signed request becomes a certificate naming the identity and hosts; the CA recognises it")
    func signsRequests() throws {
        let ca = try ClusterCA.create()
        let request = try KeyAndRequest.generate(commonName: "whatever-the-node-asks")
        let certificate = try ca.sign(requestDER: request.requestDER, for: .node("n1"), hosts: ["10.0.0.7", "node-a"])
        #expect(ClusterIdentity(certificate: certificate) == .node("n1"))
        #expect(ca.issued(certificate))
        #expect(try !ClusterCA.create().issued(certificate))
        let names = try certificate.extensions.subjectAlternativeNames.map(Array.init) ?? []
        #expect(names.contains(.dnsName("node-a")))
        #expect(names.contains(.ipAddress(.init(contentBytes: [10, 0, 0, 7]))))
        #expect(try certificate.extensions.basicConstraints == .notCertificateAuthority)
        #expect(certificate.notValidAfter > Date().addingTimeInterval(300 * 86_400))
    }

    @Test("requests that are empty, not DER, too large or not signed by their key are refused")
    func refusesBadRequests() throws {
        let ca = try ClusterCA.create()
        for bad in [[], [0x30, 0x03, 0x01, 0x02], [UInt8](repeating: 0x30, count: 17 * 1024)] as [[UInt8]] {
            #expect(throws: LQXError.self) { try ca.sign(requestDER: bad, for: .node("x"), hosts: []) }
        }
        var tampered = try KeyAndRequest.generate(commonName: "a").requestDER
        // Change the subject's common name (UTF8String "a": 0C 01 61): the signature no longer matches.
        let index = try #require(
            tampered.indices.dropLast(2).first { tampered[$0...$0 + 2].elementsEqual([0x0C, 0x01, 0x61]) })
        tampered[index + 2] = UInt8(ascii: "b")
        do {
            _ = try ca.sign(requestDER: tampered, for: .node("x"), hosts: [])
            Issue.record("a tampered request was signed")
        } catch {
            #expect(error.message.contains("not signed by its own key"), "\(error)")
        }
    }

    @Test("identities round-trip through common names; others are not ours")
    func identities() {
        for identity in [ClusterIdentity.controlPlane, .node("abc"), .operator("alice")] {
            #expect(ClusterIdentity(commonName: identity.description) == identity)
        }
        for other in ["", "node:", "operator:", "admin", "nodes:x"] {
            #expect(ClusterIdentity(commonName: other) == nil, "\(other)")
        }
    }

    @Test("the CA reloads from its PEM files, written atomically with the mode asked for")
    func files() throws {
        let directory = NSTemporaryDirectory() + "lqx-pki-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ca = try ClusterCA.create()
        try PKIFiles.write(ca.keyPEM, to: directory + "/pki/ca.key")
        try PKIFiles.write(ca.certificatePEM, to: directory + "/pki/ca.crt", mode: 0o644)
        let mode = try FileManager.default.attributesOfItem(atPath: directory + "/pki/ca.key")[.posixPermissions]
        #expect(mode as? Int == 0o600)
        #expect(!FileManager.default.fileExists(atPath: directory + "/pki/ca.key.tmp"))
        let loaded = try ClusterCA(
            certificatePEM: try #require(try PKIFiles.read(directory + "/pki/ca.crt")),
            keyPEM: try #require(try PKIFiles.read(directory + "/pki/ca.key")))
        #expect(loaded.fingerprint == ca.fingerprint)
        #expect(loaded.fingerprint.count == 64)
        let other = try ClusterCA.create()
        #expect(throws: LQXError.self) { try ClusterCA(certificatePEM: ca.certificatePEM, keyPEM: other.keyPEM) }
        #expect(try PKIFiles.read(directory + "/missing") == nil)
        // PEM documents end in a newline so that a chain file of two is valid.
        #expect(ca.certificatePEM.hasSuffix("-----\n"))
    }
}
