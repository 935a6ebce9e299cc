import Foundation
import LQXModel
import Synchronization

/// The highest placement epoch the control plane has sent this node for each VM, kept across
/// restarts of the daemon (docs/ha.md: epochs). A command carrying a lower epoch comes from a
/// decision the cluster has moved past — a control plane that lost its leadership, a message
/// delayed in the network — and is refused (`stale_epoch`); epoch 0 is a call without one (an
/// operator's `lqx --node`), which the ledger lets through.
///
/// Stored as an append-only log (`VMID EPOCH` per line, fsync'd before the command runs), read
/// at start and rewritten compacted when it holds twice as many lines as VMs. Bounded: at most
/// `limit` VMs; a full ledger refuses new VMs rather than forgetting an epoch.
public final class EpochLedger: Sendable {
    /// The most VMs it remembers.
    public static let limit = 100_000
    /// The longest VM id it accepts.
    static let maxID = 128

    private let path: String?
    private let state: Mutex<State>

    private struct State {
        var epochs: [String: Int64] = [:]
        var lines = 0
    }

    /// A ledger kept in `path` (nil: in memory only, for tests), loaded if the file exists. A
    /// line that cannot be read fails the start: forgetting an epoch could let a stale command in.
    public init(path: String?) throws(LQXError) {
        self.path = path
        var state = State()
        if let path {
            let directory = (path as NSString).deletingLastPathComponent
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        if let path, FileManager.default.fileExists(atPath: path) {
            let text: String
            do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
                throw LQXError(.io, "cannot read the epoch ledger \(path)", cause: error)
            }
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
                let fields = line.split(separator: " ")
                guard fields.count == 2, let epoch = Int64(fields[1]), epoch > 0, fields[0].utf8.count <= Self.maxID
                else {
                    throw LQXError(
                        .io,
                        "the epoch ledger \(path) is damaged at line \(number + 1); move it away only if no control plane placed VMs here"
                    )
                }
                state.epochs[String(fields[0]), default: 0] = max(state.epochs[String(fields[0]), default: 0], epoch)
                state.lines += 1
            }
        }
        self.state = Mutex(state)
    }

    /// The highest epoch seen for `vm`, or nil.
    public func epoch(of vm: String) -> Int64? {
        state.withLock { $0.epochs[vm] }
    }

    /// Every VM's highest epoch.
    public var all: [String: Int64] { state.withLock { $0.epochs } }

    /// Lets a command for `vm` carrying `epoch` through, recording it when it is the highest
    /// yet; refuses one below the highest seen.
    public func admit(_ vm: String, epoch: Int64) throws(LQXError) {
        guard epoch != 0 else { return }
        guard epoch > 0, !vm.isEmpty, vm.utf8.count <= Self.maxID, !vm.contains(" "), !vm.contains("\n") else {
            throw LQXError(.invalidSpec, "epoch: a positive number for a VM name of at most \(Self.maxID) bytes")
        }
        try state.withLock { (state) throws(LQXError) in
            let seen = state.epochs[vm] ?? 0
            if epoch < seen {
                throw LQXError(
                    .staleEpoch,
                    "VM \(vm): epoch \(epoch) is stale (this node has seen epoch \(seen)); the VM was placed again since"
                )
            }
            guard epoch > seen else { return }
            guard state.epochs[vm] != nil || state.epochs.count < Self.limit else {
                throw LQXError(.resourceExhausted, "the epoch ledger holds \(Self.limit) VMs already")
            }
            try append("\(vm) \(epoch)\n", state: &state)
            state.epochs[vm] = epoch
        }
    }

    private func append(_ line: String, state: inout State) throws(LQXError) {
        guard let path else { return }
        if state.lines >= 64, state.lines >= 2 * state.epochs.count {
            try compact(state: &state)
        }
        try Self.store(line, to: path, flags: O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC)
        state.lines += 1
    }

    /// Rewrites the log with one line per VM (a new file renamed over the old one).
    private func compact(state: inout State) throws(LQXError) {
        guard let path else { return }
        let text = state.epochs.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)\n" }.joined()
        let fresh = path + ".new"
        unlink(fresh)
        try Self.store(text, to: fresh, flags: O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC)
        guard rename(fresh, path) == 0 else {
            throw LQXError(.io, "cannot replace \(path): \(String(cString: strerror(errno)))")
        }
        state.lines = state.epochs.count
    }

    private static func store(_ text: String, to path: String, flags: Int32) throws(LQXError) {
        let fd = open(path, flags, 0o600)
        guard fd >= 0 else { throw LQXError(.io, "cannot open \(path): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        let failure = errno
        close(fd)
        guard written == bytes.count, synced else {
            throw LQXError(.io, "cannot write \(path): \(String(cString: strerror(failure)))")
        }
    }
}
