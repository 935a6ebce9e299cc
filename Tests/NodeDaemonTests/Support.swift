import Foundation
import NodeDaemon
import Testing

/// libvirtd on qemu:///system, or why not. CI (scripts/test.sh) starts it and sets
/// LQX_REQUIRE_LIBVIRT=1, which turns a missing libvirtd into a failure instead of a skip.
enum LibvirtAvailability {
    static let reason: String? = {
        do {
            _ = try LibvirtConnection(uri: "qemu:///system")
            return nil
        } catch {
            return "libvirtd is not reachable at qemu:///system (\(error)); start `virtlogd -d; libvirtd -d`"
        }
    }()

    static var available: Bool {
        if let reason {
            if ProcessInfo.processInfo.environment["LQX_REQUIRE_LIBVIRT"] != nil {
                Issue.record("LQX_REQUIRE_LIBVIRT is set but \(reason)")
            } else {
                print("skipped: \(reason)")
            }
            return false
        }
        return true
    }
}

/// A node layout in a fresh temporary directory, removed afterwards.
struct TestNode {
    let root: String
    let layout: NodeLayout

    init() throws {
        root = NSTemporaryDirectory() + "lqx-node-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        // libvirt's QEMU user must reach the run directory through this path.
        chmod(root, 0o755)
        layout = NodeLayout(stateDirectory: root + "/state", runDirectory: root + "/run")
    }

    func remove() { try? FileManager.default.removeItem(atPath: root) }

    /// Every file and directory under the root (to prove nothing is left behind).
    func contents() -> [String] {
        (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).sorted()
    }

    /// A VM name unique to this test run.
    static func vmName(_ base: String) -> String { "lqx-test-\(getpid())-\(base)" }
}
