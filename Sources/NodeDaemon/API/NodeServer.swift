import Foundation
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
    private let trimmer: MemoryTrimmer?

    /// Every service, in dependency order.
    public var services: [any Service] {
        var services: [any Service] = [manager]
        if let trimmer { services.append(trimmer) }
        if let http { services.append(http) }
        services.append(grpc)
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
        let controller = VMController(manager: manager)
        let grpc = GRPCService(
            address: configuration.listen,
            services: [NodeService(controller: controller, nodeName: configuration.nodeName)],
            gracePeriod: configuration.shutdownGrace)
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
            trimmer: configuration.memoryTrim.map { MemoryTrimmer(every: $0, logger: logger) })
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
