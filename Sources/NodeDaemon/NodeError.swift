/// An error of the node daemon, with a code a caller can act on and a message for people.
public struct NodeError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable, Equatable {
        /// The spec is wrong (the message names the field).
        case invalidSpec = "invalid_spec"
        /// A VM of that name exists already.
        case alreadyExists = "already_exists"
        /// No such VM, network, disk or file.
        case notFound = "not_found"
        /// The VM is in a state that does not allow the operation (e.g. deleting a running VM).
        case failedPrecondition = "failed_precondition"
        /// libvirt or QEMU refused or failed.
        case hypervisor
        /// A local file operation failed.
        case io
        /// The operation did not finish in time.
        case timeout
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(message) [\(code.rawValue)]" }
}
