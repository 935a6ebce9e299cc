import AgentProtocol
import ArgumentParser
import Dispatch
import Foundation
import HostBroker
import NIOCore
import NIOPosix

struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command in the guest with stdin, stdout and stderr wired through.",
        discussion: """
            No shell is involved: run one yourself (lqx exec -- sh -c '…'). lqx exits with the
            remote exit code, 128+N when the process was killed by signal N, 255 on its own errors.
            The first SIGINT, SIGTERM or SIGHUP is forwarded to the remote process group (with -t, ^C
            travels through the terminal instead, and these signals end lqx). If the process has not
            exited 3 s later, or on a second signal, lqx ends: the agent kills the process group and
            lqx exits 128+N.
            """)
    @OptionGroup var options: AgentOptions
    @Flag(name: .short, help: "Allocate a pseudo-terminal (interactive programs, shells).") var tty = false
    @Option(name: .short, help: "Set an environment variable K=V (repeatable).") var env: [String] = []
    @Option(name: .short, help: "Working directory in the guest.") var workdir: String?
    @Option(name: .shortAndLong, help: "Run as this guest user (name or uid).") var user: String?
    @Option(help: "Kill the process group after this many seconds.") var timeout: Double?
    @Flag(
        name: [.customShort("n"), .customLong("no-stdin")], help: "Do not forward stdin (the command reads /dev/null).")
    var noStdin = false
    @Argument(parsing: .captureForPassthrough, help: "Command and arguments (after --).") var command: [String] = []

    /// Through a node: NAME, then optionally -t / -n, then -- CMD ARG….
    func nodeTarget() throws -> (vm: String, argv: [String], tty: Bool, noStdin: Bool) {
        guard let vm = command.first, vm != "--", !vm.hasPrefix("-") else {
            throw ValidationError("missing VM name: lqx --node HOST:PORT exec [options] NAME -- CMD [ARG...]")
        }
        var tty = self.tty, noStdin = self.noStdin
        var rest = command.dropFirst()
        while let token = rest.first, token != "--" {
            switch token {
            case "-t", "--tty": tty = true
            case "-n", "--no-stdin": noStdin = true
            default:
                throw ValidationError(
                    "unexpected \(token) after the VM name; put options before NAME and the command after --")
            }
            rest = rest.dropFirst()
        }
        let argv = Array(rest.dropFirst())
        if argv.isEmpty { throw ValidationError("missing command: lqx --node HOST:PORT exec NAME -- CMD [ARG...]") }
        return (vm, argv, tty, noStdin)
    }

    func validate() throws {
        let argv = command.first == "--" ? Array(command.dropFirst()) : command
        if options.namesVMs { _ = try nodeTarget() }
        if argv.isEmpty { throw ValidationError("missing command: lqx exec [options] -- CMD [ARG...]") }
        for pair in env where !pair.contains("=") || pair.hasPrefix("=") {
            throw ValidationError("-e takes K=V, got \(pair)")
        }
        if let timeout, timeout <= 0 { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        if let route = try options.guestRoute() { return try await runThrough(route) }
        let argv = command.first == "--" ? Array(command.dropFirst()) : command
        var execOptions = ExecOptions(argv)
        for pair in env {
            let eq = pair.firstIndex(of: "=")!
            execOptions.environment[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
        }
        execOptions.workingDirectory = workdir
        execOptions.user = user
        if let timeout { execOptions.timeout = .milliseconds(Int64(timeout * 1000)) }
        execOptions.stdin = !noStdin
        let terminal = tty ? Terminal() : nil
        if tty { execOptions.pty = terminal?.size ?? (24, 80) }
        let code: Int32
        do {
            let finalOptions = execOptions
            code = try await options.withSession { session in
                let process = try await session.exec(finalOptions)
                terminal?.makeRaw()
                let forwarders = SignalForwarder(process: process, terminal: terminal)
                if terminal == nil {
                    Interrupts.shared.setForwarder { number in Task { try? await process.signal(number) } }
                }
                defer {
                    Interrupts.shared.setForwarder(nil)
                    forwarders.stop()
                }
                let input: Task<Void, Never>? =
                    finalOptions.stdin ? Task { await forwardStdin(to: process) } : nil
                defer { input?.cancel() }
                for try await event in process {
                    switch event {
                    case .stdout(let bytes): writeAll(1, bytes)
                    case .stderr(let bytes): writeAll(2, bytes)
                    case .exit(let status):
                        terminal?.restore()
                        if status.timedOut {
                            FileHandle.standardError.write(Data("lqx: command timed out and was killed\n".utf8))
                        }
                        return status.shellStatus
                    }
                }
                return Lqx.failure
            }
        } catch {
            terminal?.restore()
            reportError(error)
            throw ExitCode(Lqx.failure)
        }
        terminal?.restore()
        throw ExitCode(code)
    }
}

/// Copies local stdin to the process; EOF closes the remote stdin.
func forwardStdin(to process: ExecProcess) async {
    while !Task.isCancelled {
        guard let chunk = await readStdinChunk() else { return }
        if chunk.readableBytes == 0 {
            try? await process.closeStdin()
            return
        }
        do { try await process.write(chunk) } catch { return }
    }
}

/// The next block of local stdin (empty at EOF; nil when reading failed).
func readStdinChunk() async -> ByteBuffer? {
    try? await NIOThreadPool.singleton.runIfActive {
        var buffer = ByteBuffer()
        _ = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 65536) { raw in
            while true {
                let n = read(0, raw.baseAddress!, 65536)
                if n < 0 && errno == EINTR { continue }
                return max(n, 0)
            }
        }
        return buffer
    }
}

func writeAll(_ fd: Int32, _ buffer: ByteBuffer) {
    buffer.withUnsafeReadableBytes { raw in
        var offset = 0
        while offset < raw.count {
            let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += n
        }
    }
}

/// Forwards window-size changes of the local terminal to the remote PTY (signals that end lqx
/// are `Interrupts`' business).
final class SignalForwarder {
    private let sources: [any DispatchSourceSignal]

    convenience init(process: ExecProcess, terminal: Terminal?) {
        self.init(
            terminal: terminal, resize: { rows, cols in Task { try? await process.resize(rows: rows, cols: cols) } })
    }

    init(terminal: Terminal?, resize: @escaping @Sendable (UInt32, UInt32) -> Void) {
        var sources: [any DispatchSourceSignal] = []
        if let terminal {
            signal(SIGWINCH, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGWINCH, queue: .global())
            source.setEventHandler {
                if let size = terminal.size { resize(size.rows, size.cols) }
            }
            source.resume()
            sources.append(source)
        }
        self.sources = sources
    }

    func stop() {
        for source in sources { source.cancel() }
    }
}

/// The local terminal: size and raw mode.
final class Terminal: Sendable {
    private let saved: termios?

    init() {
        var attributes = termios()
        saved = isatty(0) == 1 && tcgetattr(0, &attributes) == 0 ? attributes : nil
    }

    var size: (rows: UInt32, cols: UInt32)? {
        var ws = winsize()
        guard ioctl(1, UInt(TIOCGWINSZ), &ws) == 0 || ioctl(0, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_row > 0 else {
            return nil
        }
        return (UInt32(ws.ws_row), UInt32(ws.ws_col))
    }

    func makeRaw() {
        guard var raw = saved else { return }
        cfmakeraw(&raw)
        tcsetattr(0, TCSANOW, &raw)
    }

    func restore() {
        guard var saved else { return }
        tcsetattr(0, TCSANOW, &saved)
    }
}
