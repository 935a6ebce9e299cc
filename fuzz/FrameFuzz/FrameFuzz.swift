import AgentProtocol
import CLQXSupport
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

// Coverage-guided fuzzing of what a peer's bytes reach first: the frame decoder (resynchronisation,
// checksums, the payload bound), the protobuf bodies both ends parse, and a session's multiplexer.
//
// Built normally, `lqx-fuzz-frames` writes a seed corpus (`--seeds DIR`) and replays inputs
// (`FILE…`, e.g. a crash libFuzzer saved) through the same code. Built for libFuzzer,
//   swift build -c release --product lqx-fuzz-frames --scratch-path .build-fuzz \
//     -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library -Xswiftc -DLQX_LIBFUZZER
// libFuzzer's driver runs `fuzzOne` (scripts/fuzz.sh builds and runs it).

let session: UInt64 = 0x5EED
let maximumPayload = 8 << 10
let limits = SessionLimits(initialWindow: 16 << 10, maxFramePayload: maximumPayload, maxStreams: 8)

/// One input: its first byte picks the read size the stream is cut into; the rest is the byte
/// stream. Traps (precondition) when an invariant breaks, which libFuzzer reports as a crash.
func fuzzOne(_ input: UnsafeRawBufferPointer) {
    guard let first = input.first else { return }
    let chunk = Int(first) * 37 + 1
    let stream = UnsafeRawBufferPointer(rebasing: input.dropFirst())
    let mux = Multiplexer(session: session, local: limits, remote: limits)
    var buffer = ByteBuffer()
    var recovery = FrameDecoder.Recovery()
    var offset = 0
    while offset < stream.count {
        let end = min(offset + chunk, stream.count)
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: stream[offset..<end]))
        offset = end
        decoding: while true {
            switch FrameDecoder.next(from: &buffer, maximumPayload: maximumPayload, recovery: &recovery) {
            case .needMoreData:
                break decoding
            case .skipped(let count, _):
                precondition(count > 0, "a skip must make progress")
            case .oversized(let header):
                precondition(header.length > maximumPayload, "a header within the bound reported as oversized")
            case .frame(let frame):
                precondition(frame.payload.readableBytes <= maximumPayload, "payload over the bound")
                exercise(frame, mux)
            }
        }
        // Never more than one header plus the largest payload waits, plus the last read.
        precondition(buffer.readableBytes <= FrameFormat.headerSize + maximumPayload + chunk, "unbounded buffering")
    }
}

func exercise(_ frame: Frame, _ mux: Multiplexer) {
    _ = try? Hello(payload: frame.payload)
    _ = try? Welcome(payload: frame.payload)
    _ = try? Request(payload: frame.payload)
    _ = try? Reply(payload: frame.payload)
    guard frame.session == session else { return }
    if case .open(let stream, let request) = mux.receive(frame) {
        _ = try? Request(payload: request)
        try? mux.register(stream: stream)
    }
}

#if LQX_LIBFUZZER
    // SwiftPM links an executable's entry point as `<module>_main`: hand it to libFuzzer's driver.
    @_cdecl("lqx_fuzz_frames_main")
    func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
        var argc = argc
        var argv = argv
        return LLVMFuzzerRunDriver(&argc, &argv) { data, size in
            fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        }
    }
#else
    @main
    struct FrameFuzzReplay {
        static func main() throws {
            let arguments = Array(CommandLine.arguments.dropFirst())
            if arguments.first == "--seeds", arguments.count == 2 {
                try writeSeeds(to: arguments[1])
                return
            }
            guard !arguments.isEmpty, !arguments.contains("--help") else {
                print("usage: lqx-fuzz-frames --seeds DIR | FILE…  (replays inputs through the fuzzed code)")
                return
            }
            for path in arguments {
                let bytes = try readFile(path)
                bytes.withUnsafeBytes { fuzzOne($0) }
                print("\(path): \(bytes.count) bytes, no invariant broken")
            }
        }

        /// Valid traffic of one session: the seeds libFuzzer mutates from.
        static func writeSeeds(to directory: String) throws {
            let exec = Request.with { $0.exec = .with { $0.argv = ["/bin/true"] } }.buffer()
            let hello = Hello.with {
                $0.minVersion = 1
                $0.maxVersion = 1
                $0.initialWindow = UInt32(limits.initialWindow)
                $0.maxFramePayload = UInt32(maximumPayload)
            }.buffer()
            let frames: [[Frame]] = [
                [Frame(type: .hello, session: session, payload: hello)],
                [Frame(type: .open, session: session, stream: 1, payload: exec)],
                [
                    Frame(type: .open, session: session, stream: 1, payload: exec),
                    Frame(type: .data, session: session, stream: 1, payload: ByteBuffer(repeating: 0x41, count: 300)),
                    Frame(type: .data, flags: .endStream, session: session, stream: 1, payload: ByteBuffer()),
                ],
                [Frame(type: .ping, session: session, payload: ByteBuffer(repeating: 7, count: 8))],
            ]
            for (index, group) in frames.enumerated() {
                var bytes: [UInt8] = [UInt8(index * 50)]
                for frame in group { bytes += Array(frame.encoded().readableBytesView) }
                try writeFile(directory + "/seed-\(index)", bytes)
            }
        }

        static func readFile(_ path: String) throws -> [UInt8] {
            guard let file = fopen(path, "rb") else { throw AgentError(.notFound, "cannot open \(path)") }
            defer { fclose(file) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = fread(&chunk, 1, chunk.count, file)
                if n == 0 { break }
                bytes += chunk[0..<n]
            }
            return bytes
        }

        static func writeFile(_ path: String, _ bytes: [UInt8]) throws {
            guard let file = fopen(path, "wb") else { throw AgentError(.io, "cannot create \(path)") }
            defer { fclose(file) }
            guard fwrite(bytes, 1, bytes.count, file) == bytes.count else {
                throw AgentError(.io, "cannot write \(path)")
            }
        }
    }
#endif
