import CLQXSupport
import Glibc

/// What to start: the one description of a child process for the agent's exec and the node's
/// helpers (`Child`). The child leads a new process group (a new session with a pty) and
/// inherits only descriptors 0, 1 and 2.
public struct SpawnRequest: Sendable {
    /// The executable (not searched in PATH).
    public var path: String
    /// argv, argv[0] included.
    public var argv: [String]
    /// The environment as `KEY=VALUE`.
    public var environment: [String]
    /// The working directory (nil: the parent's).
    public var workingDirectory: String?
    /// Descriptors for the child's 0, 1 and 2 (-1: leave to the C side, which uses /dev/null).
    public var stdin: Int32
    /// The child's stdout.
    public var stdout: Int32
    /// The child's stderr.
    public var stderr: Int32
    /// A pseudo-terminal to become the child's controlling terminal and 0/1/2.
    public var ptySlave: String?
    /// Credentials to switch to before exec (nil: keep the parent's).
    public var credentials: Credentials?

    /// A user to run as: ids and supplementary groups.
    public struct Credentials: Sendable {
        /// The user id.
        public var uid: uid_t
        /// The primary group id.
        public var gid: gid_t
        /// Supplementary groups.
        public var groups: [gid_t]

        /// Creates credentials.
        public init(uid: uid_t, gid: gid_t, groups: [gid_t]) {
            self.uid = uid
            self.gid = gid
            self.groups = groups
        }
    }

    /// A request; descriptors default to -1.
    public init(
        path: String, argv: [String], environment: [String], workingDirectory: String? = nil, stdin: Int32 = -1,
        stdout: Int32 = -1, stderr: Int32 = -1, ptySlave: String? = nil, credentials: Credentials? = nil
    ) {
        self.path = path
        self.argv = argv
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.ptySlave = ptySlave
        self.credentials = credentials
    }

    /// The current process's environment as `KEY=VALUE`.
    public static var inheritedEnvironment: [String] {
        var result: [String] = []
        var entry = environ
        while let string = entry.pointee {
            result.append(String(cString: string))
            entry += 1
        }
        return result
    }
}

/// A child that could not be started: which step failed in the child (or `spawn`) and its errno.
public struct SpawnFailure: Error, Sendable, CustomStringConvertible {
    /// The step that failed (`execve`, `chdir`, `setuid`, …).
    public var step: String
    /// Its errno.
    public var errno: Int32
    /// What was started.
    public var program: String

    /// `STEP failed for PROGRAM: TEXT`.
    public var description: String { "\(step) failed for \(program): \(errnoText(errno))" }
}

extension SpawnRequest {
    /// Starts the child; returns its pid.
    public func spawn() throws(SpawnFailure) -> pid_t {
        func cStrings(_ strings: [String]) -> [UnsafeMutablePointer<CChar>?] { strings.map { strdup($0) } + [nil] }
        let argv = cStrings(self.argv)
        let envp = cStrings(environment)
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var childErrno: Int32 = 0
        var step: UnsafePointer<CChar>?
        let groups = credentials?.groups ?? []
        let pid: pid_t = groups.withUnsafeBufferPointer { groupsPointer in
            path.withCString { path in
                withOptionalCString(workingDirectory) { cwd in
                    withOptionalCString(ptySlave) { pty in
                        argv.withUnsafeBufferPointer { argvPointer in
                            envp.withUnsafeBufferPointer { envPointer in
                                var options = lqx_spawn_options()
                                options.path = path
                                options.argv = argvPointer.baseAddress
                                options.envp = envPointer.baseAddress
                                options.cwd = cwd
                                options.stdin_fd = stdin
                                options.stdout_fd = stdout
                                options.stderr_fd = stderr
                                options.pty_slave_path = pty
                                if let credentials {
                                    options.set_ids = 1
                                    options.uid = credentials.uid
                                    options.gid = credentials.gid
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
            throw SpawnFailure(
                step: step.map { String(cString: $0) } ?? "spawn", errno: childErrno, program: self.argv.first ?? path)
        }
        return pid
    }
}

/// Calls `body` with a C string of `string`, or nil.
public func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let string else { return body(nil) }
    return string.withCString(body)
}
