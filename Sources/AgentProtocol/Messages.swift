import NIOCore
import SwiftProtobuf

/// Short names for the generated message types.
public typealias Hello = Limiquantix_Agent_V1_Hello
/// The agent's acceptance of a session (WELCOME payload).
public typealias Welcome = Limiquantix_Agent_V1_Welcome
/// An error as it travels on the wire (RESET and GOAWAY payloads, `error` replies).
public typealias WireError = Limiquantix_Agent_V1_Error
/// The operation a new stream carries (OPEN payload, host to agent).
public typealias Request = Limiquantix_Agent_V1_Request
/// A message from the agent on a stream (MESSAGE payload, agent to host).
public typealias Reply = Limiquantix_Agent_V1_Reply
/// A message from the host on a stream: signal, resize or upload commit (MESSAGE payload).
public typealias Control = Limiquantix_Agent_V1_Control

/// Largest MESSAGE / OPEN payload either side sends (directory listings are split to fit).
public let maximumMessagePayload = 64 << 10

extension SwiftProtobuf.Message {
    /// The message serialized into a buffer.
    public func buffer() -> ByteBuffer {
        // Serialization of a well-formed generated message cannot fail.
        let bytes: [UInt8] = (try? serializedBytes()) ?? []
        return ByteBuffer(bytes: bytes)
    }

    /// Decodes a message from a frame payload; malformed input is a protocol error.
    public init(payload: ByteBuffer) throws(AgentError) {
        do {
            try self.init(serializedBytes: Array(payload.readableBytesView))
        } catch {
            throw AgentError(.protocolViolation, "malformed \(Self.protoMessageName): \(error)")
        }
    }
}

/// Version negotiation and the HELLO/WELCOME bodies.
public enum Handshake {
    /// Protocol versions this implementation speaks.
    public static let supportedVersions: ClosedRange<UInt32> = 1...FrameFormat.protocolVersion

    /// Picks the highest version both sides speak, or nil.
    public static func negotiate(min: UInt32, max: UInt32) -> UInt32? {
        guard min <= max else { return nil }
        let high = Swift.min(max, supportedVersions.upperBound)
        let low = Swift.max(min, supportedVersions.lowerBound)
        return low <= high ? high : nil
    }

    /// The limits a HELLO announces, validated.
    public static func limits(of hello: Hello) throws(AgentError) -> SessionLimits {
        try validated(
            window: hello.initialWindow, payload: hello.maxFramePayload, streams: UInt32(Int32.max))
    }

    /// The limits a WELCOME announces, validated.
    public static func limits(of welcome: Welcome) throws(AgentError) -> SessionLimits {
        try validated(window: welcome.initialWindow, payload: welcome.maxFramePayload, streams: welcome.maxStreams)
    }

    private static func validated(window: UInt32, payload: UInt32, streams: UInt32) throws(AgentError) -> SessionLimits
    {
        guard payload >= 4096, payload <= FrameFormat.maximumPayload else {
            throw AgentError(
                .protocolViolation, "max_frame_payload \(payload) outside 4096...\(FrameFormat.maximumPayload)")
        }
        guard window >= payload else {
            throw AgentError(.protocolViolation, "initial_window \(window) below max_frame_payload \(payload)")
        }
        guard window <= UInt32(Int32.max) else {
            throw AgentError(.protocolViolation, "initial_window \(window) above the largest window, \(Int32.max)")
        }
        guard streams >= 1 else { throw AgentError(.protocolViolation, "max_streams is 0") }
        return SessionLimits(initialWindow: Int(window), maxFramePayload: Int(payload), maxStreams: Int(streams))
    }
}
