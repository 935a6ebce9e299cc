import Foundation
import LQXModel

extension SharedStorage {
    /// Declares `directory` shared storage of this node: reads the id in its marker file, or —
    /// the first node to declare it — writes a new random one (created exclusively, so two
    /// nodes declaring it at once agree on the id). The directory must exist: a storage that is
    /// not mounted must not be declared with an empty local directory's id.
    public static func declare(_ directory: String) throws(LQXError) -> SharedStorage {
        var path = directory
        while path.count > 1, path.hasSuffix("/") { path.removeLast() }
        var isDirectory: ObjCBool = false
        guard path.hasPrefix("/"), FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory),
            isDirectory.boolValue
        else {
            throw LQXError(.invalidSpec, "--shared-storage \(directory): not an existing directory (absolute path)")
        }
        let marker = path + "/" + markerName
        let id = try readOrCreate(marker)
        do {
            return try SharedStorage(id: id, path: path)
        } catch {
            throw LQXError(.invalidSpec, "--shared-storage \(directory): \(error.message)")
        }
    }

    /// The id in `marker`, written first when the file does not exist.
    private static func readOrCreate(_ marker: String) throws(LQXError) -> String {
        let fresh = (0..<2).map { _ in String(UInt64.random(in: .min ... .max), radix: 16) }
            .map { String(repeating: "0", count: 16 - $0.count) + $0 }.joined()
        let fd = open(marker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        if fd >= 0 {
            let line = Array((fresh + "\n").utf8)
            let written = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            let synced = fsync(fd) == 0
            let failure = errno
            close(fd)
            guard written == line.count, synced else {
                unlink(marker)
                throw LQXError(.io, "cannot write \(marker): \(String(cString: strerror(failure)))")
            }
            return fresh
        }
        guard errno == EEXIST else {
            throw LQXError(.io, "cannot create \(marker): \(String(cString: strerror(errno)))")
        }
        // Another node may be writing it right now: the id is 33 bytes, read until it is whole.
        for _ in 0..<50 {
            guard let handle = FileHandle(forReadingAtPath: marker) else {
                throw LQXError(.io, "cannot read \(marker)")
            }
            let data = (try? handle.read(upToCount: 128)) ?? nil
            try? handle.close()
            let text = String(decoding: data ?? Data(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            if isID(text) { return text }
            if (data?.count ?? 0) > 33 { break }
            usleep(20_000)
        }
        throw LQXError(
            .invalidSpec,
            "\(marker) holds no storage id (32 hexadecimal digits); remove it to have one written")
    }
}
