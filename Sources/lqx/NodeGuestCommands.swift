#if NodeClient
    import AgentProtocol
    import ArgumentParser
    import CLQXSupport
    import Foundation
    import GRPCCore
    import LQXTypes
    import HostBroker
    import NIOCore
    import NodeAPI

    /// One message for the exec request stream; stdin blocks carry an acknowledgement so the reader
    /// waits until its block was handed to gRPC (bounded memory whatever the size of stdin).
    private struct PendingInput: Sendable {
        let message: Limiquantix_Node_V1_ExecInput
        let written: CheckedContinuation<Void, Never>?
    }

    extension Exec {
        /// `lqx --node HOST:PORT exec NAME -- CMD…` through the node's Exec stream.
        func runThrough(_ route: GuestRoute) async throws {
            let target = try nodeTarget()
            let request = Limiquantix_Types_V1_ExecRequest.with {
                $0.argv = target.argv
                for pair in env {
                    let eq = pair.firstIndex(of: "=")!
                    $0.env[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
                }
                $0.cwd = workdir ?? ""
                $0.user = user ?? ""
                if let timeout { $0.timeoutMs = UInt32(clamping: Int64(timeout * 1000)) }
                $0.stdin = !target.noStdin
            }
            let terminal = target.tty ? Terminal() : nil
            var start = request
            if let terminal {
                start.pty = true
                let size = terminal.size ?? (24, 80)
                start.window = .with {
                    $0.rows = size.rows
                    $0.cols = size.cols
                }
            }
            let startMessage = Limiquantix_Node_V1_ExecInput.with {
                $0.start = .with {
                    $0.vm = target.vm
                    $0.request = start
                }
            }
            let forwardStdin = !target.noStdin
            let (inputs, feed) = AsyncStream.makeStream(of: PendingInput.self, bufferingPolicy: .unbounded)
            feed.yield(PendingInput(message: startMessage, written: nil))
            if terminal == nil {
                Interrupts.shared.setForwarder { number in
                    feed.yield(PendingInput(message: .with { $0.signal = number }, written: nil))
                }
            }
            defer { Interrupts.shared.setForwarder(nil) }
            let forwarder = SignalForwarder(
                terminal: terminal,
                resize: { rows, cols in
                    feed.yield(
                        PendingInput(
                            message: .with {
                                $0.resize = .with {
                                    $0.rows = rows
                                    $0.cols = cols
                                }
                            }, written: nil))
                })
            defer { forwarder.stop() }
            let code: Int32
            do {
                code = try await route.exec(
                    requestProducer: { writer in
                        for await input in inputs {
                            try await writer.write(input.message)
                            input.written?.resume()
                        }
                    },
                    onResponse: { messages in
                        var stdinTask: Task<Void, Never>?
                        defer {
                            stdinTask?.cancel()
                            feed.finish()
                        }
                        for try await output in messages {
                            switch output.kind {
                            case .startedPid:
                                terminal?.makeRaw()
                                if forwardStdin { stdinTask = Task { await Self.pumpStdin(into: feed) } }
                            case .stdout(let data): writeAll(1, ByteBuffer(bytes: data))
                            case .stderr(let data): writeAll(2, ByteBuffer(bytes: data))
                            case .exit(let exit):
                                terminal?.restore()
                                if exit.timedOut {
                                    FileHandle.standardError.write(
                                        Data("lqx: command timed out and was killed\n".utf8))
                                }
                                var status = ExecExitStatus(
                                    exitCode: nil, signal: nil, timedOut: exit.timedOut, duration: .zero)
                                switch exit.status {
                                case .exitCode(let code): status.exitCode = code
                                case .signal(let signal): status.signal = signal
                                case nil: break
                                }
                                return try status.validated().shellStatus
                            case nil: break
                            }
                        }
                        return Lqx.failure
                    })
            } catch {
                terminal?.restore()
                reportError(error)
                throw ExitCode(Lqx.failure)
            }
            terminal?.restore()
            throw ExitCode(code)
        }

        private static func pumpStdin(into feed: AsyncStream<PendingInput>.Continuation) async {
            while !Task.isCancelled {
                guard let chunk = await readStdinChunk() else { return }
                if chunk.readableBytes == 0 {
                    feed.yield(PendingInput(message: .with { $0.closeStdin = true }, written: nil))
                    return
                }
                let message = Limiquantix_Node_V1_ExecInput.with { $0.stdin = Data(chunk.readableBytesView) }
                await withCheckedContinuation { continuation in
                    if case .terminated = feed.yield(PendingInput(message: message, written: continuation)) {
                        continuation.resume()
                    }
                }
            }
        }
    }

    /// `NAME:PATH` names a file in a VM (through a node); anything else is local. A local path that
    /// contains a colon can be written ./a:b.
    func guestPath(_ text: String) -> (vm: String, path: String)? {
        guard !text.hasPrefix("/"), !text.hasPrefix("."), let colon = text.firstIndex(of: ":") else { return nil }
        let vm = text[..<colon]
        guard !vm.isEmpty, vm.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else { return nil }
        return (String(vm), String(text[text.index(after: colon)...]))
    }

    extension Copy {
        /// `lqx --node HOST:PORT cp SRC DST`, one side NAME:PATH.
        func runThrough(_ route: GuestRoute) async throws {
            try await runReportingErrors {
                let bar = (!noProgress && isatty(2) == 1) ? ProgressBar() : nil
                let began = ContinuousClock.now
                let result: Limiquantix_Types_V1_TransferResult
                if let (vm, path) = guestPath(source) {
                    var local = destination
                    var isDirectory: ObjCBool = false
                    if local.hasSuffix("/")
                        || (FileManager.default.fileExists(atPath: local, isDirectory: &isDirectory)
                            && isDirectory.boolValue)
                    {
                        local = (local as NSString).appendingPathComponent((path as NSString).lastPathComponent)
                    }
                    result = try await Self.download(route: route, vm: vm, path: path, to: local, bar: bar)
                } else if let (vm, path) = guestPath(destination) {
                    result = try await upload(route: route, vm: vm, path: path, bar: bar)
                } else {
                    throw CLIError("exactly one of SOURCE and DESTINATION must be NAME:PATH (a file in a VM)")
                }
                bar?.finish(size: result.size, sha256: result.sha256, since: began)
            }
        }

        private func upload(route: GuestRoute, vm: String, path: String, bar: ProgressBar?) async throws
            -> Limiquantix_Types_V1_TransferResult
        {
            let fd = open(source, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw CLIError("cannot open \(source): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                throw CLIError("\(source) is not a regular file")
            }
            let size = UInt64(st.st_size)
            let bits = mode.flatMap { UInt32($0, radix: 8) } ?? UInt32(st.st_mode & 0o7777)
            // A destination ending in / is a directory: the file keeps its name.
            let guestPath = path.hasSuffix("/") ? path + (source as NSString).lastPathComponent : path
            let start = Limiquantix_Node_V1_UploadInput.with {
                $0.start = .with {
                    $0.vm = vm
                    $0.path = guestPath
                    $0.size = size
                    $0.mode = bits
                    $0.createParents = createParents
                }
            }
            let local = source
            let result = try await route.upload(
                requestProducer: { writer in
                    try await writer.write(start)
                    var sent: UInt64 = 0
                    while true {
                        let block = try await Self.readBlock(fd)
                        if block.isEmpty { break }
                        try await writer.write(.with { $0.data = block })
                        sent += UInt64(block.count)
                        bar?.update(sent, size)
                    }
                    guard sent == size else { throw CLIError("\(local) changed size during the upload") }
                })
            return result
        }

        static func readBlock(_ fd: Int32) async throws -> Data {
            try await Task {
                var data = Data(count: 1 << 20)
                let n = data.withUnsafeMutableBytes { raw -> Int in
                    while true {
                        let n = read(fd, raw.baseAddress!, raw.count)
                        if n < 0 && errno == EINTR { continue }
                        return n
                    }
                }
                guard n >= 0 else { throw CLIError("read failed: \(String(cString: strerror(errno)))") }
                data.count = n
                return data
            }.value
        }

        /// Writes to a temp file beside `local`, checks the size and SHA-256 the node reports, then
        /// renames: the destination is the complete file or untouched.
        static func download(route: GuestRoute, vm: String, path: String, to local: String, bar: ProgressBar?)
            async throws
            -> Limiquantix_Types_V1_TransferResult
        {
            let url = URL(fileURLWithPath: local)
            let temp =
                "\(url.deletingLastPathComponent().path)/.\(url.lastPathComponent).lqx-\(UInt32.random(in: 0...UInt32.max)).part"
            let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw CLIError("cannot create \(temp): \(String(cString: strerror(errno)))") }
            var committed = false
            defer {
                if !committed {
                    close(fd)
                    unlink(temp)
                }
            }
            let (result, mode, received, digest) = try await route.download(vm: vm, path: path) { messages in
                var hasher = SHA256Hasher()
                var total: UInt64 = 0, received: UInt64 = 0, mode: UInt32 = 0o644
                for try await message in messages {
                    switch message.kind {
                    case .start(let start):
                        total = start.size
                        mode = start.mode
                    case .data(let data):
                        let buffer = ByteBuffer(bytes: data)
                        hasher.update(buffer)
                        writeAll(fd, buffer)
                        received += UInt64(data.count)
                        bar?.update(received, total)
                    case .result(let result):
                        return (result, mode, received, hasher.finalize().hexString)
                    case nil: break
                    }
                }
                throw CLIError("\(route.peer) ended the download of \(vm):\(path) without a result")
            }
            guard result.size == received, result.sha256 == digest else {
                throw CLIError(
                    "download of \(vm):\(path) does not match: got \(received) bytes \(digest), node sent \(result.size) bytes \(result.sha256)"
                )
            }
            fchmod(fd, mode_t(mode & 0o777))  // never setuid/setgid/sticky from a guest
            guard fsync(fd) == 0, close(fd) == 0, rename(temp, local) == 0 else {
                let reason = String(cString: strerror(errno))
                unlink(temp)
                committed = true
                throw CLIError("cannot write \(local): \(reason)")
            }
            committed = true
            return result
        }
    }

    extension Metrics {
        func runThrough(_ route: GuestRoute) async throws {
            try await runReportingErrors {
                guard let vm else { throw CLIError("missing VM name: lqx metrics NAME") }
                if let since {
                    guard case .cluster(let endpoint) = route else {
                        throw CLIError(
                            "--since needs a control plane (it keeps the history); a node keeps the latest only")
                    }
                    guard let seconds = durationSeconds(since), seconds > 0 else {
                        throw CLIError("--since takes a duration like 30s, 15m or 1h")
                    }
                    try await printHistory(endpoint, vm: vm, seconds: seconds)
                    return
                }
                let telemetry = try await route.telemetry(vm: vm)
                // The node API's sample has the agent's fields and numbers (node.proto): read as
                // the agent's message, it is shown exactly as `lqx --agent metrics` shows it.
                let sample = TelemetrySample(
                    wire: try Limiquantix_Agent_V1_TelemetrySample(
                        serializedBytes: telemetry.serializedBytes() as [UInt8]))
                if output == .json {
                    print(try JSONOutput.render(sample))
                } else {
                    print(render(sample), terminator: "")
                }
            }
        }
    }
    extension Top {
        /// Follows the VM's samples as its node collects them.
        func runThrough(_ route: GuestRoute, vm: String) async throws {
            try await runReportingErrors {
                try await route.watchTelemetry(vm: vm) { wire in
                    let sample = TelemetrySample(
                        wire: try Limiquantix_Agent_V1_TelemetrySample(
                            serializedBytes: wire.serializedBytes() as [UInt8]))
                    FileHandle.standardOutput.write(Data(("\u{1B}[H\u{1B}[2J" + render(sample)).utf8))
                }
            }
        }
    }

    extension Metrics {
        func printHistory(_ endpoint: ClusterEndpoint, vm: String, seconds: UInt32) async throws {
            let metadata = endpoint.metadata, ref = endpoint.ref(vm)
            let history = try await endpoint.vms { client in
                try await client.getTelemetry(
                    .with {
                        $0.vm = ref
                        $0.sinceSeconds = seconds
                    }, metadata: metadata)
            }
            if output == .json {
                print(try nodeJSON(history))
                return
            }
            try printList(
                history.samples, key: "samples", output: .text,
                header: ["TIME", "CPU%", "MEM USED MIB", "MEM TOTAL MIB", "LOAD1", "PROCS"]
            ) { t in
                let m = t.sample.memory
                return [
                    time(t.receivedUnixMs), String(format: "%.1f", t.sample.cpu.totalPercent),
                    "\((m.totalBytes - min(m.totalBytes, m.availableBytes)) >> 20)", "\(m.totalBytes >> 20)",
                    String(format: "%.2f", t.sample.load.one), "\(t.sample.processCount)",
                ]
            }
        }
    }
#else
    import ArgumentParser

    /// This lqx was built without the NodeClient trait (the in-guest build): --node is refused.
    private let withoutNodeSupport = ValidationError("this lqx was built without node support (trait NodeClient)")

    /// Without node support there is no route to a VM by name.
    enum GuestRoute {}

    extension AgentOptions {
        func guestRoute() throws -> GuestRoute? { nil }
    }

    extension Exec {
        func runThrough(_ route: GuestRoute) async throws { throw withoutNodeSupport }
    }

    extension Copy {
        func runThrough(_ route: GuestRoute) async throws { throw withoutNodeSupport }
    }

    extension Metrics {
        func runThrough(_ route: GuestRoute) async throws { throw withoutNodeSupport }
    }

    extension Top {
        func runThrough(_ route: GuestRoute, vm: String) async throws { throw withoutNodeSupport }
    }
#endif
