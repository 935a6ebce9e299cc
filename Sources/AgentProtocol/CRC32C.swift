import CLQXSupport

/// CRC-32C (Castagnoli), the checksum of frame headers and payloads.
public enum CRC32C {
    /// The CRC-32C of `bytes`, continuing from `crc` (0 to start).
    @inlinable
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return lqx_crc32c(crc, base, bytes.count)
    }

    /// The CRC-32C of a byte array.
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }

    /// Whether the CPU's crc32 instruction is used.
    public static var isHardwareAccelerated: Bool { lqx_crc32c_is_hardware() == 1 }
}
