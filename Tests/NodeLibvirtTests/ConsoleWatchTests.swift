import Foundation
import NodeTestSupport
import Testing

@testable import NodeCore
@testable import NodeLibvirt

/// The boot-stall tolerance the system tests use: it acts only on a stall printed after waiting
/// began, power-cycles once, and still fails a guest that never becomes ready.
@Suite("test support: console watch")
struct ConsoleWatchTests {
    let path = NSTemporaryDirectory() + "lqx-console-watch-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"

    func append(_ text: String) throws {
        if !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
        }
        let handle = try #require(FileHandle(forWritingAtPath: path))
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(text.utf8))
    }

    @Test("a stall printed before watching began is ignored; one printed after is found")
    func offsets() throws {
        defer { try? FileManager.default.removeItem(atPath: path) }
        try append("[ 23.2] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n")
        var watch = ConsoleWatch(path)
        #expect(watch.stall() == nil)
        try append("[  1.0] Linux version 6.1\n[ 44.3] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n")
        #expect(watch.stall() == "[ 44.3] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:")
        watch.skipToEnd()
        #expect(watch.stall() == nil)
        #expect(ConsoleWatch(path + ".missing").stall() == nil)
    }

    @Test("one power cycle on a stall, then the guest must become ready on its own")
    func powerCycleOnce() async throws {
        defer { try? FileManager.default.removeItem(atPath: path) }
        try append("old boot\n")
        var cycles = 0
        var polls = 0
        let ready = try await untilGuestReady("vm", consoleLog: path, timeout: .seconds(3)) {
            cycles += 1
        } ready: {
            polls += 1
            // Every boot stalls: the first stall cycles the VM, the second does not.
            if polls == 2 || polls == 4 { try append("watchdog: BUG: soft lockup - CPU#1 stuck for 22s!\n") }
            return false
        }
        #expect(!ready)
        #expect(cycles == 1)

        cycles = 0
        let booted = try await untilGuestReady("vm", consoleLog: path, timeout: .seconds(3)) {
            cycles += 1
        } ready: {
            true
        }
        #expect(booted && cycles == 0)
    }
}
