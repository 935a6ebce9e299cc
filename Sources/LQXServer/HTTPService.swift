import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import LQXModel
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle

/// The HTTP side of a server (`/health`, `/metrics`, the JSON form of the API; later the
/// dashboard) on Hummingbird, as a `Service`, plain or TLS. Routes are added by the daemon that
/// owns it.
public final class HTTPService: Service, Sendable {
    /// An HTTP status.
    public typealias Status = HTTPResponse.Status
    /// Answers a POST: its path, its `Authorization` header, its body (JSON) and the client's
    /// address (as gRPC writes a peer: `ipv4:HOST:PORT`, `ipv6:[HOST]:PORT`).
    public typealias Post =
        @Sendable (_ path: String, _ authorization: String?, _ body: String, _ peer: String) async -> Reply

    /// A request's context with the client's address.
    struct PeerContext: RequestContext {
        var coreContext: CoreRequestContextStorage
        /// The client, as gRPC names a peer.
        let peer: String

        init(source: ApplicationRequestContextSource) {
            coreContext = .init(source: source)
            peer =
                switch source.channel.remoteAddress {
                case .v4(let address)?: "ipv4:\(address.host):\(source.channel.remoteAddress?.port ?? 0)"
                case .v6(let address)?: "ipv6:[\(address.host)]:\(source.channel.remoteAddress?.port ?? 0)"
                case .unixDomainSocket?: "unix:"
                case nil: "<unknown>"
                }
        }
    }

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

    private let application: Application<RouterResponder<PeerContext>>
    private let bound = OneShot<HostPort>()
    /// What the service listens on, as configured.
    public let address: HostPort

    /// A server on `address` (port 0: any free port) answering GET (and HEAD) on `routes`.
    public convenience init(address: HostPort, routes: [String: @Sendable () async -> Reply], logger: Logger) {
        self.init(address: address, routes: routes, post: nil, server: .http1(), logger: logger)
    }

    /// A TLS server (certificate chain and key in PEM files) answering GET on `routes` and every
    /// POST of a JSON body (at most `maximumBody` bytes) with `post`.
    public convenience init(
        address: HostPort, routes: [String: @Sendable () async -> Reply], post: @escaping Post,
        maximumBody: Int = 4 << 20, certificateChain: String, privateKey: String, logger: Logger
    ) throws(LQXError) {
        let server: HTTPServerBuilder
        do {
            let configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certificateChain).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: privateKey, format: .pem)))
            server = try .tls(.http1(), tlsConfiguration: configuration)
        } catch {
            throw LQXError(.invalidSpec, "cannot set up TLS for HTTP from \(certificateChain)", cause: error)
        }
        self.init(
            address: address, routes: routes, post: (post, maximumBody), server: server, logger: logger)
    }

    private init(
        address: HostPort, routes: [String: @Sendable () async -> Reply], post: (Post, Int)?,
        server: HTTPServerBuilder, logger: Logger
    ) {
        let router = Router(context: PeerContext.self)
        if let (post, maximum) = post {
            router.post("**") { request, context -> Response in
                let type = request.headers[.contentType] ?? "application/json"
                let reply: Reply
                if !type.hasPrefix("application/json") {
                    reply = Reply(status: .unsupportedMediaType, body: "send Content-Type: application/json\n")
                } else if let body = try? await request.body.collect(upTo: maximum) {
                    reply = await post(
                        request.uri.path, request.headers[.authorization], String(buffer: body), context.peer)
                } else {
                    reply = Reply(status: .contentTooLarge, body: "the body is larger than \(maximum) bytes\n")
                }
                return Response(
                    status: reply.status, headers: [.contentType: reply.contentType],
                    body: .init(byteBuffer: ByteBuffer(string: reply.body)))
            }
        }
        for (path, reply) in routes {
            @Sendable func respond(_ request: Request, _ context: PeerContext) async -> Response {
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
            router: router, server: server,
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
