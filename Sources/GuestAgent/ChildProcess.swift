import AgentProtocol
import Glibc
import POSIXSupport
import Synchronization

/// A user the agent can run a command as.
struct ExecUser: Sendable {
    var uid: uid_t
    var gid: gid_t
    var name: String
    var home: String
    var shell: String
    var groups: [gid_t]

    /// Looks up a user by name or numeric id.
    static func lookup(_ spec: String) throws(AgentError) -> ExecUser {
        var pwd = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16384)
        let rc: Int32
        if let uid = uid_t(spec) {
            rc = getpwuid_r(uid, &pwd, &buffer, buffer.count, &result)
        } else {
            rc = getpwnam_r(spec, &pwd, &buffer, buffer.count, &result)
        }
        guard rc == 0, let entry = result?.pointee else {
            if let uid = uid_t(spec) {
                // A numeric uid without a passwd entry is still usable.
                return ExecUser(
                    uid: uid, gid: gid_t(uid), name: spec, home: "/", shell: "/bin/sh", groups: [gid_t(uid)])
            }
            throw AgentError(.notFound, "user \(spec) does not exist in the guest")
        }
        let name = String(cString: entry.pw_name)
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(entry.pw_name, entry.pw_gid, &groups, &count) < 0 {
            groups = [gid_t](repeating: 0, count: Int(count))
            _ = getgrouplist(entry.pw_name, entry.pw_gid, &groups, &count)
        }
        return ExecUser(
            uid: entry.pw_uid, gid: entry.pw_gid, name: name, home: String(cString: entry.pw_dir),
            shell: String(cString: entry.pw_shell), groups: Array(groups.prefix(Int(max(count, 0)))))
    }

    static func fileStamp(_ path: String) -> [Int] {
        var info = stat()
        guard stat(path, &info) == 0 else { return [] }
        return [
            Int(info.st_ino), Int(info.st_size), info.st_mtim.tv_sec, info.st_mtim.tv_nsec, info.st_ctim.tv_sec,
            info.st_ctim.tv_nsec,
        ]
    }
}

/// The user the agent runs as, with the passwd lookup cached until /etc/passwd or /etc/group
/// changes (one stat each per exec instead of parsing them). Owned by the agent's core.
final class UserCache: Sendable {
    private struct Key: Equatable {
        var uid: uid_t
        var passwd: [Int]
        var group: [Int]
    }
    private let cached = Mutex<(key: Key, user: ExecUser)?>(nil)

    /// The current user.
    func current() -> ExecUser {
        let key = Key(
            uid: geteuid(), passwd: ExecUser.fileStamp("/etc/passwd"), group: ExecUser.fileStamp("/etc/group"))
        if let user = cached.withLock({ $0?.key == key ? $0?.user : nil }) { return user }
        let user =
            (try? ExecUser.lookup(String(key.uid)))
            ?? ExecUser(uid: key.uid, gid: getegid(), name: "\(key.uid)", home: "/", shell: "/bin/sh", groups: [])
        cached.withLock { $0 = (key, user) }
        return user
    }
}

/// Spawning and reaping child processes.
enum ChildProcess {
    /// Finds an executable: paths with a '/' are used as given, other names are searched in PATH.
    static func resolve(_ name: String, path: String) throws(AgentError) -> String {
        if name.contains("/" as Character) {
            guard access(name, X_OK) == 0 else {
                throw AgentError(errno == ENOENT ? .notFound : .denied, "cannot execute \(name): \(errnoText())")
            }
            return name
        }
        for dir in path.split(separator: ":") where !dir.isEmpty {
            let candidate = "\(dir)/\(name)"
            var st = stat()
            if stat(candidate, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        throw AgentError(.notFound, "executable \(name) not found in PATH \(path)")
    }

    /// Starts a child (see `SpawnRequest`); its pid, or the failure as the agent reports it.
    static func spawn(_ request: SpawnRequest) throws(AgentError) -> pid_t {
        do {
            return try request.spawn()
        } catch {
            let code: AgentError.Code =
                switch error.errno {
                case ENOENT: .notFound
                case EACCES, EPERM: .denied
                default: .io
                }
            throw AgentError(code, error.description)
        }
    }
}
