import AgentProtocol
import ArgumentParser
import CLQXSupport
import Foundation
import HostBroker

struct Copy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp",
        abstract: "Copy a file into or out of the guest; the guest side is written :PATH.",
        discussion: """
            lqx cp ./app.conf :/etc/app.conf     upload (atomic in the guest, SHA-256 checked)
            lqx cp :/var/log/syslog ./syslog     download (atomic locally, SHA-256 checked)
            Through a node (--node HOST:PORT) the guest side names the VM: lqx cp ./f web1:/etc/f.
            A destination that is a directory (or ends in /) receives the file under its own name.
            """)
    @OptionGroup var options: AgentOptions
    @Argument(help: "Source: a local path or :GUEST_PATH.") var source: String
    @Argument(help: "Destination: a local path or :GUEST_PATH.") var destination: String
    @Option(help: "Permission bits of an uploaded file, octal (default: the local file's).") var mode: String?
    @Flag(name: .customLong("parents"), help: "Create missing guest directories.") var createParents = false
    @Flag(name: .customLong("no-progress"), help: "Never show a progress bar.") var noProgress = false

    func validate() throws {
        if let mode, UInt32(mode, radix: 8) == nil { throw ValidationError("--mode takes octal bits like 0644") }
        if options.namesVMs { return }
        let guestSource = source.hasPrefix(":"), guestDestination = destination.hasPrefix(":")
        if guestSource == guestDestination {
            throw ValidationError("exactly one of SOURCE and DESTINATION must be a guest path (:PATH)")
        }
        if let mode, UInt32(mode, radix: 8) == nil { throw ValidationError("--mode takes octal bits like 0644") }
    }

    func run() async throws {
        lqx_tune_malloc()
        if let route = try options.guestRoute() { return try await runThrough(route) }
        try await runReportingErrors {
            let bar = (!noProgress && isatty(2) == 1) ? ProgressBar() : nil
            let progress: TransferProgress? = bar.map { bar in
                let callback: TransferProgress = { done, total in bar.update(done, total) }
                return callback
            }
            let start = ContinuousClock.now
            let result: TransferResult
            if source.hasPrefix(":") {
                let guestPath = String(source.dropFirst())
                var local = destination
                var isDirectory: ObjCBool = false
                if local.hasSuffix("/")
                    || (FileManager.default.fileExists(atPath: local, isDirectory: &isDirectory)
                        && isDirectory.boolValue)
                {
                    local = (local as NSString).appendingPathComponent((guestPath as NSString).lastPathComponent)
                }
                let target = local
                result = try await options.withSession {
                    try await $0.download(guestPath, to: target, progress: progress)
                }
            } else {
                var uploadOptions = UploadOptions()
                uploadOptions.mode = mode.flatMap { UInt32($0, radix: 8) }
                uploadOptions.createParents = createParents
                let local = source
                let requested = String(destination.dropFirst())
                let finalOptions = uploadOptions
                result = try await options.withSession { session in
                    var guestPath = requested
                    var isDirectory = requested.hasSuffix("/")
                    if !isDirectory, let stat = try? await session.stat(requested) {
                        isDirectory = stat.type == .directory
                    }
                    if isDirectory {
                        guestPath = (requested as NSString).appendingPathComponent(
                            (local as NSString).lastPathComponent)
                    }
                    return try await session.upload(
                        file: local, to: guestPath, options: finalOptions, progress: progress)
                }
            }
            bar?.finish(size: result.size, sha256: result.sha256, since: start)
        }
    }
}

/// A one-line progress bar on stderr.
final class ProgressBar: Sendable {
    func update(_ done: UInt64, _ total: UInt64) {
        let fraction = total > 0 ? min(1, Double(done) / Double(total)) : 1
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let line = String(
            format: "\r[%@] %3d%% %@ / %@", bar, Int(fraction * 100), formatBytes(done), formatBytes(total))
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// Ends the bar's line and prints size, time and checksum of the transfer.
    func finish(size: UInt64, sha256: String, since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        let seconds = max(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18, 1e-6)
        FileHandle.standardError.write(
            Data("\n\(formatBytes(size)) in \(String(format: "%.2f", seconds)) s, sha256 \(sha256)\n".utf8))
    }
}
