import Hummingbird
import LQXModel
import Logging
import NIOCore
import ServiceLifecycle

/// The HTTP side of a server (`/health`, `/metrics`; later the dashboard and the JSON API) on
/// Hummingbird, as a `Service`. Routes are added by the daemon that owns it.
public final class HTTPService: Service, Sendable {
    /// One route's answer.
    public struct Reply: Sendable {
        /// The status code.
        public var status: HTTPResponse.Status
        /// The `Content-Type`.
        public var contentType: String
        /// The body.
        public var body: String

        /// A reply (200, plain text by default).
        public init(
            status: HTTPResponse.Status = .ok, contentType: String = "text/plain; charset=utf-8", body: String
        ) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }
    }

    private let application: Application<RouterResponder<BasicRequestContext>>
    private let bound = OneShot<HostPort>()
    /// What the service listens on, as configured.
    public let address: HostPort

    /// A server on `address` (port 0: any free port) answering GET (and HEAD) on `routes`.
    public init(address: HostPort, routes: [String: @Sendable () async -> Reply], logger: Logger) {
        let router = Router()
        for (path, reply) in routes {
            @Sendable func respond(_ request: Request, _ context: BasicRequestContext) async -> Response {
                let reply = await reply()
                return Response(
                    status: reply.status, headers: [.contentType: reply.contentType],
                    body: .init(byteBuffer: ByteBuffer(string: reply.body)))
            }
            router.get(RouterPath(path), use: respond)
            router.head(RouterPath(path), use: respond)
        }
        self.address = address
        let bound = self.bound
        application = Application(
            router: router,
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
            onServerRunning: { channel in
                let local = channel.localAddress
                bound.set(
                    .success(HostPort(host: local?.ipAddress ?? address.host, port: local?.port ?? address.port)))
            }, logger: logger)
    }

    /// Serves until graceful shutdown.
    public func run() async throws {
        do {
            try await application.runService()
        } catch {
            let failure = LQXError(.io, "cannot serve HTTP on \(address)", cause: error)
            bound.set(.failure(failure))
            throw failure
        }
    }

    /// The bound address, once the server listens (throws when it could not bind).
    public func boundAddress() async throws(LQXError) -> HostPort {
        try await bound.wait()
    }
}
