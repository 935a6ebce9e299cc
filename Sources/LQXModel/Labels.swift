/// Key/value labels on a VM or node (MODEL.md): keys match `^[a-z][a-z0-9-]*$` and are at most 63
/// characters; values are at most 63 characters of letters, digits, `-`, `_` and `.` (or empty).
public struct Labels: Sendable, Hashable, Codable, ExpressibleByDictionaryLiteral {
    /// The labels, by key.
    public private(set) var values: [String: String]

    /// The longest key or value.
    public static let maximumLength = 63
    /// The most labels one object may carry.
    public static let maximumCount = 64

    /// Labels from a dictionary, validated; `field` names them in errors (e.g. `labels`).
    public init(_ values: [String: String], field: String = "labels") throws(LQXError) {
        guard values.count <= Self.maximumCount else {
            throw LQXError(.invalidSpec, "\(field): at most \(Self.maximumCount) labels (got \(values.count))")
        }
        for (key, value) in values.sorted(by: { $0.key < $1.key }) {
            try Self.validate(key: key, field: field)
            try Self.validate(value: value, key: key, field: field)
        }
        self.values = values
    }

    /// Labels written in code; traps on an invalid one (use `init(_:field:)` for input).
    public init(dictionaryLiteral elements: (String, String)...) {
        do { try self.init(Dictionary(elements) { _, last in last }) } catch {
            preconditionFailure("invalid label literal: \(error)")
        }
    }

    /// The value of a key, or nil.
    public subscript(key: String) -> String? { values[key] }

    /// Whether every pair of `selector` is among these labels (an empty selector matches all).
    public func matches(_ selector: Labels) -> Bool {
        selector.values.allSatisfy { values[$0.key] == $0.value }
    }

    /// Checks one key: `^[a-z][a-z0-9-]*$`, 1…63 characters.
    public static func validate(key: String, field: String = "labels") throws(LQXError) {
        let bytes = Array(key.utf8)
        let valid =
            (1...maximumLength).contains(bytes.count) && (0x61...0x7A).contains(bytes[0])
            && bytes.allSatisfy { (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2D }
        guard valid else {
            throw LQXError(
                .invalidSpec,
                "\(field): key \(key.debugDescription) must match ^[a-z][a-z0-9-]*$ and be at most \(maximumLength) characters"
            )
        }
    }

    /// Checks one value: at most 63 letters, digits, `-`, `_` or `.`.
    public static func validate(value: String, key: String, field: String = "labels") throws(LQXError) {
        let bytes = Array(value.utf8)
        let valid =
            bytes.count <= maximumLength
            && bytes.allSatisfy {
                (0x61...0x7A).contains($0) || (0x41...0x5A).contains($0) || (0x30...0x39).contains($0)
                    || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E
            }
        guard valid else {
            throw LQXError(
                .invalidSpec,
                "\(field).\(key): value \(value.debugDescription) may only use letters, digits, '-', '_' and '.' (at most \(maximumLength))"
            )
        }
    }

    /// Decodes and validates (a stored or received label set is checked like any input).
    public init(from decoder: any Decoder) throws {
        let values = try [String: String](from: decoder)
        do { try self.init(values) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.message))
        }
    }

    /// Encodes as a JSON object.
    public func encode(to encoder: any Encoder) throws { try values.encode(to: encoder) }
}
