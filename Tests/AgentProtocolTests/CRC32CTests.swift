import LQXTestSupport
import NIOCore
import Testing

@testable import AgentProtocol

@Suite("CRC-32C")
struct CRC32CTests {
    @Test func checkValue() {
        print("CRC32C hardware accelerated: \(CRC32C.isHardwareAccelerated)")
        let input = Array("123456789".utf8)
        #expect(CRC32C.checksum(input) == 0xE306_9283)
        #expect(input.withUnsafeBytes { CRC32C.checksum($0) } == 0xE306_9283)
        // The reference implementation used by the other tests agrees.
        #expect(referenceCRC32C(input) == 0xE306_9283)
    }

    @Test func knownVectors() {
        // RFC 3720 (iSCSI) appendix B.4 test vectors.
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C)
    }

    @Test func emptyInput() {
        #expect(CRC32C.checksum([]) == 0)
        #expect(CRC32C.checksum(UnsafeRawBufferPointer(start: nil, count: 0)) == 0)
        // Continuing over nothing keeps the running value.
        #expect(CRC32C.checksum(UnsafeRawBufferPointer(start: nil, count: 0), continuing: 0x1234_5678) == 0x1234_5678)
        let empty: [UInt8] = []
        #expect(empty.withUnsafeBytes { CRC32C.checksum($0, continuing: 0xDEAD_BEEF) } == 0xDEAD_BEEF)
    }

    /// Every length 1...80 and a spread of longer lengths, at every start offset 0..<8: the one-shot
    /// checksum and a checksum continued over three pieces both equal the bitwise reference.
    @Test func incrementalEqualsOneShotAndReference() {
        var rng = SplitMix64(seed: 0xC3C3_2C2C)
        var lengths = Array(1...80)
        lengths += [127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097, 5000]
        for _ in 0..<40 { lengths.append(Int.random(in: 81...5000, using: &rng)) }
        let storage = rng.bytes(5000 + 8)
        storage.withUnsafeBytes { all in
            for length in lengths {
                for offset in 0..<8 {
                    let bytes = UnsafeRawBufferPointer(rebasing: all[offset..<(offset + length)])
                    let expected = referenceCRC32C(bytes)
                    let oneShot = CRC32C.checksum(bytes)
                    #expect(oneShot == expected, "length \(length) offset \(offset)")

                    let cut1 = Int.random(in: 0...length, using: &rng)
                    let cut2 = Int.random(in: cut1...length, using: &rng)
                    var crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<cut1]))
                    crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[cut1..<cut2]), continuing: crc)
                    crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[cut2..<length]), continuing: crc)
                    #expect(crc == expected, "length \(length) offset \(offset) cuts \(cut1), \(cut2)")
                }
            }
        }
    }

    /// Byte-at-a-time continuation equals the one-shot value (exercises the shortest pieces).
    @Test func byteAtATime() {
        var rng = SplitMix64(seed: 99)
        let bytes = rng.bytes(300)
        var crc: UInt32 = 0
        for byte in bytes {
            crc = [byte].withUnsafeBytes { CRC32C.checksum($0, continuing: crc) }
        }
        #expect(crc == CRC32C.checksum(bytes))
        #expect(crc == referenceCRC32C(bytes))
    }
}
