import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 server for `GET /health` and `GET /metrics`. Requests are answered from
/// `respond` (called on a task, never on the event loop); request bodies are not accepted.
public final class HTTPEndpoint: Sendable {
    public struct Response: Sendable {
        public var status: HTTPResponseStatus
        public var contentType: String
        public var body: String
        public init(status: HTTPResponseStatus = .ok, contentType: String = "text/plain; charset=utf-8", body: String) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }
    }

    let channel: any Channel

    /// The bound address (the port is known after binding port 0).
    public var localAddress: SocketAddress? { channel.localAddress }

    private init(channel: any Channel) { self.channel = channel }

    public static func start(
        host: String, port: Int, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        respond: @escaping @Sendable (_ path: String) async -> Response
    ) async throws -> HTTPEndpoint {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(Handler(respond: respond))
                }
            }
            .bind(host: host, port: port).get()
        return HTTPEndpoint(channel: channel)
    }

    public func close() async {
        try? await channel.close()
    }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let respond: @Sendable (String) async -> Response
        private var head: HTTPRequestHead?

        init(respond: @escaping @Sendable (String) async -> Response) { self.respond = respond }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head): self.head = head
            case .body: break  // ignored: no endpoint takes a body
            case .end:
                guard let head else { return }
                self.head = nil
                let loop = context.eventLoop
                let bound = NIOLoopBound(context, eventLoop: loop)
                let keepAlive = head.isKeepAlive
                let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
                let method = head.method
                let version = head.version
                let respond = self.respond
                Task {
                    let response =
                        method == .GET || method == .HEAD
                        ? await respond(path)
                        : Response(status: .methodNotAllowed, body: "only GET\n")
                    loop.execute {
                        let context = bound.value
                        var headers = HTTPHeaders()
                        headers.add(name: "Content-Type", value: response.contentType)
                        headers.add(name: "Content-Length", value: String(response.body.utf8.count))
                        if !keepAlive { headers.add(name: "Connection", value: "close") }
                        context.write(
                            NIOAny(
                                HTTPServerResponsePart.head(
                                    HTTPResponseHead(version: version, status: response.status, headers: headers))),
                            promise: nil)
                        if method != .HEAD {
                            context.write(
                                NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: response.body)))),
                                promise: nil)
                        }
                        let done = context.writeAndFlushPromise()
                        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: done)
                        let channel = context.channel
                        if !keepAlive { done.futureResult.whenComplete { _ in channel.close(promise: nil) } }
                    }
                }
            }
        }
    }
}

extension ChannelHandlerContext {
    fileprivate func writeAndFlushPromise() -> EventLoopPromise<Void> { eventLoop.makePromise() }
}
