/// An error of the agent protocol or of an operation carried over it.
///
/// `code` is stable and travels on the wire (RESET / GOAWAY / `Error` replies); `message` is for
/// people. New codes may be added at any time.
public struct AgentError: Error, Sendable, CustomStringConvertible, Equatable {
    /// A stable machine-readable error code.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        /// The code as it travels on the wire (`not_found`).
        public var rawValue: String
        /// Creates a code from its wire form (any string, so codes of newer peers are kept).
        public init(rawValue: String) { self.rawValue = rawValue }
        /// The wire form.
        public var description: String { rawValue }

        /// The peer broke the protocol (malformed message, flow-control violation, bad stream id).
        public static let protocolViolation = Code(rawValue: "protocol")
        /// No common protocol version.
        public static let unsupportedVersion = Code(rawValue: "unsupported_version")
        /// The session or stream is closed.
        public static let closed = Code(rawValue: "closed")
        /// A deadline passed (silent peer, handshake, operation).
        public static let timeout = Code(rawValue: "timeout")
        /// The agent's policy forbids the operation.
        public static let denied = Code(rawValue: "denied")
        /// A path, user or executable does not exist.
        public static let notFound = Code(rawValue: "not_found")
        /// The request is malformed or names something impossible.
        public static let invalidArgument = Code(rawValue: "invalid_argument")
        /// The destination exists and overwriting was not allowed.
        public static let alreadyExists = Code(rawValue: "already_exists")
        /// An I/O operation failed in the guest.
        public static let io = Code(rawValue: "io")
        /// Data did not arrive intact (SHA-256 or size mismatch).
        public static let checksumMismatch = Code(rawValue: "checksum_mismatch")
        /// The agent already runs as many streams as it allows.
        public static let tooManyStreams = Code(rawValue: "too_many_streams")
        /// The operation was cancelled by the other side.
        public static let cancelled = Code(rawValue: "cancelled")
        /// The agent does not know this request kind.
        public static let unsupported = Code(rawValue: "unsupported")
        /// The agent cannot be reached.
        public static let unavailable = Code(rawValue: "unavailable")
        /// A bug or an unexpected condition.
        public static let `internal` = Code(rawValue: "internal")
    }

    /// The stable machine-readable code.
    public var code: Code
    /// A detail for people.
    public var message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The message followed by the code in brackets.
    public var description: String { "\(message) [\(code)]" }

    /// The wire form.
    public var wire: Limiquantix_Agent_V1_Error {
        .with {
            $0.code = code.rawValue
            $0.message = message
        }
    }

    /// Creates an error from its wire form.
    public init(wire: Limiquantix_Agent_V1_Error) {
        self.init(Code(rawValue: wire.code.isEmpty ? "internal" : wire.code), wire.message)
    }
}
