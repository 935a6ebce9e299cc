import GRPCCore
import LQXModel

/// How `LQXError` codes become gRPC status codes; the stable code travels beside them in the
/// `lqx-error-code` metadata entry, the message (with its cause) as the status message.
public enum RPCErrorMapping {
    /// The gRPC metadata key carrying the stable error code.
    public static let errorCodeKey = "lqx-error-code"

    private static let statusCodes: [LQXError.Code: RPCError.Code] = [
        .invalidSpec: .invalidArgument, .alreadyExists: .alreadyExists, .notFound: .notFound,
        .failedPrecondition: .failedPrecondition, .timeout: .deadlineExceeded, .unavailable: .unavailable,
        .unauthenticated: .unauthenticated, .permissionDenied: .permissionDenied, .conflict: .aborted,
        .resourceExhausted: .resourceExhausted, .cancelled: .cancelled, .staleEpoch: .failedPrecondition,
    ]

    /// The gRPC status code for an error code (`internal` for hypervisor, I/O and unknown codes).
    public static func statusCode(for code: LQXError.Code) -> RPCError.Code {
        statusCodes[code] ?? .internalError
    }

    /// The gRPC error for `error`.
    public static func rpcError(_ error: LQXError) -> RPCError {
        RPCError(
            code: statusCode(for: error.code), message: error.fullMessage,
            metadata: [errorCodeKey: .string(error.code.rawValue)])
    }

    /// Runs `body`, turning an `LQXError` into its gRPC error (other errors pass unchanged).
    public static func mapping<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as LQXError {
            throw rpcError(error)
        }
    }
}
