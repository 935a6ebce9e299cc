import AgentProtocol
import LQXModel
import Logging

/// Where the agent listens for the host.
public enum AgentTransport: Sendable, Equatable, CustomStringConvertible {
    /// A virtio-serial port (character device), e.g. `/dev/virtio-ports/org.limiquantix.agent.0`.
    case virtioSerial(path: String)
    /// An AF_VSOCK listener; only the host (CID 2) is admitted unless `allowLocal` also admits
    /// CID 1 (the guest itself, for tests over `vsock_loopback`).
    case vsock(port: UInt32, allowLocal: Bool)
    /// A unix socket listener, for development and tests.
    case unix(path: String)

    /// The transport as `virtio-serial:PATH`, `vsock:PORT` or `unix:PATH`.
    public var description: String {
        switch self {
        case .virtioSerial(let path): "virtio-serial:\(path)"
        case .vsock(let port, let local): "vsock:\(port)\(local ? " (local CID admitted)" : "")"
        case .unix(let path): "unix:\(path)"
        }
    }
}

/// Everything `buildAgent(configuration:)` needs.
public struct AgentConfiguration: Sendable {
    /// Transports served at once.
    public var transports: [AgentTransport]
    /// What the host may do.
    public var policy: AgentPolicy
    /// Where every exec and file operation is recorded (JSON lines); nil disables the audit log.
    public var auditLogPath: String?
    /// Acknowledge and log shutdown requests without acting (tests on a host).
    public var dryRunPower: Bool
    /// Session timing and limits.
    public var session: SessionConfiguration
    /// Root of /proc and /sys (tests may point elsewhere).
    public var procRoot: String
    /// Root of /sys (tests may point elsewhere).
    public var sysRoot: String
    /// Logger for the agent; requests log with `agent.session` and `stream.id` metadata.
    public var logger: Logger
    /// After this long without a new request the agent gives back memory it only needed while
    /// busy or starting: resident code pages (reloaded from the page cache when touched again) and
    /// free heap. Nil never does. See `lqx_release_clean_mappings`.
    public var idleTrim: Duration?

    /// Creates a configuration.
    public init(
        transports: [AgentTransport],
        policy: AgentPolicy = AgentPolicy(),
        auditLogPath: String? = nil,
        dryRunPower: Bool = false,
        session: SessionConfiguration = SessionConfiguration(),
        procRoot: String = "/proc",
        sysRoot: String = "/sys",
        logger: Logger = Logger(label: "lqx-agent"),
        idleTrim: Duration? = AgentConfiguration.defaultIdleTrim
    ) {
        self.transports = transports
        self.policy = policy
        self.auditLogPath = auditLogPath
        self.dryRunPower = dryRunPower
        self.session = session
        self.procRoot = procRoot
        self.sysRoot = sysRoot
        self.logger = logger
        self.idleTrim = idleTrim
    }

    /// The agent version reported in WELCOME and info.
    public static let agentVersion = LimiquantixVersion.current
    /// Default virtio-serial port path.
    public static let defaultVirtioSerialPath = "/dev/virtio-ports/org.limiquantix.agent.0"
    /// Default AF_VSOCK port.
    public static let defaultVsockPort: UInt32 = 5170
    /// Default quiet time before the agent releases idle memory.
    public static let defaultIdleTrim: Duration = .seconds(10)
    /// Default policy file.
    public static let defaultPolicyPath = "/etc/limiquantix/agent.toml"
}
