import CLQXSupport
import FoundationEssentials
import NIOCore

/// Incremental SHA-256 for end-to-end file hashes.
///
/// Runs on the CPU's SHA extensions when present (about 1.5 GB/s on one core here), else a
/// portable implementation. A value type: copies hash independently.
public struct SHA256Hasher: Sendable {
    private var state = lqx_sha256()

    /// Creates a hasher that has hashed nothing yet.
    public init() {
        lqx_sha256_init(&state)
    }

    /// Hashes `bytes`.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress else { return }
        lqx_sha256_update(&state, base, bytes.count)
    }

    /// Hashes the readable bytes of `buffer`.
    public mutating func update(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { update($0) }
    }

    /// The digest of everything hashed so far (the hasher itself is unchanged).
    public func finalize() -> Data {
        var copy = state
        var digest = [UInt8](repeating: 0, count: 32)
        lqx_sha256_final(&copy, &digest)
        return Data(digest)
    }

    /// The SHA-256 of `bytes`.
    public static func hash(_ bytes: some Sequence<UInt8>) -> Data {
        var hasher = SHA256Hasher()
        let array = Array(bytes)
        array.withUnsafeBytes { hasher.update($0) }
        return hasher.finalize()
    }

    /// Whether the CPU's SHA extensions are used.
    public static var isHardware: Bool { lqx_sha256_is_hardware() != 0 }
}

extension Data {
    /// Lowercase hexadecimal.
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(count * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
