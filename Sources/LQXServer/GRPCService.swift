import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel
import Logging
import ServiceLifecycle

/// A gRPC server as a `Service`: serves until graceful shutdown, then lets open calls finish
/// for `gracePeriod` before cancelling them (an exec stream may run for hours).
public final class GRPCService: Service, Sendable {
    /// The underlying server.
    public let server: GRPCServer<HTTP2ServerTransport.Posix>
    /// What the server listens on, as configured.
    public let address: HostPort
    private let gracePeriod: Duration

    /// A server for `services` on `address` (port 0: any free port), with `security` and, in
    /// order, `interceptors` (e.g. `BearerTokenInterceptor`).
    public init(
        address: HostPort, security: ServerSecurity = .plaintext, services: [any RegistrableRPCService],
        interceptors: [any ServerInterceptor] = [], gracePeriod: Duration = .seconds(10)
    ) {
        let socket: GRPCNIOTransportCore.SocketAddress =
            address.isIPv6
            ? .ipv6(host: address.host, port: address.port) : .ipv4(host: address.host, port: address.port)
        self.server = GRPCServer(
            transport: .http2NIOPosix(address: socket, transportSecurity: security.transportSecurity),
            services: services, interceptors: interceptors)
        self.address = address
        self.gracePeriod = gracePeriod
    }

    /// Serves until graceful shutdown (or cancellation).
    public func run() async throws {
        let server = self.server, grace = gracePeriod
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await withGracefulShutdownHandler {
                    try await server.serve()
                } onGracefulShutdown: {
                    server.beginGracefulShutdown()
                }
            }
            // After graceful shutdown began, calls still open get the grace period; then the
            // group is cancelled, which cancels them. That ends the service normally: a stop
            // with a call still open (a client's event stream) is still a clean stop, exit 0.
            group.addTask {
                try await gracefulShutdown()
                try await Task.sleep(for: grace)
            }
            try await group.next()
            group.cancelAll()
        }
    }

    /// The bound address once listening (`host:port`; the port is known after binding port 0).
    public func boundAddress() async throws(LQXError) -> HostPort {
        do {
            guard let bound = try await server.listeningAddress else {
                throw LQXError(.io, "the gRPC server did not bind \(address)")
            }
            if let v4 = bound.ipv4 { return HostPort(host: v4.host, port: v4.port) }
            if let v6 = bound.ipv6 { return HostPort(host: v6.host, port: v6.port) }
            throw LQXError(.io, "the gRPC server bound \(bound), not a TCP address")
        } catch let error as LQXError {
            throw error
        } catch {
            throw LQXError(.io, "cannot listen on \(address) for gRPC", cause: error)
        }
    }
}
