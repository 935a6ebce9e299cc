import NIOCore
import Synchronization

@testable import AgentProtocol

// Helpers shared by the AgentProtocol tests.

/// Plain bitwise CRC-32C (reflected polynomial 0x82F63B78), the reference for the library's
/// table/hardware implementation. `crc` continues an earlier result (0 to start).
func referenceCRC32C<Bytes: Sequence>(_ bytes: Bytes, continuing crc: UInt32 = 0) -> UInt32
where Bytes.Element == UInt8 {
    var value = ~crc
    for byte in bytes {
        value ^= UInt32(byte)
        for _ in 0..<8 {
            value = (value >> 1) ^ (0x82F6_3B78 & (0 &- (value & 1)))
        }
    }
    return ~value
}

/// The big-endian bytes of an integer.
func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    let size = T.bitWidth / 8
    return (0..<size).map { UInt8(truncatingIfNeeded: value >> ((size - 1 - $0) * 8)) }
}

/// A frame header built byte by byte (independently of `Frame.writeHeader`), with a correct
/// header checksum over bytes 0..<28 unless `headerCRC` is given.
func rawHeader(
    version: UInt8 = FrameFormat.headerVersion, type: UInt8, flags: UInt16 = 0, session: UInt64 = 7,
    stream: UInt32 = 0, length: UInt32, payloadCRC: UInt32, headerCRC: UInt32? = nil
) -> [UInt8] {
    var bytes: [UInt8] = [0xF0, 0x4C, 0x51, 0x58, version, type]
    bytes += bigEndianBytes(flags)
    bytes += bigEndianBytes(session)
    bytes += bigEndianBytes(stream)
    bytes += bigEndianBytes(length)
    bytes += bigEndianBytes(payloadCRC)
    bytes += bigEndianBytes(headerCRC ?? referenceCRC32C(bytes))
    return bytes
}

/// Deterministic payload bytes that never contain 0xF0 (the first magic byte), so a decoder
/// scanning them as garbage cannot stop early.
func patternBytes(_ count: Int, seed: Int = 0) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 7 &+ seed) % 0xE0) }
}

extension Frame {
    /// The encoded frame as an array.
    var wireBytes: [UInt8] {
        let buffer = encoded()
        return [UInt8](unsafeUninitializedCapacity: buffer.readableBytes) { target, count in
            buffer.withUnsafeReadableBytes { UnsafeMutableRawBufferPointer(target).copyMemory(from: $0) }
            count = buffer.readableBytes
        }
    }
}

/// Runs `FrameDecoder.next` until it needs more data and returns what it produced, merging
/// consecutive garbage skips like the channel handler does.
func decodeEvents(_ buffer: inout ByteBuffer, maximumPayload: Int = FrameFormat.maximumPayload) -> [FrameEvent] {
    var events: [FrameEvent] = []
    while true {
        switch FrameDecoder.next(from: &buffer, maximumPayload: maximumPayload) {
        case .needMoreData:
            return events
        case .frame(let frame):
            events.append(.frame(frame))
        case .oversized(let header):
            events.append(.oversized(header))
        case .skipped(let count, let reason):
            if reason == .garbage, case .discarded(let previous, .garbage)? = events.last {
                events[events.count - 1] = .discarded(bytes: previous + count, reason: .garbage)
            } else {
                events.append(.discarded(bytes: count, reason: reason))
            }
        }
    }
}

/// `decodeEvents` over an array of bytes; also returns how many bytes stay buffered.
func decodeEvents(_ bytes: [UInt8], maximumPayload: Int = FrameFormat.maximumPayload) -> (
    events: [FrameEvent], leftover: Int
) {
    var buffer = ByteBuffer(bytes: bytes)
    let events = decodeEvents(&buffer, maximumPayload: maximumPayload)
    return (events, buffer.readableBytes)
}

/// A value shared between tasks.
final class Locked<Value: Sendable>: Sendable {
    let mutex: Mutex<Value>

    init(_ value: Value) { self.mutex = Mutex(value) }

    var value: Value { mutex.withLock { $0 } }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
func eventually(
    timeout: Duration = .seconds(10), _ condition: () -> Bool
) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(2))
    }
    return condition()
}
