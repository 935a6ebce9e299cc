import AgentProtocol
import CLQXSupport
import Crypto
import Foundation
import NIOCore
import Testing

@Suite("SHA-256", .serialized)
struct SHA256Tests {
    /// Runs `body` with the SHA extensions (when the CPU has them) and with the portable code.
    private func bothImplementations(_ body: () throws -> Void) rethrows {
        for portable in [false, true] {
            lqx_sha256_force_portable(portable ? 1 : 0)
            defer { lqx_sha256_force_portable(0) }
            try body()
        }
    }

    @Test("FIPS 180-4 example vectors")
    func vectors() {
        let cases: [(String, String)] = [
            ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (
                "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
            ),
        ]
        bothImplementations {
            for (message, digest) in cases {
                #expect(SHA256Hasher.hash(Array(message.utf8)).hexString == digest)
            }
            var hasher = SHA256Hasher()
            let thousand = [UInt8](repeating: UInt8(ascii: "a"), count: 1000)
            for _ in 0..<1000 { thousand.withUnsafeBytes { hasher.update($0) } }
            #expect(
                hasher.finalize().hexString == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        }
    }

    @Test("matches swift-crypto for every length up to 300 and random split points")
    func matchesReference() {
        var generator = SystemRandomNumberGenerator()
        let data = (0..<70_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        bothImplementations {
            for length in Array(0...300) + [4095, 4096, 4097, 65_536, 69_999] {
                let slice = Array(data[0..<length])
                let expected = Data(Crypto.SHA256.hash(data: slice))
                var hasher = SHA256Hasher()
                var offset = 0
                while offset < length {
                    let step = min(length - offset, Int.random(in: 1...200, using: &generator))
                    var buffer = ByteBuffer()
                    buffer.writeBytes(slice[offset..<offset + step])
                    hasher.update(buffer)
                    offset += step
                }
                #expect(hasher.finalize() == expected, "length \(length)")
            }
        }
    }

    @Test("finalize leaves the hasher usable and copies are independent")
    func valueSemantics() {
        var hasher = SHA256Hasher()
        Array("ab".utf8).withUnsafeBytes { hasher.update($0) }
        let copy = hasher
        _ = hasher.finalize()
        Array("c".utf8).withUnsafeBytes { hasher.update($0) }
        #expect(hasher.finalize().hexString == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(copy.finalize() == SHA256Hasher.hash(Array("ab".utf8)))
    }
}
