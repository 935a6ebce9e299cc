import Foundation
import LQXModel
import LQXTestSupport
import POSIXSupport
import Testing

/// POSIXSupport's `Child`: how the node runs qemu-img and the tests run every command.
@Suite("child processes")
struct ChildTests {
    @Test("stdin in, stdout and stderr apart, exit code")
    func roundTrip() throws {
        let result = try Child.run("/bin/sh", ["-c", "tr a-z A-Z; echo oops >&2; exit 3"], stdin: Array("hello".utf8))
        #expect(result.status == 3)
        #expect(result.stdoutText == "HELLO")
        #expect(result.stderrText == "oops\n")
        #expect(!result.truncated)
    }

    @Test("output larger than a pipe, and stdin larger than a pipe, do not stall")
    func largeStreams() throws {
        let input = [UInt8](repeating: 0x61, count: 1 << 20)
        let result = try Child.run("/bin/sh", ["-c", "cat; head -c 300000 /dev/zero >&2"], stdin: input)
        #expect(result.status == 0)
        #expect(result.stdout.count == input.count)
        #expect(result.stderr.count == 300_000)
    }

    @Test("output beyond the limit is drained and dropped")
    func limit() throws {
        let result = try Child.run("/usr/bin/head", ["-c", "1000000", "/dev/zero"], outputLimit: 4096)
        #expect(result.status == 0)
        #expect(result.stdout.count == 4096)
        #expect(result.truncated)
    }

    @Test("a spawn given no descriptors (-1) runs the child on /dev/null (the agent's power path)")
    func noDescriptors() throws {
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("lqx-spawn-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: marker) }
        // The child's 0, 1 and 2 are /dev/null: reading gives EOF, writing succeeds.
        let pid = try SpawnRequest(
            path: "/bin/sh",
            argv: ["sh", "-c", "cat && echo out && echo err >&2 && readlink /proc/self/fd/0 > \(marker)"],
            environment: ["PATH=/usr/bin:/bin"]
        ).spawn()
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        #expect(status == 0)
        #expect((try? String(contentsOfFile: marker, encoding: .utf8)) == "/dev/null\n")
    }

    @Test("a missing binary is an error naming it; a signal is 128 + N")
    func failures() throws {
        let error = #expect(throws: LQXError.self) { try Child.run("/nonexistent/tool", []) }
        #expect(error?.description.contains("/nonexistent/tool") == true)
        let killed = try Child.run("/bin/sh", ["-c", "kill -TERM $$"])
        #expect(killed.status == 128 + SIGTERM)
    }

    @Test("the child starts with no blocked signals (a daemon it starts can be stopped)")
    func signalMask() async throws {
        let result = try await Child.output("/bin/grep", ["^SigBlk", "/proc/self/status"])
        #expect(result.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "SigBlk:\t0000000000000000")
    }

    @Test("a spawned child: running, signalled, reaped; exit(timeout:) does not wait past its deadline")
    func lifecycle() async throws {
        let child = try Child.spawn("/bin/sleep", ["30"])
        #expect(child.isRunning)
        #expect(await child.exit(timeout: .milliseconds(100)) == nil)
        child.signal(SIGKILL)
        #expect(await child.exit(timeout: .seconds(10)) == 128 + SIGKILL)
        #expect(child.wait() == 128 + SIGKILL)
        child.signal(SIGKILL)  // after reaping: no signal to a possibly reused pid
    }
}
