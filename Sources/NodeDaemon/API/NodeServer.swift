import CLQXSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import HostBroker
import Logging
import NIOCore
import NIOPosix

/// Settings of one node daemon.
public struct NodeConfiguration: Sendable {
    /// gRPC API address (host, port); port 0 picks a free port.
    public var listen: (host: String, port: Int)
    /// HTTP /health and /metrics; nil: not served.
    public var metricsListen: (host: String, port: Int)?
    public var libvirtURI: String
    public var layout: NodeLayout
    /// The node's name in metrics and node info (default: the host name).
    public var nodeName: String
    public var telemetryInterval: Duration
    public var broker: BrokerConfiguration
    /// How often code pages the daemon no longer touches are given back (nil: never). Startup
    /// code (argument parsing, gRPC and libvirt set-up) is most of a fresh daemon's resident set;
    /// what it still runs comes back from the page cache by minor faults.
    public var memoryTrim: Duration?

    public init(
        listen: (host: String, port: Int), metricsListen: (host: String, port: Int)? = nil,
        libvirtURI: String = "qemu:///system", layout: NodeLayout, nodeName: String = ProcessInfo.processInfo.hostName,
        telemetryInterval: Duration = .seconds(5), broker: BrokerConfiguration = BrokerConfiguration(),
        memoryTrim: Duration? = .seconds(30)
    ) {
        self.memoryTrim = memoryTrim
        self.listen = listen
        self.metricsListen = metricsListen
        self.libvirtURI = libvirtURI
        self.layout = layout
        self.nodeName = nodeName
        self.telemetryInterval = telemetryInterval
        self.broker = broker
    }

    /// Parses `HOST:PORT`, `[V6]:PORT` or `:PORT` (all interfaces).
    public static func parseAddress(_ text: String) throws(NodeError) -> (host: String, port: Int) {
        let host: Substring, port: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw NodeError(.invalidSpec, "address \(text): expected [HOST]:PORT") }
            port = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw NodeError(.invalidSpec, "address \(text): expected HOST:PORT")
            }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        guard let number = Int(port), (0...65535).contains(number) else {
            throw NodeError(.invalidSpec, "address \(text): port must be 0…65535")
        }
        return (host.isEmpty ? "0.0.0.0" : String(host), number)
    }
}

/// One running node daemon: the VM manager (events, agents, telemetry), the gRPC API and the
/// HTTP endpoint. VMs keep running when it stops; the next start adopts them.
public final class NodeServer: Sendable {
    public let manager: VMManager
    public let configuration: NodeConfiguration
    let grpc: GRPCServer<HTTP2ServerTransport.Posix>
    let http: HTTPEndpoint?
    let serving: Task<Void, any Error>
    let logger: Logger
    /// The gRPC API's bound address, as `host:port`.
    public let apiAddress: String
    /// The HTTP endpoint's bound address, as `host:port`.
    public let metricsAddress: String?

    private init(
        manager: VMManager, configuration: NodeConfiguration, grpc: GRPCServer<HTTP2ServerTransport.Posix>,
        http: HTTPEndpoint?, serving: Task<Void, any Error>, logger: Logger, apiAddress: String,
        metricsAddress: String?
    ) {
        self.manager = manager
        self.configuration = configuration
        self.grpc = grpc
        self.http = http
        self.serving = serving
        self.logger = logger
        self.apiAddress = apiAddress
        self.metricsAddress = metricsAddress
    }

    /// Connects to libvirt, adopts the VMs and starts serving.
    public static func start(_ configuration: NodeConfiguration, logger: Logger) async throws -> NodeServer {
        let hypervisor = try LibvirtHypervisor(
            uri: configuration.libvirtURI, layout: configuration.layout, logger: logger)
        let manager = VMManager(
            hypervisor: hypervisor, broker: configuration.broker, telemetryInterval: configuration.telemetryInterval,
            logger: logger)
        try await manager.start()
        let service = NodeService(manager: manager, nodeName: configuration.nodeName)
        let address: GRPCNIOTransportCore.SocketAddress =
            configuration.listen.host.contains(":")
            ? .ipv6(host: configuration.listen.host, port: configuration.listen.port)
            : .ipv4(host: configuration.listen.host, port: configuration.listen.port)
        let grpc = GRPCServer(
            transport: .http2NIOPosix(address: address, transportSecurity: .plaintext), services: [service])
        let trim = configuration.memoryTrim
        // Serving ends the task (and with it the memory trimming).
        let serving = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await grpc.serve() }
                if let trim {
                    group.addTask {
                        while !Task.isCancelled {
                            try await Task.sleep(for: trim)
                            let released = try await NIOThreadPool.singleton.runIfActive {
                                lqx_release_clean_mappings()
                            }
                            logger.trace("released idle memory", metadata: ["kilobytes": "\(released)"])
                        }
                    }
                }
                try await group.next()
                group.cancelAll()
            }
        }
        let bound: String
        do {
            guard let listening = try await grpc.listeningAddress else {
                throw NodeError(
                    .io, "the gRPC server did not bind \(configuration.listen.host):\(configuration.listen.port)")
            }
            bound = Self.describe(listening)
        } catch {
            serving.cancel()
            manager.shutdown()
            throw NodeError(
                .io, "cannot listen on \(configuration.listen.host):\(configuration.listen.port): \(error)")
        }
        var http: HTTPEndpoint?
        var metricsAddress: String?
        if let listen = configuration.metricsListen {
            let nodeName = configuration.nodeName
            do {
                let endpoint = try await HTTPEndpoint.start(host: listen.host, port: listen.port) { path in
                    await Self.respond(path: path, manager: manager, nodeName: nodeName)
                }
                http = endpoint
                metricsAddress = endpoint.localAddress.map { "\($0.ipAddress ?? listen.host):\($0.port ?? 0)" }
            } catch {
                grpc.beginGracefulShutdown()
                serving.cancel()
                manager.shutdown()
                throw NodeError(.io, "cannot listen on \(listen.host):\(listen.port) for metrics: \(error)")
            }
        }
        logger.info(
            "node daemon serving",
            metadata: [
                "grpc": "\(bound)", "metrics": "\(metricsAddress ?? "off")", "libvirt": "\(configuration.libvirtURI)",
            ])
        return NodeServer(
            manager: manager, configuration: configuration, grpc: grpc, http: http, serving: serving, logger: logger,
            apiAddress: bound, metricsAddress: metricsAddress)
    }

    static func describe(_ address: GRPCNIOTransportCore.SocketAddress) -> String {
        if let v4 = address.ipv4 { return "\(v4.host):\(v4.port)" }
        if let v6 = address.ipv6 { return "[\(v6.host)]:\(v6.port)" }
        return "\(address)"
    }

    /// Waits until the server stops (after `shutdown()`, or a failure).
    public func wait() async throws { try await serving.value }

    /// Stops serving and the agent brokers; the VMs keep running. Calls still open get
    /// `gracePeriod` to finish (an exec stream may run for hours), then are cancelled.
    public func shutdown(gracePeriod: Duration = .seconds(10)) async {
        grpc.beginGracefulShutdown()
        let serving = self.serving
        let deadline = Task {
            try await Task.sleep(for: gracePeriod)
            serving.cancel()
        }
        _ = try? await serving.value
        deadline.cancel()
        await http?.close()
        manager.shutdown()
        logger.info("node daemon stopped")
    }

    static func respond(path: String, manager: VMManager, nodeName: String) async -> HTTPEndpoint.Response {
        switch path {
        case "/health":
            guard manager.hypervisor.connection.isAlive else {
                return .init(status: .serviceUnavailable, body: "libvirt connection lost\n")
            }
            let counts = manager.counts()
            return .init(
                contentType: "application/json",
                body:
                    "{\"status\":\"ok\",\"node\":\(jsonString(nodeName)),\"vms\":\(counts.vms),\"running\":\(counts.running),\"agents_connected\":\(counts.agentsConnected)}\n"
            )
        case "/metrics":
            let vms = (try? await manager.hypervisor.list()) ?? []
            return .init(
                contentType: "text/plain; version=0.0.4; charset=utf-8",
                body: MetricsExposition.node(name: nodeName, manager: manager, vms: vms))
        default:
            return .init(status: .notFound, body: "not found; try /health or /metrics\n")
        }
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
