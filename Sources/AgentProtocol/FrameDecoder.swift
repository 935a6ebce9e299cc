import NIOCore

/// Why the decoder skipped input.
public enum DiscardReason: String, Sendable {
    /// Bytes that do not start a frame (no magic, or a header checksum that does not match).
    case garbage
    /// A header with an unknown header version.
    case unsupportedVersion
    /// A payload whose checksum does not match its header.
    case payloadChecksum
}

/// The header of a frame that was discarded because its payload is over the limit: its header
/// checksum matched, so the session and stream it names are real (or a forgery of them).
public struct OversizedFrame: Sendable, Equatable {
    /// Session id of the header.
    public var session: UInt64
    /// Stream id of the header.
    public var stream: UInt32
    /// Frame type code of the header.
    public var rawType: UInt8
    /// Announced payload length.
    public var length: UInt32

    /// Creates a description of a discarded header.
    public init(session: UInt64, stream: UInt32, rawType: UInt8, length: UInt32) {
        self.session = session
        self.stream = stream
        self.rawType = rawType
        self.length = length
    }
}

/// What the decoder produces: a verified frame, or a note that input was skipped.
public enum FrameEvent: Sendable, Equatable {
    case frame(Frame)
    case discarded(bytes: Int, reason: DiscardReason)
    /// A valid header announcing more payload than allowed; its 32 header bytes were skipped (the
    /// payload that follows, if any, is scanned as garbage). The receiver can fail the stream the
    /// frame was meant for instead of leaving it waiting.
    case oversized(OversizedFrame)
}

/// Splits a byte stream into verified frames and resynchronises after any damage.
///
/// Only a frame whose header and payload checksums both match is ever emitted. After garbage, a
/// truncated or corrupt frame, the decoder skips ahead to the next magic and tries again; it never
/// buffers more than one header plus `maximumPayload` bytes.
public struct FrameDecoder: ByteToMessageDecoder {
    /// Frames and notes about skipped input.
    public typealias InboundOut = FrameEvent

    /// Largest payload accepted; larger frames are discarded whole (their header) as oversized.
    public let maximumPayload: Int
    private var pendingGarbage = 0
    private var recovery = Recovery()

    /// Creates a decoder.
    public init(maximumPayload: Int = FrameFormat.maximumPayload) {
        precondition(maximumPayload <= FrameFormat.maximumPayload)
        self.maximumPayload = maximumPayload
    }

    /// Emits the next frame in `buffer` (after notes about any input skipped before it), or asks
    /// for more data.
    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        while true {
            switch Self.next(from: &buffer, maximumPayload: maximumPayload, recovery: &recovery) {
            case .needMoreData:
                flushGarbage(context: context)
                return .needMoreData
            case .skipped(let count, .garbage):
                pendingGarbage += count
            case .skipped(let count, let reason):
                flushGarbage(context: context)
                context.fireChannelRead(wrapInboundOut(.discarded(bytes: count, reason: reason)))
            case .oversized(let header):
                flushGarbage(context: context)
                context.fireChannelRead(wrapInboundOut(.oversized(header)))
            case .frame(let frame):
                flushGarbage(context: context)
                context.fireChannelRead(wrapInboundOut(.frame(frame)))
                return .continue
            }
        }
    }

    /// Compacts the accumulation buffer only when that is cheap or overdue.
    ///
    /// NIO's default moves the unread remainder (here usually most of a 256 KiB frame) to the
    /// front after every read, and because emitted frames are slices of the same storage, that move
    /// copies into fresh memory. Compacting once at least 256 KiB were consumed and the remainder
    /// is at most a quarter of that, or once 4 MiB were consumed, keeps the buffer bounded at a
    /// fraction of the copying.
    public func shouldReclaimBytes(buffer: ByteBuffer) -> Bool {
        let consumed = buffer.readerIndex
        return (consumed >= 256 * 1024 && buffer.readableBytes <= consumed / 4) || consumed >= 4 * 1024 * 1024
    }

    /// Decodes the rest once no more input will come: a frame cut short is skipped as garbage, and
    /// complete frames behind it are still emitted.
    public mutating func decodeLast(
        context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool
    ) throws -> DecodingState {
        // No more input will come: a header still waiting for its payload is a truncated frame.
        // Step over its first byte and keep scanning, so complete frames behind it are found.
        while buffer.readableBytes > 0 {
            while try decode(context: context, buffer: &buffer) == .continue {}
            if buffer.readableBytes > 0 {
                pendingGarbage += 1
                buffer.moveReaderIndex(forwardBy: 1)
            }
        }
        flushGarbage(context: context)
        return .needMoreData
    }

    private mutating func flushGarbage(context: ChannelHandlerContext) {
        guard pendingGarbage > 0 else { return }
        let count = pendingGarbage
        pendingGarbage = 0
        context.fireChannelRead(wrapInboundOut(.discarded(bytes: count, reason: .garbage)))
    }

    /// Result of one decoding step.
    public enum Step: Equatable {
        case needMoreData
        case skipped(Int, DiscardReason)
        /// A header over the payload limit was skipped (32 bytes).
        case oversized(OversizedFrame)
        case frame(Frame)
    }

    /// What the decoder remembers between steps to bound the work of recovering from damage.
    public struct Recovery: Sendable, Equatable {
        /// Bytes still to be consumed before a payload checksum failure may again look for a frame
        /// start inside its damaged range (0: it may). A rescan sets it to the damaged frame's
        /// whole length, so the bytes of that range are checksummed again at most once, whatever
        /// frames (valid or not) a peer puts inside it.
        var rescanDebt = 0
        /// Creates the initial state.
        public init() {}
    }

    /// One decoding step without recovery state: a damaged frame is skipped whole.
    public static func next(from buffer: inout ByteBuffer, maximumPayload: Int) -> Step {
        var recovery = Recovery()
        recovery.rescanDebt = .max
        return next(from: &buffer, maximumPayload: maximumPayload, recovery: &recovery)
    }

    /// One decoding step over `buffer`: consumes a frame or skipped bytes, or nothing.
    ///
    /// After a payload checksum failure the decoder looks inside the damaged frame's announced
    /// range for the next valid *header* (header checks only) and resumes there, so frames that a
    /// truncated frame's announced length swallowed are still found. Until the bytes of that
    /// range have been consumed, a further damaged frame is skipped whole without a look inside:
    /// every payload byte is checksummed at most twice, whatever a peer sends.
    ///
    /// Pure apart from `recovery`; shared by the channel handler and by tests that drive it directly.
    public static func next(from buffer: inout ByteBuffer, maximumPayload: Int, recovery: inout Recovery) -> Step {
        let before = buffer.readableBytes
        let step = decode(from: &buffer, maximumPayload: maximumPayload, recovery: &recovery)
        let consumed = before - buffer.readableBytes
        if recovery.rescanDebt != .max { recovery.rescanDebt = max(0, recovery.rescanDebt - consumed) }
        return step
    }

    private static func decode(from buffer: inout ByteBuffer, maximumPayload: Int, recovery: inout Recovery) -> Step {
        let available = buffer.readableBytes
        guard available > 0 else { return .needMoreData }
        // Find the first byte of the magic.
        let offset = buffer.withUnsafeReadableBytes { bytes -> Int? in
            bytes.firstIndex(of: 0xF0)
        }
        guard let offset else {
            buffer.moveReaderIndex(forwardBy: available)
            return .skipped(available, .garbage)
        }
        if offset > 0 {
            buffer.moveReaderIndex(forwardBy: offset)
            return .skipped(offset, .garbage)
        }
        // Check as much of the magic as we have, so garbage is dropped early.
        let magicBytes = min(4, available)
        let magicMatches = buffer.withUnsafeReadableBytes { bytes -> Bool in
            let magic: [UInt8] = [0xF0, 0x4C, 0x51, 0x58]
            for i in 0..<magicBytes where bytes[i] != magic[i] { return false }
            return true
        }
        guard magicMatches else {
            buffer.moveReaderIndex(forwardBy: 1)
            return .skipped(1, .garbage)
        }
        guard available >= FrameFormat.headerSize else { return .needMoreData }
        let header = buffer.withUnsafeReadableBytes { bytes -> (ok: Bool, version: UInt8, length: UInt32) in
            let headerCRC = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<28]))
            let stored = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 28, as: UInt32.self))
            let length = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
            return (headerCRC == stored, bytes[4], length)
        }
        guard header.ok else {
            buffer.moveReaderIndex(forwardBy: 1)
            return .skipped(1, .garbage)
        }
        guard header.version == FrameFormat.headerVersion else {
            buffer.moveReaderIndex(forwardBy: FrameFormat.headerSize)
            return .skipped(FrameFormat.headerSize, .unsupportedVersion)
        }
        guard header.length <= maximumPayload else {
            let start = buffer.readerIndex
            let oversized = OversizedFrame(
                session: buffer.getInteger(at: start + 8, as: UInt64.self)!,
                stream: buffer.getInteger(at: start + 16, as: UInt32.self)!,
                rawType: buffer.getInteger(at: start + 5, as: UInt8.self)!, length: header.length)
            buffer.moveReaderIndex(forwardBy: FrameFormat.headerSize)
            return .oversized(oversized)
        }
        let total = FrameFormat.headerSize + Int(header.length)
        guard available >= total else { return .needMoreData }
        let start = buffer.readerIndex
        let rawType = buffer.getInteger(at: start + 5, as: UInt8.self)!
        let flags = buffer.getInteger(at: start + 6, as: UInt16.self)!
        let session = buffer.getInteger(at: start + 8, as: UInt64.self)!
        let stream = buffer.getInteger(at: start + 16, as: UInt32.self)!
        let payloadCRC = buffer.getInteger(at: start + 24, as: UInt32.self)!
        let payload = buffer.getSlice(at: start + FrameFormat.headerSize, length: Int(header.length))!
        let actual = payload.withUnsafeReadableBytes { CRC32C.checksum($0) }
        guard actual == payloadCRC else {
            // The header's own checksum matched, so it is a real header whose payload was damaged
            // or cut short (a peer restarted mid-frame), or a forgery.
            if recovery.rescanDebt == 0, let resume = nextHeader(in: buffer, before: total) {
                recovery.rescanDebt = total
                buffer.moveReaderIndex(forwardBy: resume)
                return .skipped(resume, .payloadChecksum)
            }
            buffer.moveReaderIndex(forwardBy: total)
            return .skipped(total, .payloadChecksum)
        }
        buffer.moveReaderIndex(forwardBy: total)
        return .frame(
            Frame(
                rawType: rawType, flags: FrameFlags(rawValue: flags), session: session, stream: stream,
                payload: payload))
    }
}

extension FrameDecoder {
    /// Offset (1..<limit) of the first position in `buffer` that starts a header with a valid
    /// checksum and version, or of a magic too close to the end to be checked; nil when none.
    static func nextHeader(in buffer: ByteBuffer, before limit: Int) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            var offset = 1
            while offset < limit {
                guard let found = bytes[offset..<limit].firstIndex(of: 0xF0) else { return nil }
                offset = found
                if offset + 4 <= bytes.count, bytes[offset + 1] == 0x4C, bytes[offset + 2] == 0x51,
                    bytes[offset + 3] == 0x58
                {
                    guard offset + FrameFormat.headerSize <= bytes.count else { return offset }
                    let header = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + FrameFormat.headerSize)])
                    let stored = UInt32(bigEndian: header.loadUnaligned(fromByteOffset: 28, as: UInt32.self))
                    if header[4] == FrameFormat.headerVersion,
                        CRC32C.checksum(UnsafeRawBufferPointer(rebasing: header[0..<28])) == stored
                    {
                        return offset
                    }
                }
                offset += 1
            }
            return nil
        }
    }
}

/// Writes frames as header + payload without copying the payload.
public final class FrameEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    /// Frames to send.
    public typealias OutboundIn = Frame
    /// Encoded bytes: the header (with a small payload appended), then any larger payload.
    public typealias OutboundOut = ByteBuffer

    /// Creates an encoder.
    public init() {}

    /// Writes the frame's header and payload; a payload of up to 4 KiB is copied behind the header,
    /// a larger one is written as it is.
    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        var header = context.channel.allocator.buffer(capacity: FrameFormat.headerSize)
        frame.writeHeader(into: &header)
        if frame.payload.readableBytes == 0 {
            context.write(wrapOutboundOut(header), promise: promise)
        } else if frame.payload.readableBytes <= 4096 {
            var small = frame.payload
            header.writeBuffer(&small)
            context.write(wrapOutboundOut(header), promise: promise)
        } else {
            context.write(wrapOutboundOut(header), promise: nil)
            context.write(wrapOutboundOut(frame.payload), promise: promise)
        }
    }
}
