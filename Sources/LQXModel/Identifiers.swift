/// A VM's stable identity, beside its name: a UUID in lowercase text form. It does not change
/// when the VM is renamed, moved to another node or migrated (it is also the libvirt domain's
/// UUID).
public struct VMID: Sendable, Hashable, Codable, CustomStringConvertible, Comparable {
    /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase hexadecimal.
    public let rawValue: String

    /// Parses a UUID (either case); nil when `text` is not one.
    public init?(_ text: String) {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return nil }
        for (index, byte) in bytes.enumerated() {
            if [8, 13, 18, 23].contains(index) {
                guard byte == 0x2D else { return nil }
            } else {
                guard (0x30...0x39).contains(byte) || (0x61...0x66).contains(byte) || (0x41...0x46).contains(byte)
                else { return nil }
            }
        }
        rawValue = text.lowercased()
    }

    /// Parses an id given in a request; `field` names it in the error.
    public init(validating text: String, field: String = "id") throws(LQXError) {
        guard let id = VMID(text) else {
            throw LQXError(.invalidSpec, "\(field) \(text.debugDescription) is not a UUID")
        }
        self = id
    }

    /// A new random (version 4) id.
    public static func random() -> VMID {
        var generator = SystemRandomNumberGenerator()
        return random(using: &generator)
    }

    /// A new version-4 id from `generator` (deterministic in tests and simulations).
    public static func random(using generator: inout some RandomNumberGenerator) -> VMID {
        var bytes = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        bytes[6] = (bytes[6] & 0x0F) | 0x40
        bytes[8] = (bytes[8] & 0x3F) | 0x80
        let digits = Array("0123456789abcdef")
        var text = ""
        for (index, byte) in bytes.enumerated() {
            if [4, 6, 8, 10].contains(index) { text.append("-") }
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0F)])
        }
        return VMID(text)!
    }

    /// The UUID text.
    public var description: String { rawValue }

    /// Orders by text.
    public static func < (lhs: VMID, rhs: VMID) -> Bool { lhs.rawValue < rhs.rawValue }

    /// Decodes and validates.
    public init(from decoder: any Decoder) throws {
        let text = try String(from: decoder)
        guard let id = VMID(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "\(text.debugDescription) is not a UUID"))
        }
        self = id
    }

    /// Encodes the UUID text.
    public func encode(to encoder: any Encoder) throws { try rawValue.encode(to: encoder) }
}
