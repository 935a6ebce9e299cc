import AgentProtocol
import NIOCore
import NIOPosix

/// Opens a framed byte stream to an agent address.
enum AgentDialer {
    static func dial(
        _ address: AgentAddress, group: any EventLoopGroup, timeout: TimeAmount, maxPayload: Int
    ) async throws -> FramedChannel {
        let bootstrap = ClientBootstrap(group: group).connectTimeout(timeout)
        switch address {
        case .unix(let path):
            return try await bootstrap.connect(unixDomainSocketPath: path) { channel in
                channel.eventLoop.makeCompletedFuture { try FramedChannel.framing(channel, maximumPayload: maxPayload) }
            }
        case .vsock(let cid, let port):
            return try await bootstrap.connect(to: VsockAddress(cid: .init(rawValue: cid), port: .init(rawValue: port)))
            {
                channel in
                channel.eventLoop.makeCompletedFuture { try FramedChannel.framing(channel, maximumPayload: maxPayload) }
            }
        case .hybridVsock(let path, let port):
            let (channel, handshake) = try await bootstrap.connect(unixDomainSocketPath: path) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = HybridVsockHandshake(port: port, promise: channel.eventLoop.makePromise())
                    try channel.pipeline.syncOperations.addHandler(handler)
                    let framed = try FramedChannel.framing(channel, maximumPayload: maxPayload)
                    return (framed, handler.promise.futureResult)
                }
            }
            do {
                let timeoutTask = channel.channel.eventLoop.scheduleTask(in: timeout) {
                    channel.channel.close(promise: nil)
                }
                defer { timeoutTask.cancel() }
                try await handshake.get()
            } catch {
                try? await channel.channel.close()
                throw AgentError(.unavailable, "hybrid vsock handshake on \(path) port \(port) failed: \(error)")
            }
            return channel
        }
    }
}

/// The host side of the hybrid-vsock handshake: writes `CONNECT <port>\n`, expects `OK <n>\n`
/// (at most 64 bytes), then passes everything after the line on and leaves the pipeline.
final class HybridVsockHandshake: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let port: UInt32
    let promise: EventLoopPromise<Void>
    private var line = ByteBuffer()
    private var done = false

    init(port: UInt32, promise: EventLoopPromise<Void>) {
        self.port = port
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        var request = context.channel.allocator.buffer(capacity: 24)
        request.writeString("CONNECT \(port)\n")
        context.writeAndFlush(wrapOutboundOut(request), promise: nil)
        context.fireChannelActive()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { channelActive(context: context) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else {
            context.fireChannelRead(data)
            return
        }
        var bytes = unwrapInboundIn(data)
        line.writeBuffer(&bytes)
        guard let newline = line.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if line.readableBytes > 64 { fail(context: context, "reply line longer than 64 bytes") }
            return
        }
        let length = newline - line.readerIndex
        let text = line.readString(length: length) ?? ""
        line.moveReaderIndex(forwardBy: 1)
        guard text.hasPrefix("OK "), UInt32(text.dropFirst(3)) != nil else {
            fail(context: context, "unexpected reply \(text.debugDescription)")
            return
        }
        done = true
        promise.succeed(())
        if line.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(line)) }
        line = ByteBuffer()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(AgentError(.unavailable, "connection closed during the hybrid vsock handshake"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done {
            done = true
            promise.fail(error)
        }
        context.fireErrorCaught(error)
    }

    private func fail(context: ChannelHandlerContext, _ message: String) {
        done = true
        promise.fail(AgentError(.protocolViolation, "hybrid vsock: \(message)"))
        context.close(promise: nil)
    }
}
