import Foundation
import LQXModel
import NodeCore
import Testing

@Suite("placement epochs kept by a node: the ledger")
struct EpochLedgerTests {
    func path() throws -> String {
        let directory = NSTemporaryDirectory() + "lqx-epochs-\(UUID().uuidString)"
        return directory + "/state/epochs.log"
    }

    @Test("a lower epoch is refused with stale_epoch, equal and higher pass, 0 is an operator's call")
    func refusesStale() throws {
        let ledger = try EpochLedger(path: nil)
        try ledger.admit("vm-a", epoch: 3)
        try ledger.admit("vm-a", epoch: 3)
        #expect(
            throws: LQXError(
                .staleEpoch, "VM vm-a: epoch 2 is stale (this node has seen epoch 3); the VM was placed again since")
        ) { try ledger.admit("vm-a", epoch: 2) }
        try ledger.admit("vm-a", epoch: 0)
        try ledger.admit("vm-a", epoch: 5)
        #expect(ledger.epoch(of: "vm-a") == 5)
        // Epochs are per VM.
        try ledger.admit("vm-b", epoch: 1)
        #expect(ledger.all == ["vm-a": 5, "vm-b": 1])
        #expect(throws: LQXError.self) { try ledger.admit("vm-a", epoch: -1) }
        #expect(throws: LQXError.self) { try ledger.admit("two words", epoch: 1) }
    }

    @Test("kept across restarts, compacted when the log grows, a damaged file fails the start")
    func persists() throws {
        let file = try path()
        defer { try? FileManager.default.removeItem(atPath: (file as NSString).deletingLastPathComponent) }
        do {
            let ledger = try EpochLedger(path: file)
            for epoch in 1...200 { try ledger.admit("vm-\(epoch % 3)", epoch: Int64(epoch)) }
        }
        let lines = try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n").count
        #expect(lines < 200, "compacted: \(lines) lines")
        let reopened = try EpochLedger(path: file)
        #expect(reopened.all == ["vm-0": 198, "vm-1": 199, "vm-2": 200])
        #expect(throws: LQXError.self) { try reopened.admit("vm-2", epoch: 150) }
        try Data("vm-9 x\n".utf8).write(to: URL(fileURLWithPath: file))
        #expect(throws: LQXError.self) { _ = try EpochLedger(path: file) }
    }
}
