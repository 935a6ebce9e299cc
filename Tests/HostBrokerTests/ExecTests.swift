import AgentProtocol
import AgentTestSupport
import Foundation
import GuestAgent
import LQXTestSupport
import NIOCore
import Testing

@testable import HostBroker

@Suite("exec through agent and broker over a unix socket")
struct ExecTests {
    @Test("exit codes are reported", arguments: [0, 1, 7, 255])
    func exitCodes(code: Int32) async throws {
        let status = try await Harness.withAgent { session in
            try await session.exec(ExecOptions(["sh", "-c", "exit \(code)"])).collect().status
        }
        #expect(status.exitCode == code)
        #expect(status.signal == nil)
        #expect(status.shellStatus == code)
    }

    @Test("stdout and stderr arrive separately")
    func separateStreams() async throws {
        let (out, err, status) = try await Harness.withAgent { session in
            try await session.exec(ExecOptions(["sh", "-c", "echo out; echo err >&2; echo more"])).collect()
        }
        #expect(String(buffer: out) == "out\nmore\n")
        #expect(String(buffer: err) == "err\n")
        #expect(status.exitCode == 0)
    }

    @Test("commands start with no ignored and no blocked signals (the agent ignores SIGPIPE and SIGIO)")
    func cleanSignalState() async throws {
        signal(SIGPIPE, SIG_IGN)
        let (out, _, status) = try await Harness.withAgent { session in
            try await session.exec(ExecOptions(["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"])).collect()
        }
        #expect(status.exitCode == 0)
        #expect(String(buffer: out) == "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n")
    }

    @Test("a process killed by a signal reports the signal")
    func killedBySignal() async throws {
        let status = try await Harness.withAgent { session in
            try await session.exec(ExecOptions(["sh", "-c", "kill -TERM $$"])).collect().status
        }
        #expect(status.signal == SIGTERM)
        #expect(status.exitCode == nil)
        #expect(status.shellStatus == 128 + SIGTERM)
    }

    @Test("signals are forwarded to the process group")
    func forwardedSignal() async throws {
        let status = try await Harness.withAgent { session in
            let process = try await session.exec(ExecOptions(["sleep", "30"]))
            try await Task.sleep(for: .milliseconds(200))
            try await process.signal(SIGINT)
            return try await process.collect().status
        }
        #expect(status.signal == SIGINT)
    }

    @Test("the timeout kills the whole process group")
    func timeoutKillsGroup() async throws {
        let (status, pidText) = try await Harness.withAgent { session in
            var options = ExecOptions(["sh", "-c", "sleep 60 & echo $!; wait"])
            options.timeout = .milliseconds(500)
            let result = try await session.exec(options).collect()
            return (result.status, String(buffer: result.stdout).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        #expect(status.timedOut)
        #expect(status.signal == SIGKILL)
        #expect(status.duration < .seconds(5))
        let child = try #require(pid_t(pidText))
        for _ in 0..<30 where isAlive(child) { try await Task.sleep(for: .milliseconds(100)) }
        #expect(!isAlive(child), "the background child must be killed with its group")
    }

    @Test("stdin is streamed in and echoed back")
    func stdinEcho() async throws {
        let input = pseudoRandomBytes(3 << 20, seed: 42)
        let output = try await Harness.withAgent { session in
            var options = ExecOptions(["cat"])
            options.stdin = true
            let process = try await session.exec(options)
            async let result = process.collect()
            var offset = 0
            while offset < input.count {
                let end = min(offset + 100_000, input.count)
                try await process.write(ByteBuffer(bytes: input[offset..<end]))
                offset = end
            }
            try await process.closeStdin()
            return try await result
        }
        #expect(output.status.exitCode == 0)
        #expect(output.stdout.readableBytes == input.count)
        let identical = Array(output.stdout.readableBytesView) == input
        #expect(identical, "echoed bytes differ")
    }

    @Test("100 MiB of stdout streams through without being buffered whole")
    func largeOutput() async throws {
        let total = 100 << 20
        let (count, status) = try await Harness.withAgent { session in
            let process = try await session.exec(ExecOptions(["head", "-c", "\(total)", "/dev/zero"]))
            var count = 0
            var status: ExecExitStatus?
            let zeros = [UInt8](repeating: 0, count: 1 << 20)
            for try await event in process {
                switch event {
                case .stdout(let bytes):
                    // memcmp: a byte-wise loop in a debug build would dominate the test's run time.
                    #expect(
                        bytes.readableBytes <= zeros.count
                            && bytes.withUnsafeReadableBytes { memcmp($0.baseAddress!, zeros, $0.count) } == 0)
                    count += bytes.readableBytes
                case .stderr: Issue.record("unexpected stderr")
                case .exit(let s): status = s
                }
            }
            return (count, status)
        }
        #expect(count == total)
        #expect(status?.exitCode == 0)
    }

    @Test("a PTY has the requested size and is the controlling terminal")
    func pty() async throws {
        let (out, status) = try await Harness.withAgent { session in
            var options = ExecOptions(["sh", "-c", "tty; stty size; test -t 0 && echo interactive"])
            options.pty = (rows: 31, cols: 101)
            let result = try await session.exec(options).collect()
            return (String(buffer: result.stdout), result.status)
        }
        #expect(out.contains("/dev/pts/"))
        #expect(out.contains("31 101"))
        #expect(out.contains("interactive"))
        #expect(status.exitCode == 0)
    }

    @Test("PTY input and resize reach the program")
    func ptyInputAndResize() async throws {
        let out = try await Harness.withAgent { session in
            var options = ExecOptions(["sh", "-c", "read line; echo got:$line; stty size"])
            options.pty = (rows: 24, cols: 80)
            let process = try await session.exec(options)
            try await process.resize(rows: 50, cols: 132)
            try await Task.sleep(for: .milliseconds(100))
            try await process.write(ByteBuffer(string: "hello\n"))
            return String(buffer: try await process.collect().stdout)
        }
        #expect(out.contains("got:hello"))
        #expect(out.contains("50 132"))
    }

    @Test("environment, working directory and a missing executable")
    func environmentAndErrors() async throws {
        try await Harness.withAgent { session in
            var options = ExecOptions(["sh", "-c", "echo $LQX_TEST; pwd"])
            options.environment = ["LQX_TEST": "value with spaces"]
            options.workingDirectory = "/tmp"
            let result = try await session.exec(options).collect()
            #expect(String(buffer: result.stdout) == "value with spaces\n/tmp\n")
            let error = await #expect(throws: AgentError.self) {
                _ = try await session.exec(ExecOptions(["/definitely/not/here"]))
            }
            #expect(error?.code == .notFound)
            let cwdError = await #expect(throws: AgentError.self) {
                var bad = ExecOptions(["true"])
                bad.workingDirectory = "/no/such/dir"
                _ = try await session.exec(bad)
            }
            #expect(cwdError?.code == .notFound)
            let unknownUser = await #expect(throws: AgentError.self) {
                var bad = ExecOptions(["true"])
                bad.user = "no-such-user-lqx"
                _ = try await session.exec(bad)
            }
            #expect(unknownUser?.code == .notFound)
        }
    }

    @Test("a command runs as the requested user with that user's groups and home")
    func runAsUser() async throws {
        try #require(geteuid() == 0, "needs root to switch users")
        let (out, status) = try await Harness.withAgent { session in
            var options = ExecOptions(["sh", "-c", "id -un; id -u; echo $HOME"])
            options.user = "nobody"
            let result = try await session.exec(options).collect()
            return (String(buffer: result.stdout), result.status)
        }
        #expect(status.exitCode == 0)
        #expect(out.hasPrefix("nobody\n65534\n"))
    }

    @Test("cancelling an exec kills the process")
    func cancelKills() async throws {
        let pid = try await Harness.withAgent { session in
            let process = try await session.exec(ExecOptions(["sleep", "60"]))
            process.cancel()
            for _ in 0..<50 where isAlive(process.pid) {
                try await Task.sleep(for: .milliseconds(100))
            }
            return process.pid
        }
        #expect(!isAlive(pid))
    }
}
