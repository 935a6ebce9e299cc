import AgentProtocol
import CLQXSupport
import Glibc
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

    /// The user the agent runs as. The passwd lookup is cached until /etc/passwd or /etc/group
    /// changes (one stat each per exec instead of parsing them).
    static func current() -> ExecUser {
        let key = CurrentUserCache.Key(uid: geteuid(), passwd: fileStamp("/etc/passwd"), group: fileStamp("/etc/group"))
        if let cached = currentUserCache.withLock({ $0?.key == key ? $0?.user : nil }) { return cached }
        let user =
            (try? lookup(String(key.uid)))
            ?? ExecUser(uid: key.uid, gid: getegid(), name: "\(key.uid)", home: "/", shell: "/bin/sh", groups: [])
        currentUserCache.withLock { $0 = CurrentUserCache(key: key, user: user) }
        return user
    }

    private static func fileStamp(_ path: String) -> [Int] {
        var info = stat()
        guard stat(path, &info) == 0 else { return [] }
        return [
            Int(info.st_ino), Int(info.st_size), info.st_mtim.tv_sec, info.st_mtim.tv_nsec, info.st_ctim.tv_sec,
            info.st_ctim.tv_nsec,
        ]
    }
}

private struct CurrentUserCache {
    struct Key: Equatable {
        var uid: uid_t
        var passwd: [Int]
        var group: [Int]
    }
    var key: Key
    var user: ExecUser
}

private let currentUserCache = Mutex<CurrentUserCache?>(nil)

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

    struct Spawn {
        var path: String
        var argv: [String]
        var env: [String]
        var cwd: String?
        var stdin: Int32 = -1
        var stdout: Int32 = -1
        var stderr: Int32 = -1
        var ptySlave: String?
        var user: ExecUser?
    }

    /// Forks and execs; returns the pid. The child leads a new process group (or session with a pty).
    static func spawn(_ s: Spawn) throws(AgentError) -> pid_t {
        func cStrings(_ strings: [String]) -> [UnsafeMutablePointer<CChar>?] {
            strings.map { strdup($0) } + [nil]
        }
        let argv = cStrings(s.argv)
        let envp = cStrings(s.env)
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var childErrno: Int32 = 0
        var step: UnsafePointer<CChar>?
        let groups = s.user?.groups ?? []
        let pid: pid_t = groups.withUnsafeBufferPointer { groupsPointer in
            s.path.withCString { path in
                withOptionalCString(s.cwd) { cwd in
                    withOptionalCString(s.ptySlave) { pty in
                        argv.withUnsafeBufferPointer { argvPointer in
                            envp.withUnsafeBufferPointer { envPointer in
                                var options = lqx_spawn_options()
                                options.path = path
                                options.argv = argvPointer.baseAddress
                                options.envp = envPointer.baseAddress
                                options.cwd = cwd
                                options.stdin_fd = s.stdin
                                options.stdout_fd = s.stdout
                                options.stderr_fd = s.stderr
                                options.pty_slave_path = pty
                                if let user = s.user {
                                    options.set_ids = 1
                                    options.uid = user.uid
                                    options.gid = user.gid
                                    options.groups = groupsPointer.baseAddress
                                    options.ngroups = groupsPointer.count
                                }
                                return lqx_spawn(&options, &childErrno, &step)
                            }
                        }
                    }
                }
            }
        }
        guard pid > 0 else {
            let what = step.map { String(cString: $0) } ?? "spawn"
            let text = String(cString: strerror(childErrno))
            let code: AgentError.Code =
                switch childErrno {
                case ENOENT: .notFound
                case EACCES, EPERM: .denied
                default: .io
                }
            throw AgentError(code, "\(what) failed for \(s.argv.first ?? s.path): \(text)")
        }
        return pid
    }

    /// Waits for a child without blocking the cooperative pool.
    static func wait(pid: pid_t) async -> Int32 {
        await ChildReaper.wait(pid: pid)
    }
}

func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    if let string { return string.withCString { body($0) } }
    return body(nil)
}

func errnoText(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}
