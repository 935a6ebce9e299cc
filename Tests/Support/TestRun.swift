import Foundation

/// What a test run started, so `scripts/test.sh` can stop exactly that when a runner dies:
/// processes by pid and libvirt domains by name, appended to files in `$LQX_TEST_RUN_DIR` (when
/// set). Nothing else on the host is touched.
public enum TestRun {
    private static let directory = ProcessInfo.processInfo.environment["LQX_TEST_RUN_DIR"]

    /// Records a process this run started (QEMU, a node daemon).
    public static func record(pid: pid_t) { append("pids", "\(pid)") }

    /// Records a libvirt domain name this run defines.
    public static func record(domain: String) { append("domains", domain) }

    private static func append(_ file: String, _ line: String) {
        guard let directory, !directory.isEmpty else { return }
        let path = "\(directory)/\(file)"
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }
}
