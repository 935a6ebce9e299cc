/// The error of every limiquantix module: a stable code a caller can act on, a message for people
/// and, where another error led to it, that cause.
///
/// Codes are an open set (`Code` is a struct, not an enum), so new ones can be added without
/// breaking callers. The API layer maps codes to gRPC status and HTTP codes; `message` never
/// repeats the cause, which `description` appends.
public struct LQXError: Error, Sendable, CustomStringConvertible {
    /// A stable, machine-readable error code (its `rawValue` travels in API responses).
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        /// The code as written on the wire, e.g. `not_found`.
        public var rawValue: String
        /// Creates a code from its wire form.
        public init(rawValue: String) { self.rawValue = rawValue }
        /// The wire form.
        public var description: String { rawValue }

        /// The request or spec is wrong (the message names the field).
        public static let invalidSpec = Code(rawValue: "invalid_spec")
        /// Something of that name exists already.
        public static let alreadyExists = Code(rawValue: "already_exists")
        /// No such VM, node, network, disk or file.
        public static let notFound = Code(rawValue: "not_found")
        /// The target is in a state that does not allow the operation (e.g. deleting a running VM).
        public static let failedPrecondition = Code(rawValue: "failed_precondition")
        /// The hypervisor (libvirt, QEMU) refused or failed.
        public static let hypervisor = Code(rawValue: "hypervisor")
        /// A local file or process operation failed.
        public static let io = Code(rawValue: "io")
        /// The operation did not finish in time.
        public static let timeout = Code(rawValue: "timeout")
        /// A peer (a VM's agent, a node) cannot be reached now; retrying later may work.
        public static let unavailable = Code(rawValue: "unavailable")
        /// The caller gave no valid credentials.
        public static let unauthenticated = Code(rawValue: "unauthenticated")
        /// The caller may not do this.
        public static let permissionDenied = Code(rawValue: "permission_denied")
        /// The write was based on a version that is no longer current.
        public static let conflict = Code(rawValue: "conflict")
        /// A command carried a placement epoch lower than one its node has seen for the VM (it
        /// was placed again since).
        public static let staleEpoch = Code(rawValue: "stale_epoch")
        /// A bound (streams, quota, size) was reached.
        public static let resourceExhausted = Code(rawValue: "resource_exhausted")
        /// The caller cancelled.
        public static let cancelled = Code(rawValue: "cancelled")
        /// A bug or an unexpected condition.
        public static let `internal` = Code(rawValue: "internal")
    }

    /// What went wrong, for programs.
    public var code: Code
    /// What went wrong, for people (without the cause's text).
    public var message: String
    /// The error that led to this one, if any.
    public var cause: (any Error & Sendable)?

    /// Creates an error.
    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// The message, the cause's description and the code: `cannot read /x: No such file [io]`.
    public var description: String {
        if let cause { return "\(message): \(Self.text(of: cause)) [\(code)]" }
        return "\(message) [\(code)]"
    }

    /// The message followed by the cause's text, without the code (for people, e.g. a CLI).
    public var fullMessage: String {
        guard let cause else { return message }
        return "\(message): \(Self.text(of: cause))"
    }

    private static func text(of cause: any Error) -> String {
        if let error = cause as? LQXError { return error.fullMessage }
        return "\(cause)"
    }
}

extension LQXError: Equatable {
    /// Errors are equal when code and message are (causes are not compared).
    public static func == (lhs: LQXError, rhs: LQXError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message
    }
}
