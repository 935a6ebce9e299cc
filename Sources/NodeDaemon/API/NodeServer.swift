import Foundation
import GRPCCore
import HostBroker
import LQXModel
import LQXServer
import Logging
import NodeCore
import NodeLibvirt
import ServiceLifecycle

/// Settings of one node daemon.
public struct NodeConfiguration: Sendable {
    /// gRPC API address; port 0 picks a free port.
    public var listen: HostPort
    /// HTTP /health and /metrics; nil: not served.
    public var metricsListen: HostPort?
    /// The libvirt connection URI.
    public var libvirtURI: String
    /// Where VM files and sockets live.
    public var layout: NodeLayout
    /// The node's name in metrics and node info (default: the host name).
    public var nodeName: String
    /// Seconds between in-guest telemetry samples per VM.
    public var telemetryInterval: Duration
    /// Agent broker bounds and deadlines.
    public var broker: BrokerConfiguration
    /// Waits and defaults of lifecycle operations.
    public var policy: LifecyclePolicy
    /// How long open calls may run after shutdown began.
    public var shutdownGrace: Duration
    /// How often code pages the daemon no longer touches are given back (nil: never). Startup
    /// code (argument parsing, gRPC and libvirt set-up) is most of a fresh daemon's resident set;
    /// what it still runs comes back from the page cache by minor faults.
    public var memoryTrim: Duration?
    /// How the API listener is secured (plaintext for a standalone node).
    public var security: ServerSecurity = .plaintext
    /// How to join a cluster when this node has not joined one yet (nil: stay standalone
    /// unless it joined before; a node that joined reuses its membership without a token).
    public var join: JoinSettings?
    /// A joined node serves its API in plaintext only with this set (development).
    public var insecureListen = false
    /// How other hosts live-migrate VMs to this one (nil: it takes no live migrations).
    public var migration: MigrationTarget?
    /// Directories on storage other hosts mount at the same paths (`--shared-storage`): reported
    /// in heartbeats; a VM's writable disks there follow its live migration.
    public var sharedStorage: [SharedStorage] = []

    /// Where other nodes send live migrations: reported in heartbeats.
    public struct MigrationTarget: Sendable, Equatable {
        /// The libvirt URI other hosts' libvirtd reach this host's with.
        public var uri: String
        /// The host the migration stream comes to (empty: libvirt's choice).
        public var address: String

        /// A target.
        public init(uri: String, address: String) {
            self.uri = uri
            self.address = address
        }
    }

    /// What joining needs.
    public struct JoinSettings: Sendable {
        /// The control plane's API address.
        public var controlPlane: HostPort
        /// The single-use join token.
        public var token: String
        /// How the control plane's CA is recognised.
        public var trust: CATrust
        /// The address the control plane reaches this node's API at (nil: the source address
        /// of the route to the control plane, with the API port).
        public var advertise: HostPort?

        /// Creates join settings.
        public init(controlPlane: HostPort, token: String, trust: CATrust, advertise: HostPort? = nil) {
            self.controlPlane = controlPlane
            self.token = token
            self.trust = trust
            self.advertise = advertise
        }
    }

    /// Creates a configuration.
    public init(
        listen: HostPort, metricsListen: HostPort? = nil, libvirtURI: String = "qemu:///system", layout: NodeLayout,
        nodeName: String = ProcessInfo.processInfo.hostName, telemetryInterval: Duration = .seconds(5),
        broker: BrokerConfiguration = BrokerConfiguration(), policy: LifecyclePolicy = LifecyclePolicy(),
        shutdownGrace: Duration = .seconds(10), memoryTrim: Duration? = .seconds(30)
    ) {
        self.memoryTrim = memoryTrim
        self.listen = listen
        self.metricsListen = metricsListen
        self.libvirtURI = libvirtURI
        self.layout = layout
        self.nodeName = nodeName
        self.telemetryInterval = telemetryInterval
        self.broker = broker
        self.policy = policy
        self.shutdownGrace = shutdownGrace
    }
}

/// One node daemon: the VM manager (events, agents, telemetry), the gRPC API and the HTTP
/// endpoint, as services for one `ServiceGroup` (listed in dependency order: the group stops the
/// API first, then the manager). VMs keep running when it stops; the next start adopts them.
public struct NodeServer: Sendable {
    /// The VMs and their agents.
    public let manager: VMManager
    /// The node's operations.
    public let controller: VMController
    /// The settings it was built from.
    public let configuration: NodeConfiguration
    /// The gRPC API.
    public let grpc: GRPCService
    /// `/health` and `/metrics`, when configured.
    public let http: HTTPService?
    /// Heartbeats to the control plane, when the node joined one.
    public let heartbeat: NodeHeartbeat?
    private let trimmer: MemoryTrimmer?

    /// Every service, in dependency order.
    public var services: [any Service] {
        var services: [any Service] = [manager]
        if let trimmer { services.append(trimmer) }
        if let http { services.append(http) }
        services.append(grpc)
        if let heartbeat { services.append(heartbeat) }
        return services
    }

    /// Connects to libvirt (or uses `hypervisor`), adopts the VMs and prepares the services;
    /// nothing is served until the services run.
    public static func build(
        _ configuration: NodeConfiguration, hypervisor: (any Hypervisor)? = nil, logger: Logger
    ) async throws(LQXError) -> NodeServer {
        let backend: any Hypervisor
        if let hypervisor {
            backend = hypervisor
        } else {
            backend = try LibvirtHypervisor(uri: configuration.libvirtURI, layout: configuration.layout, logger: logger)
        }
        let manager = VMManager(
            hypervisor: backend, broker: configuration.broker, telemetryInterval: configuration.telemetryInterval,
            policy: configuration.policy, logger: logger)
        try await manager.adopt()
        var configuration = configuration
        let membership = try await resolveMembership(&configuration, hypervisor: backend, logger: logger)
        let controller = VMController(manager: manager, sharedStorage: configuration.sharedStorage)
        let epochs = try EpochLedger(path: configuration.layout.stateDirectory + "/epochs.log")
        var interceptors: [any ServerInterceptor] = []
        if case .mutualTLS = configuration.security { interceptors.append(ClusterPeerInterceptor()) }
        let grpc = GRPCService(
            address: configuration.listen, security: configuration.security,
            services: [NodeService(controller: controller, nodeName: configuration.nodeName, epochs: epochs)],
            interceptors: interceptors, gracePeriod: configuration.shutdownGrace)
        let heartbeat = membership.map { membership in
            NodeHeartbeat(
                membership: membership, files: MembershipFiles(stateDirectory: configuration.layout.stateDirectory),
                manager: manager, migration: configuration.migration, sharedStorage: configuration.sharedStorage,
                logger: logger)
        }
        let http = configuration.metricsListen.map { address in
            let nodeName = configuration.nodeName
            return HTTPService(
                address: address,
                routes: [
                    "/health": { health(manager: manager, nodeName: nodeName) },
                    "/metrics": {
                        let vms = (try? await manager.hypervisor.list()) ?? []
                        return .init(
                            contentType: "text/plain; version=0.0.4; charset=utf-8",
                            body: MetricsExposition.node(name: nodeName, manager: manager, vms: vms))
                    },
                ], logger: logger)
        }
        return NodeServer(
            manager: manager, controller: controller, configuration: configuration, grpc: grpc, http: http,
            heartbeat: heartbeat, trimmer: configuration.memoryTrim.map { MemoryTrimmer(every: $0, logger: logger) })
    }

    /// The node's cluster membership: the one saved in its state directory, else a new one
    /// from `configuration.join`, else nil (standalone). A member's API is mutual TLS unless
    /// `insecureListen`.
    static func resolveMembership(
        _ configuration: inout NodeConfiguration, hypervisor: any Hypervisor, logger: Logger
    ) async throws(LQXError) -> ClusterMembership? {
        let files = MembershipFiles(stateDirectory: configuration.layout.stateDirectory)
        var membership = try files.load()
        if let existing = membership, configuration.join != nil {
            logger.notice(
                "this node joined the cluster before; the join token is not used",
                metadata: ["node.id": "\(existing.nodeID)", "control_plane": "\(existing.controlPlane)"])
        } else if let join = configuration.join {
            guard configuration.listen.port != 0 else {
                throw LQXError(.invalidSpec, "joining needs a fixed --listen port (the control plane dials it)")
            }
            let advertise: HostPort
            if let given = join.advertise {
                advertise = given
            } else if let source = ClusterJoin.sourceAddress(toward: join.controlPlane) {
                advertise = HostPort(host: source, port: configuration.listen.port)
            } else {
                throw LQXError(
                    .invalidSpec, "cannot detect the address toward \(join.controlPlane): give --advertise-address")
            }
            let details = JoinDetails(
                name: configuration.nodeName, advertise: advertise, inventory: HostInventory.detect(),
                hypervisor: try await hypervisor.hypervisorInfo())
            let joined = try await ClusterJoin.join(
                controlPlane: join.controlPlane, token: join.token, trust: join.trust, details: details, files: files)
            logger.notice(
                "joined the cluster",
                metadata: [
                    "node.id": "\(joined.nodeID)", "control_plane": "\(joined.controlPlane)",
                    "advertise": "\(advertise)",
                ])
            membership = joined
        }
        if membership != nil, !configuration.insecureListen {
            configuration.security = .mutualTLS(
                certificateChain: files.certificate, privateKey: files.key, clientCA: files.ca)
        }
        return membership
    }

    /// Where the API and the HTTP endpoint listen, once they do.
    public func boundAddresses() async throws(LQXError) -> (api: HostPort, metrics: HostPort?) {
        let api = try await grpc.boundAddress()
        return (api, try await http?.boundAddress())
    }

    static func health(manager: VMManager, nodeName: String) -> HTTPService.Reply {
        guard manager.hypervisor.isAlive else {
            return .init(status: .serviceUnavailable, body: "libvirt connection lost\n")
        }
        let counts = manager.counts()
        return .init(
            contentType: "application/json",
            body:
                "{\"status\":\"ok\",\"node\":\(jsonString(nodeName)),\"vms\":\(counts.vms),\"running\":\(counts.running),\"agents_connected\":\(counts.agentsConnected)}\n"
        )
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            default:
                if scalar.value < 0x20 {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
