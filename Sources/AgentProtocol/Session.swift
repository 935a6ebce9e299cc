import Logging
import NIOCore

/// Timing and limits of a session; both ends use the same type.
public struct SessionConfiguration: Sendable {
    /// Limits this side announces.
    public var limits: SessionLimits
    /// A PING is sent after this much silence from the peer.
    public var keepaliveInterval: TimeAmount
    /// The peer is declared dead after this much silence (default 5 s).
    public var keepaliveTimeout: TimeAmount
    /// How long the host waits for WELCOME (HELLO is repeated every `helloRetry`).
    public var handshakeTimeout: TimeAmount
    /// Interval between HELLO retransmissions.
    public var helloRetry: TimeAmount

    /// Creates a configuration with production defaults.
    public init(
        limits: SessionLimits = SessionLimits(),
        keepaliveInterval: TimeAmount = .seconds(1),
        keepaliveTimeout: TimeAmount = .seconds(5),
        handshakeTimeout: TimeAmount = .seconds(10),
        helloRetry: TimeAmount = .milliseconds(500)
    ) {
        self.limits = limits
        self.keepaliveInterval = keepaliveInterval
        self.keepaliveTimeout = keepaliveTimeout
        self.handshakeTimeout = handshakeTimeout
        self.helloRetry = helloRetry
    }
}

/// A byte-stream channel with the frame codec installed.
public typealias FramedChannel = NIOAsyncChannel<FrameEvent, Frame>

extension FramedChannel {
    /// Installs the frame decoder and encoder on `channel` and wraps it for async use.
    /// Must be called on the channel's event loop.
    public static func framing(
        _ channel: any Channel, maximumPayload: Int = FrameFormat.maximumPayload
    ) throws -> FramedChannel {
        try channel.pipeline.syncOperations.addHandlers([
            ByteToMessageHandler(FrameDecoder(maximumPayload: maximumPayload)),
            FrameEncoder(),
            PingResponder(),
        ])
        return try FramedChannel(
            wrappingChannelSynchronously: channel,
            configuration: .init(
                backPressureStrategy: .init(lowWatermark: 2, highWatermark: 8),
                isOutboundHalfClosureEnabled: false))
    }
}

/// The parts of a session both ends run the same way.
public enum SessionLoops {
    /// Sends keepalive PINGs on silence and closes the session when the peer stays silent for
    /// `configuration.keepaliveTimeout`. Returns when the session closes or the task is cancelled.
    public static func keepalive(_ mux: Multiplexer, configuration: SessionConfiguration) async {
        let tick = TimeAmount.nanoseconds(
            max(
                10_000_000,
                min(configuration.keepaliveInterval.nanoseconds, configuration.keepaliveTimeout.nanoseconds / 4)))
        var lastPing = NIODeadline.now()
        while !Task.isCancelled, mux.closedError == nil {
            try? await Task.sleep(nanoseconds: UInt64(tick.nanoseconds))
            let idle = mux.idleTime
            if idle >= configuration.keepaliveTimeout {
                mux.close(
                    AgentError(.timeout, "peer silent for \(idle.nanoseconds / 1_000_000) ms"), goAway: true)
                return
            }
            if idle >= configuration.keepaliveInterval, NIODeadline.now() - lastPing >= configuration.keepaliveInterval
            {
                mux.sendKeepalive()
                lastPing = NIODeadline.now()
            }
        }
    }
}
