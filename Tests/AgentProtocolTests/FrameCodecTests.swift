import Foundation
import LQXTestSupport
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

@testable import AgentProtocol

@Suite("Frame codec")
struct FrameCodecTests {
    // MARK: Fixtures

    /// A frame whose bytes (header fields and payload) contain no 0xF0, so a decoder that scans it
    /// as garbage skips it whole.
    static let damaged = Frame(
        type: .message, flags: .endStream, session: 0x1122_3344_5566_7788, stream: 9,
        payload: ByteBuffer(bytes: patternBytes(100)))
    static let next = Frame(
        type: .data, flags: .channel(1), session: 0x1122_3344_5566_7788, stream: 9,
        payload: ByteBuffer(bytes: patternBytes(10, seed: 3)))
    static let after = Frame(
        type: .window, session: 0x1122_3344_5566_7788, stream: 9, payload: ByteBuffer(bytes: [0, 1, 0, 0]))

    // MARK: Header layout

    @Test func headerLayout() {
        var flags = FrameFlags([.endStream, .endOfChannel])
        flags.channel = 1
        let payload = Array("hello".utf8)
        let frame = Frame(
            type: .data, flags: flags, session: 0x0102_0304_0506_0708, stream: 0xA1B2_C3D4,
            payload: ByteBuffer(bytes: payload))
        let bytes = frame.wireBytes

        #expect(bytes.count == 37)
        #expect(Array(bytes[0..<4]) == [0xF0, 0x4C, 0x51, 0x58])
        #expect(bytes[4] == 1)
        #expect(bytes[5] == 0x12)
        #expect(Array(bytes[6..<8]) == [0x01, 0x03])
        #expect(Array(bytes[8..<16]) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(Array(bytes[16..<20]) == [0xA1, 0xB2, 0xC3, 0xD4])
        #expect(Array(bytes[20..<24]) == [0, 0, 0, 5])
        #expect(Array(bytes[24..<28]) == bigEndianBytes(referenceCRC32C(payload)))
        #expect(Array(bytes[24..<28]) == [0x9A, 0x71, 0xBB, 0x4C])  // CRC-32C("hello")
        #expect(Array(bytes[28..<32]) == bigEndianBytes(referenceCRC32C(bytes[0..<28])))
        #expect(Array(bytes[32...]) == payload)
        // The independent header builder of the tests produces the same bytes.
        #expect(
            Array(bytes[0..<32])
                == rawHeader(
                    type: 0x12, flags: 0x0103, session: 0x0102_0304_0506_0708, stream: 0xA1B2_C3D4, length: 5,
                    payloadCRC: referenceCRC32C(payload)))
    }

    @Test func emptyPayloadHeader() {
        let bytes = Frame(type: .ping, session: 1, payload: ByteBuffer()).wireBytes
        #expect(bytes.count == 32)
        #expect(Array(bytes[20..<28]) == [0, 0, 0, 0, 0, 0, 0, 0])  // length 0, CRC of nothing 0
        #expect(bytes == rawHeader(type: 0x03, session: 1, length: 0, payloadCRC: 0))
    }

    @Test func writeHeaderAppendsAfterExistingBytes() {
        let frame = Self.next
        var buffer = ByteBuffer(bytes: [9, 9, 9])
        buffer.moveReaderIndex(forwardBy: 1)
        frame.writeHeader(into: &buffer)
        #expect(Array(buffer.readableBytesView) == [9, 9] + frame.wireBytes[0..<32])
    }

    @Test func flagChannelBits() {
        #expect(FrameFlags.channel(1).rawValue == 0x0100)
        #expect(FrameFlags.channel(15).rawValue == 0x0F00)
        #expect(FrameFlags.channel(16).rawValue == 0)  // masked to four bits
        var flags: FrameFlags = [.endStream, .endOfChannel]
        flags.channel = 2
        #expect(flags.rawValue == 0x0203)
        #expect(flags.channel == 2)
        flags.channel = 0
        #expect(flags == [.endStream, .endOfChannel])
        #expect(FrameFlags(rawValue: 0xF1FF).channel == 1)
    }

    // MARK: NIO verifier

    @Test func byteToMessageDecoderVerifier() throws {
        let frames = [
            Frame(type: .ping, session: 1, payload: ByteBuffer()),
            Frame(type: .message, flags: .endStream, session: 2, stream: 1, payload: ByteBuffer(string: "reply")),
            Frame(
                type: .data, flags: .channel(1), session: .max, stream: .max,
                payload: ByteBuffer(bytes: patternBytes(1000, seed: 1))),
        ]
        let pairs = frames.map { ($0.encoded(), [FrameEvent.frame($0)]) }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { FrameDecoder() }
    }

    /// A 100 KB frame through the channel handler, written in pieces of many sizes (the NIO verifier
    /// above drip-feeds every byte ten times, which takes tens of seconds for 100 KB in debug builds).
    @Test func largeFrameThroughChannelInPieces() throws {
        let frame = Frame(
            type: .data, session: 3, stream: 7, payload: ByteBuffer(bytes: patternBytes(100_000, seed: 2)))
        let small = Frame(type: .message, session: 3, stream: 7, payload: ByteBuffer(string: "tail"))
        let bytes = frame.wireBytes + small.wireBytes
        for pieces in [[3, 1, 31, 2, 997], [4096], [65_536, 7], [bytes.count]] {
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
            var offset = 0
            var index = 0
            var events: [FrameEvent] = []
            while offset < bytes.count {
                // Byte-sized pieces through the header, then the given sizes in turn.
                let size = offset < 40 ? 1 : min(pieces[index % pieces.count], bytes.count - offset)
                try channel.writeInbound(ByteBuffer(bytes: bytes[offset..<(offset + size)]))
                offset += size
                index += 1
                while let event = try channel.readInbound(as: FrameEvent.self) { events.append(event) }
                if offset < frame.wireBytes.count { #expect(events.isEmpty, "pieces \(pieces)") }
            }
            #expect(events == [.frame(frame), .frame(small)], "pieces \(pieces)")
            #expect(try channel.finish().isClean)
        }
    }

    // MARK: Round trips

    private func roundTrip(_ frame: Frame, sourceLocation: SourceLocation = #_sourceLocation) -> Frame? {
        var wire = frame.encoded()
        let step = FrameDecoder.next(from: &wire, maximumPayload: FrameFormat.maximumPayload)
        #expect(step == .frame(frame), sourceLocation: sourceLocation)
        #expect(wire.readableBytes == 0, sourceLocation: sourceLocation)
        guard case .frame(let decoded) = step else { return nil }
        return decoded
    }

    @Test(arguments: FrameType.allCases)
    func frameTypeRoundTrip(type: FrameType) {
        let frame = Frame(
            type: type, flags: FrameFlags(rawValue: 0x0A5A), session: 0xFEDC_BA98_7654_3210,
            stream: UInt32(type.rawValue) << 20 | 5, payload: ByteBuffer(bytes: patternBytes(Int(type.rawValue) * 3)))
        let decoded = roundTrip(frame)
        #expect(decoded?.type == type)
        #expect(decoded?.rawType == type.rawValue)
        #expect(decoded?.flags.rawValue == 0x0A5A)
        #expect(decoded?.session == 0xFEDC_BA98_7654_3210)
    }

    @Test func unknownFrameTypeRoundTrip() {
        for raw: UInt8 in [0x00, 0x06, 0x15, 0x7F, 0xFF] {
            let frame = Frame(rawType: raw, flags: [], session: 1, stream: 2, payload: ByteBuffer(bytes: [1, 2, 3]))
            let decoded = roundTrip(frame)
            #expect(decoded?.rawType == raw)
            #expect(decoded?.type == nil)
        }
    }

    private func messageRoundTrip<M: Equatable>(
        _ message: M, type: FrameType, encode: (M) -> ByteBuffer, decode: (ByteBuffer) throws -> M,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let payload = encode(message)
        let frame = Frame(type: type, flags: .endStream, session: 0xABCD, stream: 3, payload: payload)
        guard let decoded = roundTrip(frame, sourceLocation: sourceLocation) else { return }
        #expect(try decode(decoded.payload) == message, sourceLocation: sourceLocation)
    }

    static let requests: [Request] = [
        .with { $0.info = .init() },
        .with { $0.telemetry = .with { $0.intervalMs = 250 } },
        .with {
            $0.exec = .with {
                $0.argv = ["/bin/sh", "-c", "echo hi"]
                $0.env = ["A": "1", "B": "two"]
                $0.cwd = "/tmp"
                $0.user = "root"
                $0.pty = true
                $0.window = .with {
                    $0.rows = 40
                    $0.cols = 120
                }
                $0.timeoutMs = 5000
                $0.stdin = true
            }
        },
        .with {
            $0.upload = .with {
                $0.path = "/etc/motd"
                $0.mode = 0o600
                $0.uid = 0  // optional: present with the default value
                $0.gid = 1000
                $0.size = 1 << 33
                $0.createParents = true
                $0.noOverwrite = true
            }
        },
        .with { $0.download = .with { $0.path = "/var/log/syslog" } },
        .with {
            $0.stat = .with {
                $0.path = "/"
                $0.noFollow = true
            }
        },
        .with { $0.list = .with { $0.path = "/home" } },
        .with {
            $0.shutdown = .with {
                $0.action = .reboot
                $0.delaySeconds = 3
            }
        },
    ]

    static func name(of kind: Request.OneOf_Kind?) -> String {
        switch kind {
        case .info: "info"
        case .telemetry: "telemetry"
        case .exec: "exec"
        case .upload: "upload"
        case .download: "download"
        case .stat: "stat"
        case .list: "list"
        case .shutdown: "shutdown"
        case nil: "none"
        }
    }

    static let fileStat = Limiquantix_Agent_V1_FileStat.with {
        $0.name = "link"
        $0.type = .symlink
        $0.size = 12
        $0.mode = 0o4755
        $0.uid = 1000
        $0.gid = 100
        $0.mtimeNs = -1_000_000_123
        $0.symlinkTarget = "../target"
    }

    static let replies: [Reply] = [
        .with {
            $0.info = .with {
                $0.agentVersion = "0.1.0"
                $0.protocolVersion = 1
                $0.os = .with {
                    $0.id = "debian"
                    $0.name = "Debian GNU/Linux"
                    $0.version = "12 (bookworm)"
                    $0.versionID = "12"
                    $0.prettyName = "Debian GNU/Linux 12 (bookworm)"
                }
                $0.kernelRelease = "6.1.0-18-amd64"
                $0.kernelVersion = "#1 SMP PREEMPT_DYNAMIC"
                $0.machine = "x86_64"
                $0.hostname = "guest"
                $0.bootID = "0b6c3c3e-3d0f-4bde-9f41-1c1f7f1f1f1f"
                $0.uptimeSeconds = 1234.5
                $0.capabilities = ["exec", "files"]
                $0.agentInstance = 0xDEAD_BEEF_0000_0001
            }
        },
        .with {
            $0.telemetry = GuestFixtures.telemetry
        },
        .with { $0.execStarted = .with { $0.pid = 4242 } },
        .with {
            $0.execExit = .with {
                $0.exitCode = 0  // oneof member present with the default value
                $0.durationUs = 1500
            }
        },
        .with {
            $0.execExit = .with {
                $0.signal = 9
                $0.timedOut = true
                $0.coreDumped = true
            }
        },
        .with {
            $0.uploadResult = .with {
                $0.size = 3
                $0.sha256 = Data((0..<32).map { UInt8($0) })
            }
        },
        .with {
            $0.downloadStart = .with {
                $0.size = 1 << 40
                $0.mode = 0o644
            }
        },
        .with {
            $0.downloadResult = .with {
                $0.size = 7
                $0.sha256 = Data(repeating: 0xAB, count: 32)
            }
        },
        .with { $0.stat = fileStat },
        .with {
            $0.listing = .with {
                $0.entries = [
                    fileStat,
                    .with {
                        $0.name = "dir"
                        $0.type = .directory
                    },
                ]
            }
        },
        .with {
            $0.shutdown = .with {
                $0.action = .halt
                $0.delaySeconds = 5
                $0.dryRun = true
                $0.method = "dry-run"
            }
        },
        .with { $0.error = AgentError(.notFound, "no such file: /nope").wire },
    ]

    static func name(of kind: Reply.OneOf_Kind?) -> String {
        switch kind {
        case .info: "info"
        case .telemetry: "telemetry"
        case .execStarted: "execStarted"
        case .execExit: "execExit"
        case .uploadResult: "uploadResult"
        case .downloadStart: "downloadStart"
        case .downloadResult: "downloadResult"
        case .stat: "stat"
        case .listing: "listing"
        case .shutdown: "shutdown"
        case .error: "error"
        case nil: "none"
        }
    }

    static let controls: [Control] = [
        .with { $0.signal = .with { $0.signal = 15 } },
        .with {
            $0.resize = .with {
                $0.rows = 50
                $0.cols = 200
            }
        },
        .with {
            $0.commit = .with {
                $0.sha256 = Data(repeating: 0x5A, count: 32)
                $0.size = 123_456
            }
        },
    ]

    static func name(of kind: Control.OneOf_Kind?) -> String {
        switch kind {
        case .signal: "signal"
        case .resize: "resize"
        case .commit: "commit"
        case nil: "none"
        }
    }

    @Test func samplesCoverEveryOneofCase() {
        #expect(Set(Self.requests.map { Self.name(of: $0.kind) }).count == 8)
        #expect(Set(Self.replies.map { Self.name(of: $0.kind) }).count == 11)
        #expect(Set(Self.controls.map { Self.name(of: $0.kind) }).count == 3)
        #expect(!Self.requests.contains { $0.kind == nil })
        #expect(!Self.replies.contains { $0.kind == nil })
        #expect(!Self.controls.contains { $0.kind == nil })
    }

    @Test(arguments: requests)
    func requestRoundTrip(request: Request) throws {
        try messageRoundTrip(request, type: .open, encode: { $0.buffer() }, decode: { try Request(payload: $0) })
    }

    @Test(arguments: replies)
    func replyRoundTrip(reply: Reply) throws {
        try messageRoundTrip(reply, type: .message, encode: { $0.buffer() }, decode: { try Reply(payload: $0) })
    }

    @Test(arguments: controls)
    func controlRoundTrip(control: Control) throws {
        try messageRoundTrip(control, type: .message, encode: { $0.buffer() }, decode: { try Control(payload: $0) })
    }

    @Test func sessionMessagesRoundTrip() throws {
        let hello = Hello.with {
            $0.minVersion = 1
            $0.maxVersion = 3
            $0.client = "lqx-broker/0.1.0"
            $0.capabilities = ["exec", "files"]
            $0.initialWindow = 1 << 20
            $0.maxFramePayload = 256 << 10
            $0.keepaliveIntervalMs = 1000
        }
        try messageRoundTrip(hello, type: .hello, encode: { $0.buffer() }, decode: { try Hello(payload: $0) })
        let welcome = Welcome.with {
            $0.version = 1
            $0.agentVersion = "0.1.0"
            $0.capabilities = ["exec"]
            $0.initialWindow = 2 << 20
            $0.maxFramePayload = 128 << 10
            $0.keepaliveIntervalMs = 500
            $0.maxStreams = 64
            $0.agentInstance = .max
        }
        try messageRoundTrip(welcome, type: .welcome, encode: { $0.buffer() }, decode: { try Welcome(payload: $0) })
        let error = AgentError(.tooManyStreams, "at most 64 streams").wire
        try messageRoundTrip(error, type: .reset, encode: { $0.buffer() }, decode: { try WireError(payload: $0) })
        try messageRoundTrip(error, type: .goAway, encode: { $0.buffer() }, decode: { try WireError(payload: $0) })
    }

    @Test func malformedPayloadIsProtocolViolation() {
        // Field 1 (length-delimited) announcing 16 bytes of which only 1 follows.
        let payload = ByteBuffer(bytes: [0x0A, 0x10, 0x00])
        #expect(throws: AgentError.self) { try Request(payload: payload) }
        do {
            _ = try Request(payload: payload)
        } catch {
            #expect(error.code == .protocolViolation)
            #expect(error.message.hasPrefix("malformed limiquantix.agent.v1.Request"))
        }
    }

    @Test func agentErrorWireForm() {
        let error = AgentError(.checksumMismatch, "sha256 differs")
        #expect(error.wire.code == "checksum_mismatch")
        #expect(error.wire.message == "sha256 differs")
        #expect(AgentError(wire: error.wire) == error)
        #expect(AgentError(wire: WireError()).code == .internal)
        #expect(error.description == "sha256 differs [checksum_mismatch]")
    }

    // MARK: Resynchronisation

    @Test func garbageBeforeFrame() {
        let garbage = patternBytes(100, seed: 5)
        let (events, leftover) = decodeEvents(garbage + Self.next.wireBytes)
        #expect(events == [.discarded(bytes: 100, reason: .garbage), .frame(Self.next)])
        #expect(leftover == 0)
    }

    @Test func garbageWithMagicFragments() {
        let garbage: [UInt8] = [
            0xF0, 0xF0, 0x4C, 0xF0, 0x4C, 0x51, 0xF0, 0x4C, 0x51, 0x00, 0x01,  // partial magics
            0xF0, 0x4C, 0x51, 0x58, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,  // magic, bad header
            17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
            0xF0, 0x4C, 0x51,  // a partial magic right before the real one
        ]
        let (events, leftover) = decodeEvents(garbage + Self.next.wireBytes + Self.after.wireBytes)
        #expect(events == [.discarded(bytes: garbage.count, reason: .garbage), .frame(Self.next), .frame(Self.after)])
        #expect(leftover == 0)
    }

    @Test func partialMagicWaitsForMoreData() {
        #expect(decodeEvents([0xF0]).events == [])
        #expect(decodeEvents([0xF0]).leftover == 1)
        #expect(decodeEvents([0xF0, 0x4C, 0x51]).leftover == 3)
        #expect(decodeEvents([0xF0, 0x4C, 0x51, 0x58, 1, 2]).leftover == 6)
        #expect(decodeEvents(Array(Self.next.wireBytes.prefix(31))).leftover == 31)
        #expect(decodeEvents(Array(Self.next.wireBytes.dropLast())).leftover == 41)
        #expect(decodeEvents(Array(Self.next.wireBytes.dropLast())).events == [])
        // A mismatch anywhere in the available part of the magic is garbage at once.
        #expect(decodeEvents([0xF0, 0x4C, 0x00]) == ([.discarded(bytes: 3, reason: .garbage)], 0))
        #expect(decodeEvents([1, 2, 3]) == ([.discarded(bytes: 3, reason: .garbage)], 0))
        #expect(decodeEvents([]) == ([], 0))
    }

    /// Every single-bit error in a header makes the decoder skip that frame as garbage (exactly its
    /// bytes) and decode the next one.
    @Test func headerBitFlipIsSkipped() {
        let damaged = Self.damaged.wireBytes
        let following = Self.next.wireBytes
        for bit in 0..<(FrameFormat.headerSize * 8) {
            var corrupt = damaged
            corrupt[bit / 8] ^= 1 << UInt8(bit % 8)
            let (events, leftover) = decodeEvents(corrupt + following)
            #expect(
                events == [.discarded(bytes: damaged.count, reason: .garbage), .frame(Self.next)], "bit \(bit)")
            #expect(leftover == 0, "bit \(bit)")
        }
    }

    /// A payload error is reported as one `payloadChecksum` event for the whole announced frame
    /// (docs/protocol.md §4) and the next frame is decoded.
    @Test func payloadBitFlipIsReported() {
        let damaged = Self.damaged.wireBytes
        for bit in [0, 7, 8 * 50 + 3, 8 * 99 + 7] {
            var corrupt = damaged
            corrupt[32 + bit / 8] ^= 1 << UInt8(bit % 8)
            let (events, leftover) = decodeEvents(corrupt + Self.next.wireBytes)
            #expect(
                events == [.discarded(bytes: damaged.count, reason: .payloadChecksum), .frame(Self.next)], "bit \(bit)")
            #expect(leftover == 0)
        }
    }

    /// A truncated frame makes the decoder wait for its announced length; after the payload check
    /// fails, the frames after the announced end are decoded.
    @Test func truncatedFrameThenValidFrames() {
        let truncated = Array(Self.damaged.wireBytes.prefix(32 + 40))  // announces 100 payload bytes
        var buffer = ByteBuffer(bytes: truncated + [UInt8](repeating: 0, count: 59))
        #expect(decodeEvents(&buffer) == [])
        #expect(buffer.readableBytes == 131)

        buffer.writeBytes([0] + Self.next.wireBytes + Self.after.wireBytes)
        #expect(
            decodeEvents(&buffer) == [
                .discarded(bytes: 132, reason: .payloadChecksum), .frame(Self.next), .frame(Self.after),
            ])
        #expect(buffer.readableBytes == 0)
    }

    /// Frames inside the announced range of a truncated frame are recovered: after the payload
    /// checksum fails, decoding resumes at the next valid header inside that range.
    @Test func framesInsideTruncatedFrameAreRecovered() {
        let truncated = Array(Self.damaged.wireBytes.prefix(32 + 40))  // announces 100 payload bytes
        let next = Self.next.wireBytes  // 42 bytes, inside the announced range
        let after = Self.after.wireBytes  // 36 bytes, the first 18 inside the announced range
        var buffer = ByteBuffer(bytes: truncated + next)
        var recovery = FrameDecoder.Recovery()
        func drain() -> [FrameDecoder.Step] {
            var steps: [FrameDecoder.Step] = []
            while true {
                let step = FrameDecoder.next(
                    from: &buffer, maximumPayload: FrameFormat.maximumPayload, recovery: &recovery)
                if step == .needMoreData { return steps }
                steps.append(step)
            }
        }
        #expect(drain() == [])
        buffer.writeBytes(after)
        #expect(drain() == [.skipped(72, .payloadChecksum), .frame(Self.next), .frame(Self.after)])
        #expect(buffer.readableBytes == 0)
    }

    /// A peer that plants a valid header every few bytes cannot make the decoder checksum the
    /// same bytes over and over: after one look inside a damaged range, the next damaged frame is
    /// skipped whole.
    @Test func recoveryWorkIsBounded() {
        var bytes: [UInt8] = []
        for i in 0..<64 {
            // Headers announcing 4096 bytes whose payload checksum never matches, 40 bytes apart.
            bytes +=
                rawHeader(type: 0x12, stream: UInt32(i), length: 4096, payloadCRC: 0xDEAD_BEEF)
                + Array(repeating: 0, count: 8)
        }
        bytes += Array(repeating: 0, count: 8192) + Self.next.wireBytes
        var buffer = ByteBuffer(bytes: bytes)
        var recovery = FrameDecoder.Recovery()
        var checksumFailures = 0
        var frames: [Frame] = []
        while true {
            let step = FrameDecoder.next(from: &buffer, maximumPayload: FrameFormat.maximumPayload, recovery: &recovery)
            if step == .needMoreData { break }
            if case .skipped(_, .payloadChecksum) = step { checksumFailures += 1 }
            if case .frame(let frame) = step { frames.append(frame) }
        }
        // One rescan lands on the second header, whose failure skips its whole announced range.
        #expect(checksumFailures == 2)
        #expect(frames == [Self.next])
    }

    /// A damaged header every 64 bytes, each announcing a large payload, with a valid frame between
    /// each pair: a decoded frame must not re-enable the rescan inside the damaged range (each
    /// rescan checksums the whole announced length again, so one per 64 bytes received was
    /// length / 64 times the input in checksum work).
    @Test func validFramesInsideADamagedRangeDoNotReenableTheRescan() {
        let length = 16 << 10, pairs = 1024
        let valid = Frame(rawType: 0x12, flags: [], session: 7, stream: 2, payload: ByteBuffer())
        var bytes: [UInt8] = []
        for i in 0..<pairs {
            bytes += rawHeader(type: 0x12, stream: UInt32(i), length: UInt32(length), payloadCRC: 0xDEAD_BEEF)
            bytes += valid.wireBytes
        }
        bytes += Array(repeating: 0, count: length)
        var buffer = ByteBuffer(bytes: bytes)
        var recovery = FrameDecoder.Recovery()
        var checksummed = 0
        while true {
            let step = FrameDecoder.next(from: &buffer, maximumPayload: FrameFormat.maximumPayload, recovery: &recovery)
            if step == .needMoreData { break }
            if case .skipped(_, .payloadChecksum) = step { checksummed += length }
            if case .frame(let frame) = step { checksummed += frame.payload.readableBytes }
        }
        // Every received byte is checksummed at most about twice (not length / 64 times).
        #expect(checksummed <= 2 * bytes.count + length, "\(checksummed) bytes checksummed for \(bytes.count) received")
    }

    @Test func oversizedHeaderIsSkipped() {
        let payload = patternBytes(1025)
        let header = rawHeader(type: 0x12, stream: 1, length: 1025, payloadCRC: referenceCRC32C(payload))
        // Header alone, then a valid frame.
        let skipped = FrameEvent.oversized(OversizedFrame(session: 7, stream: 1, rawType: 0x12, length: 1025))
        #expect(decodeEvents(header + Self.next.wireBytes, maximumPayload: 1024) == ([skipped, .frame(Self.next)], 0))
        // With its payload: the payload is scanned as garbage.
        #expect(
            decodeEvents(header + payload + Self.next.wireBytes, maximumPayload: 1024)
                == (
                    [
                        skipped, .discarded(bytes: 1025, reason: .garbage),
                        .frame(Self.next),
                    ], 0
                ))
        // The same frame is fine under a larger limit, and a payload of exactly the limit is accepted.
        let frame = Frame(rawType: 0x12, flags: [], session: 7, stream: 1, payload: ByteBuffer(bytes: payload))
        #expect(decodeEvents(header + payload, maximumPayload: 1025) == ([.frame(frame)], 0))
        // Lengths beyond the protocol maximum are oversized under the default limit.
        let huge = rawHeader(type: 0x12, length: .max, payloadCRC: 0)
        #expect(
            decodeEvents(huge + Self.next.wireBytes)
                == (
                    [
                        .oversized(OversizedFrame(session: 7, stream: 0, rawType: 0x12, length: .max)),
                        .frame(Self.next),
                    ], 0
                ))
        let justOver = rawHeader(type: 0x12, length: UInt32(FrameFormat.maximumPayload + 1), payloadCRC: 0)
        let over = OversizedFrame(session: 7, stream: 0, rawType: 0x12, length: UInt32(FrameFormat.maximumPayload + 1))
        #expect(decodeEvents(justOver + Self.next.wireBytes) == ([.oversized(over), .frame(Self.next)], 0))
    }

    @Test func unsupportedHeaderVersionIsSkipped() {
        for version: UInt8 in [0, 2, 0xFF] {
            let header = rawHeader(version: version, type: 0x11, stream: 1, length: 0, payloadCRC: 0)
            #expect(
                decodeEvents(header + Self.next.wireBytes)
                    == ([.discarded(bytes: 32, reason: .unsupportedVersion), .frame(Self.next)], 0),
                "version \(version)")
        }
        // The header checksum is checked first: a bad checksum is garbage whatever the version.
        let bad = rawHeader(version: 2, type: 0x11, length: 0, payloadCRC: 0, headerCRC: 0x1234_5678)
        #expect(
            decodeEvents(bad + Self.next.wireBytes)
                == ([.discarded(bytes: 32, reason: .garbage), .frame(Self.next)], 0))
    }

    @Test func decoderRespectsExistingReaderIndex() {
        var buffer = ByteBuffer(bytes: [0xF0, 0xF0, 0xF0] + Self.next.wireBytes)
        buffer.moveReaderIndex(forwardBy: 3)
        #expect(FrameDecoder.next(from: &buffer, maximumPayload: 1024) == .frame(Self.next))
        #expect(buffer.readableBytes == 0)
    }

    // MARK: Channel handler

    private func readAll(_ channel: EmbeddedChannel) throws -> [FrameEvent] {
        var events: [FrameEvent] = []
        while let event = try channel.readInbound(as: FrameEvent.self) { events.append(event) }
        return events
    }

    @Test func channelReportsDiscardedBytes() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder(maximumPayload: 1024)))
        try channel.writeInbound(ByteBuffer(bytes: patternBytes(50) + Self.next.wireBytes))
        #expect(try readAll(channel) == [.discarded(bytes: 50, reason: .garbage), .frame(Self.next)])

        // Garbage that arrives in pieces is reported per read.
        try channel.writeInbound(ByteBuffer(bytes: patternBytes(30)))
        try channel.writeInbound(ByteBuffer(bytes: patternBytes(20)))
        #expect(
            try readAll(channel) == [.discarded(bytes: 30, reason: .garbage), .discarded(bytes: 20, reason: .garbage)])

        // Garbage with magic fragments is one event; other reasons are separate events.
        let fragments: [UInt8] = [0x00, 0xF0, 0x4C, 0x51, 0x00, 0xF0, 0x11]
        let oversized = rawHeader(type: 0x12, length: 2000, payloadCRC: 0)
        try channel.writeInbound(ByteBuffer(bytes: fragments + oversized + [1, 2] + Self.after.wireBytes))
        #expect(
            try readAll(channel) == [
                .discarded(bytes: 7, reason: .garbage),
                .oversized(OversizedFrame(session: 7, stream: 0, rawType: 0x12, length: 2000)),
                .discarded(bytes: 2, reason: .garbage), .frame(Self.after),
            ])

        // A frame split across reads.
        let bytes = Self.next.wireBytes
        try channel.writeInbound(ByteBuffer(bytes: bytes[0..<3]))
        try channel.writeInbound(ByteBuffer(bytes: bytes[3..<33]))
        #expect(try readAll(channel) == [])
        try channel.writeInbound(ByteBuffer(bytes: bytes[33...]))
        #expect(try readAll(channel) == [.frame(Self.next)])
        #expect(try channel.finish().isClean)
    }

    @Test func channelDiscardsPartialFrameAtEOF() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        try channel.writeInbound(ByteBuffer(bytes: [0xF0, 0x4C]))
        #expect(try readAll(channel) == [])
        channel.pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(try readAll(channel) == [.discarded(bytes: 2, reason: .garbage)])
        _ = try channel.finish()
    }

    /// At end of input no more bytes will complete a truncated frame, so the frames after it must
    /// still be decoded.
    @Test
    func channelFindsFrameAfterTruncatedFrameAtEOF() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        let truncated = Array(Self.damaged.wireBytes.prefix(40))
        try channel.writeInbound(ByteBuffer(bytes: truncated + Self.next.wireBytes))
        #expect(try readAll(channel) == [])
        channel.pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        let events = try readAll(channel)
        #expect(events.contains(.frame(Self.next)), "\(events)")
        _ = try channel.finish()
    }

    @Test
    func channelFindsEveryFrameAfterTruncatedFrameAtEOF() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        // A frame announcing 1000 payload bytes, cut after 8 of them: the input ends before its
        // announced end, so only end-of-input handling can recover the frames behind it.
        let big = Frame(type: .data, session: 9, stream: 99, payload: ByteBuffer(repeating: 7, count: 1000))
        let truncated = Array(big.encoded().readableBytesView.prefix(40))
        let frames = (1...4).map { i in
            Frame(
                type: .data, flags: .channel(0), session: 9, stream: UInt32(i), payload: ByteBuffer(bytes: [UInt8(i)]))
        }
        let bytes = frames.flatMap { Array($0.encoded().readableBytesView) }
        try channel.writeInbound(ByteBuffer(bytes: truncated + bytes))
        channel.pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        let found = try readAll(channel).compactMap { event -> Frame? in
            if case .frame(let frame) = event { return frame }
            return nil
        }
        #expect(found == frames)
        _ = try channel.finish()
    }

    // MARK: Encoder

    @Test(arguments: [0, 1, 4096, 4097, 100_000])
    func encoderWritesHeaderAndPayload(size: Int) throws {
        let channel = EmbeddedChannel(handler: FrameEncoder())
        let frame = Frame(
            type: .data, flags: .channel(1), session: 5, stream: 3, payload: ByteBuffer(bytes: patternBytes(size)))
        try channel.writeOutbound(frame)
        var written: [UInt8] = []
        var writes = 0
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            written += buffer.readableBytesView
            writes += 1
        }
        #expect(written == frame.wireBytes)
        #expect(writes == (size > 4096 ? 2 : 1))
        #expect(try channel.finish().isClean)
    }
}
