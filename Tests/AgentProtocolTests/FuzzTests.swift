import Foundation
import LQXTestSupport
import NIOCore
import Testing

@testable import AgentProtocol

/// A frame identity that is cheap to keep for many frames.
private struct FrameID: Hashable {
    var rawType: UInt8
    var flags: UInt16
    var session: UInt64
    var stream: UInt32
    var length: Int
    var payloadCRC: UInt32

    init(_ frame: Frame) {
        rawType = frame.rawType
        flags = frame.flags.rawValue
        session = frame.session
        stream = frame.stream
        length = frame.payload.readableBytes
        payloadCRC = frame.payload.withUnsafeReadableBytes { CRC32C.checksum($0) }
    }
}

/// Counters reported at the end of a run.
private struct FuzzStats: CustomStringConvertible {
    var generated = 0
    var unmutated = 0
    var mutations: [String: Int] = [:]
    var bytes = 0
    var frames = 0
    var skipped: [DiscardReason: Int] = [:]
    var oversized = 0
    var sessions = 1
    var muxFrames = 0
    var opened = 0
    var consumed = 0
    var intactDecoded = 0
    var decodeTime = Duration.zero
    var muxTime = Duration.zero

    var description: String {
        let mutationList = mutations.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let skipList = skipped.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key)=\($0.value)" }
            .joined(separator: " ")
        return "generated \(generated) (unmutated \(unmutated), of which decoded \(intactDecoded); "
            + "\(mutationList)), \(bytes) bytes, "
            + "decoded \(frames) frames, skipped [\(skipList)], \(oversized) oversized headers, mux: \(muxFrames) frames, "
            + "\(opened) streams opened, \(consumed) events read, \(sessions) sessions; "
            + "time in decoder \(decodeTime), in multiplexer \(muxTime)"
    }
}

@Suite("Fuzz", .timeLimit(.minutes(2)))
struct FuzzTests {
    static let frameCount = 100_000
    static let maximumPayload = 64 << 10
    static let muxLimits = SessionLimits(initialWindow: 16 << 10, maxFramePayload: 8 << 10, maxStreams: 8)

    /// The seed: LQX_FUZZ_SEED (decimal or 0x-hex) when set, else a fixed value.
    static var seed: UInt64 {
        guard let text = ProcessInfo.processInfo.environment["LQX_FUZZ_SEED"] else { return 0x5EED_1A9E_2024_0001 }
        if text.hasPrefix("0x") { return UInt64(text.dropFirst(2), radix: 16) ?? 0 }
        return UInt64(text) ?? 0
    }

    /// A random frame; payload bytes are taken from `pool` at a random offset.
    static func randomFrame(_ rng: inout SplitMix64, pool: ByteBuffer) -> Frame {
        let rawType: UInt8 =
            Int.random(in: 0..<100, using: &rng) < 85
            ? FrameType.allCases.randomElement(using: &rng)!.rawValue : UInt8.random(in: 0...255, using: &rng)
        let stream: UInt32 =
            Int.random(in: 0..<100, using: &rng) < 80
            ? UInt32.random(in: 0...12, using: &rng) : UInt32.random(in: 0...UInt32.max, using: &rng)
        let length: Int
        switch Int.random(in: 0..<10, using: &rng) {
        case 0: length = 0
        case 1...3: length = Int.random(in: 1...64, using: &rng)
        default: length = Int.random(in: 0...2048, using: &rng)
        }
        var payload = randomSlice(of: pool, length: length, &rng)
        if rawType == FrameType.window.rawValue, length >= 4, Bool.random(using: &rng) {
            payload = ByteBuffer(bytes: bigEndianBytes(UInt32.random(in: 0...70_000, using: &rng)))  // a credit
        }
        return Frame(
            rawType: rawType, flags: FrameFlags(rawValue: UInt16.random(in: 0...UInt16.max, using: &rng)),
            session: rng.next(), stream: stream, payload: payload)
    }

    static func randomSlice(of pool: ByteBuffer, length: Int, _ rng: inout SplitMix64) -> ByteBuffer {
        let offset = Int.random(in: 0...(pool.readableBytes - length), using: &rng)
        return pool.getSlice(at: pool.readerIndex + offset, length: length)!
    }

    /// Damages encoded frame bytes in one of several ways; nil means "leave it intact".
    static func mutate(_ bytes: [UInt8], _ rng: inout SplitMix64) -> (name: String, bytes: [UInt8])? {
        var bytes = bytes
        switch Int.random(in: 0..<20, using: &rng) {
        case 0..<8:
            return nil
        case 8, 9:
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let bit = Int.random(in: 0..<(bytes.count * 8), using: &rng)
                bytes[bit / 8] ^= 1 << UInt8(bit % 8)
            }
            return ("flip", bytes)
        case 10:
            let bit = Int.random(in: 0..<(FrameFormat.headerSize * 8), using: &rng)
            bytes[bit / 8] ^= 1 << UInt8(bit % 8)
            return ("flipHeader", bytes)
        case 11, 12:
            return ("truncate", Array(bytes.prefix(Int.random(in: 1..<bytes.count, using: &rng))))
        case 13:
            return ("duplicate", bytes + bytes)
        case 14:
            let at = Int.random(in: 0...bytes.count, using: &rng)
            bytes.insert(contentsOf: rng.bytes(Int.random(in: 1...64, using: &rng)), at: at)
            return ("splice", bytes)
        case 15:
            // A random length with a valid header checksum (a plausible but lying header).
            let length = UInt32.random(in: 0...UInt32(maximumPayload * 2), using: &rng)
            bytes.replaceSubrange(20..<24, with: bigEndianBytes(length))
            bytes.replaceSubrange(28..<32, with: bigEndianBytes(CRC32C.checksum(Array(bytes[0..<28]))))
            return ("length", bytes)
        case 16:
            // A random length without fixing the checksum.
            bytes.replaceSubrange(20..<24, with: bigEndianBytes(UInt32(truncatingIfNeeded: rng.next())))
            return ("lengthBadCRC", bytes)
        case 17:
            // Another header version with a valid checksum.
            bytes[4] = UInt8.random(in: 2...255, using: &rng)
            bytes.replaceSubrange(28..<32, with: bigEndianBytes(CRC32C.checksum(Array(bytes[0..<28]))))
            return ("version", bytes)
        case 18:
            // Garbage rich in magic fragments before the frame.
            var garbage: [UInt8] = []
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                let magic: [UInt8] = [0xF0, 0x4C, 0x51, 0x58]
                garbage += magic.prefix(Int.random(in: 1...4, using: &rng))
                garbage += rng.bytes(Int.random(in: 0...40, using: &rng))
            }
            return ("magicGarbage", garbage + bytes)
        default:
            return ("garbageOnly", rng.bytes(Int.random(in: 1...300, using: &rng)))
        }
    }

    /// Feeds `chunk` and decodes what it can, checking the decoder's guarantees.
    private static func feed(
        _ chunk: inout ByteBuffer, into buffer: inout ByteBuffer, intact: inout Set<FrameID>,
        stats: inout FuzzStats, recovery: inout FrameDecoder.Recovery, emit: (Frame) -> Void
    ) {
        buffer.writeBuffer(&chunk)
        var steps = 0
        while true {
            steps += 1
            let snapshot = buffer  // shares storage; get* APIs only read within the readable bytes
            let before = buffer.readableBytes
            let step = FrameDecoder.next(from: &buffer, maximumPayload: maximumPayload, recovery: &recovery)
            let consumed = before - buffer.readableBytes
            switch step {
            case .needMoreData:
                if consumed != 0 { Issue.record("needMoreData consumed \(consumed) bytes") }
                if buffer.readableBytes > maximumPayload + FrameFormat.headerSize {
                    Issue.record("\(buffer.readableBytes) bytes buffered after needMoreData")
                }
                if buffer.readerIndex > 64 << 10 { buffer.discardReadBytes() }
                return
            case .skipped(let count, let reason):
                if count <= 0 || consumed != count { Issue.record("skipped \(count) but consumed \(consumed)") }
                stats.skipped[reason, default: 0] += count
            case .oversized:
                if consumed != FrameFormat.headerSize { Issue.record("oversized header consumed \(consumed)") }
                stats.oversized += 1
            case .frame(let frame):
                stats.frames += 1
                // The bytes the frame came from must be exactly its encoding, checksums included.
                let original = snapshot.getSlice(at: snapshot.readerIndex, length: consumed)
                if original != frame.encoded() {
                    Issue.record("emitted frame differs from its input bytes: \(frame)")
                }
                if frame.payload.readableBytes > maximumPayload { Issue.record("oversized frame emitted") }
                if intact.remove(FrameID(frame)) != nil { stats.intactDecoded += 1 }
                // Hand on a copy: a retained slice would make every later write to `buffer` copy it.
                var copy = frame
                copy.payload = ByteBuffer()
                copy.payload.writeImmutableBuffer(frame.payload)
                emit(copy)
            }
            if steps > 10_000_000 {
                Issue.record("decoder does not make progress")
                return
            }
        }
    }

    /// Random and damaged frames through `FrameDecoder.next`, in random chunks: no crash, only
    /// frames whose input bytes carry valid checksums come out, the buffer stays bounded, and after
    /// a header plus a maximum payload of zeros intact frames decode again. The decoded frames and
    /// field-level mutations of them also go through an agent-side `Multiplexer`.
    @Test func decoderAndMultiplexerSurviveMutatedFrames() async {
        let seed = Self.seed
        let began = ContinuousClock.now
        defer { print("FuzzTests: took \(ContinuousClock.now - began)") }
        print("FuzzTests seed: \(seed) (0x\(String(seed, radix: 16))); set LQX_FUZZ_SEED to reproduce")
        var rng = SplitMix64(seed: seed)
        var stats = FuzzStats()
        var intact: Set<FrameID> = []  // intact frames not decoded yet
        var buffer = ByteBuffer()
        var recovery = FrameDecoder.Recovery()
        var staging = ByteBuffer()
        var emitted: [Frame] = []  // handed to the multiplexer in batches

        let pool = ByteBuffer(bytes: rng.bytes(1 << 20))
        let fuzzer = MultiplexerFuzzer(limits: Self.muxLimits, pool: pool)

        for index in 0..<Self.frameCount {
            let frame = Self.randomFrame(&rng, pool: pool)
            stats.generated += 1
            let bytes = frame.wireBytes
            if let (name, damaged) = Self.mutate(bytes, &rng) {
                stats.mutations[name, default: 0] += 1
                stats.bytes += damaged.count
                staging.writeBytes(damaged)
            } else {
                stats.unmutated += 1
                intact.insert(FrameID(frame))
                stats.bytes += bytes.count
                staging.writeBytes(bytes)
            }
            // Hand the stream over in chunks of random size (often splitting frames).
            while staging.readableBytes > 0, index == Self.frameCount - 1 || Bool.random(using: &rng) {
                let size = min(staging.readableBytes, Int.random(in: 1...8192, using: &rng))
                var chunk = staging.readSlice(length: size)!
                let start = ContinuousClock.now
                Self.feed(&chunk, into: &buffer, intact: &intact, stats: &stats, recovery: &recovery) {
                    emitted.append($0)
                }
                stats.decodeTime += ContinuousClock.now - start
            }
            staging.discardReadBytes()
            // Besides the decoded frames, field-level mutations of every other generated one.
            if index % 2 == 0 { emitted.append(fuzzer.mutatedFields(of: frame, &rng)) }
            if emitted.count >= 256 {
                let start = ContinuousClock.now
                await fuzzer.receive(emitted, &rng)
                stats.muxTime += ContinuousClock.now - start
                emitted.removeAll(keepingCapacity: true)
            }
        }
        await fuzzer.receive(emitted, &rng)

        // Resynchronisation: after a header plus a maximum payload of zeros, intact frames decode.
        let tail = (0..<20).map { _ in Self.randomFrame(&rng, pool: pool) }
        var final = ByteBuffer(repeating: 0, count: FrameFormat.headerSize + Self.maximumPayload)
        for frame in tail {
            var bytes = frame.encoded()
            final.writeBuffer(&bytes)
        }
        var tailFrames: [Frame] = []
        Self.feed(&final, into: &buffer, intact: &intact, stats: &stats, recovery: &recovery) {
            tailFrames.append($0)
        }
        #expect(tailFrames.suffix(tail.count) == tail[...])
        #expect(buffer.readableBytes == 0)
        // Intact frames can be lost when a damaged header with a valid checksum announces a
        // length that covers them (the decoder skips the whole announced frame); the count is
        // reported, not asserted.
        #expect(stats.intactDecoded + intact.count == stats.unmutated)
        #expect(stats.unmutated > Self.frameCount / 3)
        #expect(stats.frames >= stats.intactDecoded)
        #expect(fuzzer.maxStreamCount <= Self.muxLimits.maxStreams)

        stats.muxFrames = fuzzer.received
        stats.opened = fuzzer.opened
        stats.sessions = fuzzer.sessions
        stats.consumed = fuzzer.consumed
        print("FuzzTests: \(stats)")
    }
}

/// Feeds frames to an agent-side multiplexer the way the agent's connection loop does.
private final class MultiplexerFuzzer {
    let limits: SessionLimits
    let pool: ByteBuffer
    var mux: Multiplexer
    var sessions = 1
    var received = 0
    var opened = 0
    var consumed = 0
    var maxStreamCount = 0
    /// Streams registered in the current session, and the highest id it has seen.
    var registered: [UInt32] = []
    var highest: UInt32 = 0

    init(limits: SessionLimits, pool: ByteBuffer) {
        self.limits = limits
        self.pool = pool
        self.mux = Multiplexer(session: 1, local: limits, remote: limits)
    }

    /// A copy of `frame` with random fields changed (the multiplexer only sees frames that passed
    /// the decoder, but their contents are arbitrary).
    func mutatedFields(of frame: Frame, _ rng: inout SplitMix64) -> Frame {
        var frame = frame
        switch Int.random(in: 0..<6, using: &rng) {
        case 0:
            frame.rawType = FrameType.allCases.randomElement(using: &rng)!.rawValue
        case 1:
            frame.stream = UInt32.random(in: 0...(highest + 2), using: &rng)
        case 2:
            let length = Int.random(in: 0...(limits.initialWindow + 10), using: &rng)
            frame.payload = FuzzTests.randomSlice(of: pool, length: length, &rng)
        case 3:
            frame.rawType = FrameType.window.rawValue
            frame.payload = ByteBuffer(bytes: bigEndianBytes(UInt32(truncatingIfNeeded: rng.next())))
        case 4:
            frame.rawType = FrameType.open.rawValue
            frame.stream = highest &+ UInt32.random(in: 0...2, using: &rng)
        default:
            frame.flags = FrameFlags(rawValue: frame.flags.rawValue ^ FrameFlags.endStream.rawValue)
        }
        return frame
    }

    /// Most frames are pointed at live streams (and stripped of what would end the session at
    /// once) so that sessions live long enough to reach deeper states.
    func retargeted(_ frame: Frame, _ rng: inout SplitMix64) -> Frame {
        guard Int.random(in: 0..<10, using: &rng) < 7, let type = frame.type else { return frame }
        var frame = frame
        switch type {
        case .hello, .welcome, .goAway:
            frame.rawType = FrameType.message.rawValue
            frame.stream = registered.randomElement(using: &rng) ?? highest
        case .open:
            frame.stream = highest + 1
        case .window:
            frame.stream = registered.randomElement(using: &rng) ?? highest
            frame.payload = ByteBuffer(bytes: bigEndianBytes(UInt32.random(in: 1...(1 << 20), using: &rng)))
        case .ping:
            frame.payload = frame.payload.getSlice(
                at: frame.payload.readerIndex, length: min(64, frame.payload.readableBytes))!
        default:
            frame.stream = registered.randomElement(using: &rng) ?? highest
        }
        return frame
    }

    func receive(_ frames: [Frame], _ rng: inout SplitMix64) async {
        for original in frames {
            let frame = retargeted(original, &rng)
            received += 1
            switch mux.receive(frame) {
            case .none:
                break
            case .open(let stream, _):
                do throws(AgentError) {
                    try mux.register(stream: stream)
                    registered.append(stream)
                    highest = max(highest, stream)
                    opened += 1
                } catch  where error.code == .tooManyStreams {
                    highest = max(highest, stream)
                    mux.enqueueControl(
                        Frame(type: .reset, session: mux.session, stream: stream, payload: error.wire.buffer()))
                } catch {
                    mux.close(error, goAway: true)
                }
            case .fail(let error):
                mux.close(error, goAway: true)
            case .goAway(let error):
                mux.close(error)
            }
            maxStreamCount = max(maxStreamCount, mux.streamCount)
            if mux.streamCount > limits.maxStreams {
                Issue.record("\(mux.streamCount) streams exceed the limit of \(limits.maxStreams)")
            }
            if !registered.isEmpty {
                switch Int.random(in: 0..<100, using: &rng) {
                case 0..<10:
                    // A handler reads an event if one is there (a cancelled read never waits).
                    let stream = registered.randomElement(using: &rng)!
                    let reader = Task { [mux] in try await mux.next(stream: stream) }
                    reader.cancel()
                    if case .success(.some) = await reader.result { consumed += 1 }
                case 10, 11:
                    // A handler finishes or aborts its stream.
                    let stream = registered.remove(at: Int.random(in: 0..<registered.count, using: &rng))
                    if Bool.random(using: &rng) {
                        mux.finish(stream: stream)
                    } else {
                        mux.reset(stream: stream, error: AgentError(.cancelled, "fuzz"))
                    }
                default:
                    break
                }
            }
            if mux.closedError != nil {
                _ = await drainOutbound(mux)
                sessions += 1
                mux = Multiplexer(session: UInt64(sessions), local: limits, remote: limits)
                registered = []
                highest = 0
            }
        }
        _ = await drainOutbound(mux)
    }
}
