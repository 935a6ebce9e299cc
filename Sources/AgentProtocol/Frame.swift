import NIOCore

/// The kind of a frame; see docs/protocol.md §3.
public enum FrameType: UInt8, Sendable, CaseIterable {
    /// Host → agent: starts a session (payload `Hello`).
    case hello = 0x01
    /// Agent → host: accepts a session (payload `Welcome`).
    case welcome = 0x02
    /// Either way: liveness probe with an opaque payload of at most 64 bytes.
    case ping = 0x03
    /// Either way: answer to a ping, echoing its payload.
    case pong = 0x04
    /// Either way: the session ends (payload `Error`).
    case goAway = 0x05
    /// Host → agent: opens a stream (payload `Request`).
    case open = 0x10
    /// Either way: a protobuf message on a stream (`Reply` or `Control`).
    case message = 0x11
    /// Either way: raw bytes on a stream; the flags carry the channel.
    case data = 0x12
    /// Either way: grants the peer more bytes of credit on a stream (payload u32 big-endian).
    case window = 0x13
    /// Either way: aborts a stream (payload `Error`).
    case reset = 0x14
}

/// Frame flag bits; see docs/protocol.md §3.2.
public struct FrameFlags: OptionSet, Sendable, Hashable {
    /// The flag bits as on the wire.
    public var rawValue: UInt16
    /// Creates flags from their wire bits.
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The sender sends nothing more on this stream (agent → host: the stream is complete).
    public static let endStream = FrameFlags(rawValue: 0x0001)
    /// DATA: the channel named by the channel bits is finished (stdin closed, stdout at EOF).
    public static let endOfChannel = FrameFlags(rawValue: 0x0002)

    static let channelShift: UInt16 = 8
    static let channelMask: UInt16 = 0x0F00

    /// The data channel (0 = stdin / stdout / file content, 1 = stderr).
    public var channel: UInt8 {
        get { UInt8((rawValue & Self.channelMask) >> Self.channelShift) }
        set { rawValue = (rawValue & ~Self.channelMask) | ((UInt16(newValue) << Self.channelShift) & Self.channelMask) }
    }

    /// Flags with a channel set.
    public static func channel(_ channel: UInt8) -> FrameFlags {
        var flags = FrameFlags()
        flags.channel = channel
        return flags
    }
}

/// One protocol frame: a 32-byte header and a payload.
public struct Frame: Sendable, Equatable {
    /// Frame kind as received; `FrameType(rawValue:)` is nil for types from a newer version.
    public var rawType: UInt8
    /// The frame's flags (end of stream, end of channel, the data channel).
    public var flags: FrameFlags
    /// The session the frame belongs to (chosen by the host in HELLO).
    public var session: UInt64
    /// 0 for session-level frames.
    public var stream: UInt32
    /// The bytes after the header.
    public var payload: ByteBuffer

    /// Creates a frame.
    public init(type: FrameType, flags: FrameFlags = [], session: UInt64, stream: UInt32 = 0, payload: ByteBuffer) {
        self.rawType = type.rawValue
        self.flags = flags
        self.session = session
        self.stream = stream
        self.payload = payload
    }

    /// Creates a frame with any type byte (for tests of unknown types).
    public init(rawType: UInt8, flags: FrameFlags, session: UInt64, stream: UInt32, payload: ByteBuffer) {
        self.rawType = rawType
        self.flags = flags
        self.session = session
        self.stream = stream
        self.payload = payload
    }

    /// The frame kind, nil when unknown.
    public var type: FrameType? { FrameType(rawValue: rawType) }
}

/// Constants of the wire format.
public enum FrameFormat {
    /// The four magic bytes that start every frame: 0xF0 'L' 'Q' 'X'.
    public static let magic: UInt32 = 0xF04C_5158
    /// Header version written in every frame.
    public static let headerVersion: UInt8 = 1
    /// Header size in bytes.
    public static let headerSize = 32
    /// Largest payload any implementation may send (1 MiB). A receiver may announce less.
    public static let maximumPayload = 1 << 20
    /// The highest protocol version this implementation speaks.
    public static let protocolVersion: UInt32 = 1
}

extension Frame {
    /// Writes the 32-byte header for this frame into `buffer`.
    public func writeHeader(into buffer: inout ByteBuffer) {
        let payloadCRC = payload.withUnsafeReadableBytes { CRC32C.checksum($0) }
        let start = buffer.writerIndex
        buffer.writeInteger(FrameFormat.magic)
        buffer.writeInteger(FrameFormat.headerVersion)
        buffer.writeInteger(rawType)
        buffer.writeInteger(flags.rawValue)
        buffer.writeInteger(session)
        buffer.writeInteger(stream)
        buffer.writeInteger(UInt32(payload.readableBytes))
        buffer.writeInteger(payloadCRC)
        let headerCRC = buffer.withUnsafeReadableBytes { bytes in
            CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[(start - buffer.readerIndex)...]))
        }
        buffer.writeInteger(headerCRC)
    }

    /// The whole frame as bytes (header and payload), for tests and fixtures.
    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: FrameFormat.headerSize + payload.readableBytes)
        writeHeader(into: &buffer)
        var copy = payload
        buffer.writeBuffer(&copy)
        return buffer
    }
}
