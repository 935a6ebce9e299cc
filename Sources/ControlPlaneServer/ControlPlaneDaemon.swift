import ControlPlane
import Foundation
import GRPCCore
import LQXModel
import LQXServer
import Logging
import ServiceLifecycle

/// Settings of one control plane.
public struct ControlPlaneConfiguration: Sendable {
    /// The API (gRPC, TLS with the control plane's certificate, bearer tokens); port 0: any.
    public var listen: HostPort
    /// The node port (gRPC, mutual TLS: nodes present their cluster certificate); port 0: any.
    public var nodeListen: HostPort
    /// HTTPS: the JSON form of every unary call (POST), `/health` and `/metrics`; nil: not served.
    public var httpListen: HostPort?
    /// Plain HTTP `/health` and `/metrics`; nil: not served.
    public var metricsListen: HostPort?
    /// Where the cluster's state lives.
    public var store: StoreLocation
    /// CA, certificates and the first admin token.
    public var stateDirectory: String
    /// Host names and addresses clients and nodes reach the control plane by, beyond
    /// `localhost`, the loopback addresses, the host name and the listen address.
    public var serverNames: [String]
    /// How often nodes heartbeat.
    public var heartbeatInterval: Duration
    /// How long a node may miss heartbeats before it is NOT_READY.
    public var heartbeatGrace: Duration
    /// How long open calls may run after shutdown began.
    public var shutdownGrace: Duration

    /// Creates a configuration.
    public init(
        listen: HostPort, nodeListen: HostPort, httpListen: HostPort? = nil, metricsListen: HostPort? = nil,
        store: StoreLocation,
        stateDirectory: String, serverNames: [String] = [], heartbeatInterval: Duration = .seconds(5),
        heartbeatGrace: Duration = .seconds(15), shutdownGrace: Duration = .seconds(10)
    ) {
        self.listen = listen
        self.nodeListen = nodeListen
        self.httpListen = httpListen
        self.metricsListen = metricsListen
        self.store = store
        self.stateDirectory = stateDirectory
        self.serverNames = serverNames
        self.heartbeatInterval = heartbeatInterval
        self.heartbeatGrace = heartbeatGrace
        self.shutdownGrace = shutdownGrace
    }
}

/// Where a control plane keeps its PKI and first admin token (under its state directory).
public struct ControlPlanePaths: Sendable {
    /// The state directory.
    public let stateDirectory: String
    /// The cluster CA certificate (PEM), what clients pin.
    public var caCertificate: String { stateDirectory + "/pki/ca.crt" }
    /// The cluster CA key (0600).
    public var caKey: String { stateDirectory + "/pki/ca.key" }
    /// The control plane's certificate chain (its certificate, then the CA).
    public var certificate: String { stateDirectory + "/pki/controlplane.crt" }
    /// The control plane's key (0600).
    public var key: String { stateDirectory + "/pki/controlplane.key" }
    /// The first admin token (0600), written once on first start.
    public var adminToken: String { stateDirectory + "/admin.token" }
}

/// One control plane: the store, the cluster core, the API and node listeners and the
/// housekeeping loop, as services for one `ServiceGroup` in dependency order.
public struct ControlPlaneDaemon: Sendable {
    /// The cluster core.
    public let cluster: Cluster
    /// The store.
    public let store: any Store
    /// The cluster CA.
    public let ca: ClusterCA
    /// Where its files are.
    public let paths: ControlPlanePaths
    /// The API listener.
    public let api: GRPCService
    /// The node listener.
    public let nodeAPI: GRPCService
    /// `/health` and `/metrics`, when configured.
    public let http: HTTPService?
    /// The HTTPS listener with the JSON API, when configured.
    public let https: HTTPService?
    let gateway: JSONGateway?
    let housekeeping: Housekeeping
    /// Drives the nodes until they match the VMs' specs.
    public let reconciler: Reconciler
    let telemetry: TelemetryCollector

    /// Every service, in dependency order.
    public var services: [any Service] {
        var services: [any Service] = [store, housekeeping, reconciler, telemetry]
        if let http { services.append(http) }
        services.append(nodeAPI)
        services.append(api)
        if let gateway, let https {
            services.append(gateway)
            services.append(https)
        }
        return services
    }

    /// What a started control plane tells its operator.
    public struct Started: Sendable {
        /// Where the API listens.
        public var api: HostPort
        /// Where nodes heartbeat.
        public var nodes: HostPort
        /// `/health` and `/metrics`, if served.
        public var metrics: HostPort?
        /// The JSON API over HTTPS, if served.
        public var json: HostPort?
        /// Whether this start wrote the first admin token (to `paths.adminToken`).
        public var wroteAdminToken: Bool
    }

    /// Opens the store, loads or creates the cluster CA and issues this start's server
    /// certificate; nothing is served until the services run.
    public static func build(_ configuration: ControlPlaneConfiguration, logger: Logger) throws(LQXError)
        -> ControlPlaneDaemon
    {
        let paths = ControlPlanePaths(stateDirectory: configuration.stateDirectory)
        let ca = try loadOrCreateCA(paths, logger: logger)
        try issueServerCertificate(ca, paths, names: serverNames(configuration))
        let store = try configuration.store.open(logger: logger)
        let cluster = Cluster(store: store, heartbeatGrace: configuration.heartbeatGrace, logger: logger)
        let nodePort = OneShot<Int>()
        let nodeFacing = ControlPlaneServer.NodeFacing(
            ca: ca, heartbeatInterval: configuration.heartbeatInterval, nodePort: nodePort)
        let nodeClient = ClientSecurity.mutualTLS(
            certificateChain: paths.certificate, privateKey: paths.key, caFile: paths.caCertificate)
        // One pool of node connections for the reconciler, the relays and the telemetry streams.
        let calls = NodeCalls(security: nodeClient)
        let telemetry = TelemetryCollector(cluster: cluster, nodes: calls, logger: logger)
        let services = ControlPlaneServer.services(cluster, nodes: nodeFacing, calls: calls, telemetry: telemetry)
        let nodeAPI = GRPCService(
            address: configuration.nodeListen,
            security: .mutualTLS(
                certificateChain: paths.certificate, privateKey: paths.key, clientCA: paths.caCertificate),
            services: services, gracePeriod: configuration.shutdownGrace)
        let housekeeping = Housekeeping(
            cluster: cluster, paths: paths, nodeAPI: nodeAPI, nodePort: nodePort, logger: logger)
        let api = GRPCService(
            address: configuration.listen,
            security: .tls(certificateChain: paths.certificate, privateKey: paths.key),
            services: services, gracePeriod: configuration.shutdownGrace)
        let reconciler = Reconciler(
            cluster: cluster, driver: GRPCNodeDriver(nodes: calls), logger: logger)
        let routes: [String: @Sendable () async -> HTTPService.Reply] = [
            "/health": { await housekeeping.health() },
            "/metrics": {
                .init(
                    contentType: "text/plain; version=0.0.4; charset=utf-8",
                    body: await ControlPlaneMetrics.exposition(cluster, telemetry: telemetry))
            },
        ]
        let http = configuration.metricsListen.map { HTTPService(address: $0, routes: routes, logger: logger) }
        var gateway: JSONGateway?, https: HTTPService?
        if let address = configuration.httpListen {
            let json = JSONGateway(
                api: { () async throws(LQXError) -> HostPort in try await api.boundAddress() },
                security: .tls(caFile: paths.caCertificate), proxyKey: cluster.authFailures.proxyKey)
            https = try HTTPService(
                address: address, routes: routes,
                post: { await json.handle(path: $0, authorization: $1, body: $2, peer: $3) },
                certificateChain: paths.certificate, privateKey: paths.key, logger: logger)
            gateway = json
        }
        return ControlPlaneDaemon(
            cluster: cluster, store: store, ca: ca, paths: paths, api: api, nodeAPI: nodeAPI, http: http,
            https: https, gateway: gateway, housekeeping: housekeeping, reconciler: reconciler, telemetry: telemetry)
    }

    /// Returns once the cluster is bootstrapped and every listener is bound.
    public func started() async throws(LQXError) -> Started {
        let wrote = try await housekeeping.ready.wait()
        return Started(
            api: try await api.boundAddress(), nodes: try await nodeAPI.boundAddress(),
            metrics: try await http?.boundAddress(), json: try await https?.boundAddress(), wroteAdminToken: wrote)
    }

    static func serverNames(_ configuration: ControlPlaneConfiguration) -> [String] {
        var names = ["localhost", "127.0.0.1", "::1", ProcessInfo.processInfo.hostName]
        for host in [configuration.listen.host, configuration.nodeListen.host]
        where !["0.0.0.0", "::", ""].contains(host) {
            names.append(host)
        }
        names += configuration.serverNames
        var seen = Set<String>()
        return names.filter { seen.insert($0).inserted }
    }

    static func loadOrCreateCA(_ paths: ControlPlanePaths, logger: Logger) throws(LQXError) -> ClusterCA {
        if let certificate = try PKIFiles.read(paths.caCertificate) {
            guard let key = try PKIFiles.read(paths.caKey) else {
                throw LQXError(.failedPrecondition, "\(paths.caCertificate) exists but its key \(paths.caKey) does not")
            }
            return try ClusterCA(certificatePEM: certificate, keyPEM: key)
        }
        let ca = try ClusterCA.create()
        // The key first: a certificate without its key would stop every later start.
        try PKIFiles.write(ca.keyPEM, to: paths.caKey)
        try PKIFiles.write(ca.certificatePEM, to: paths.caCertificate, mode: 0o644)
        logger.notice(
            "created the cluster CA", metadata: ["path": "\(paths.caCertificate)", "sha256": "\(ca.fingerprint)"])
        return ca
    }

    /// A fresh key and certificate on every start: names and validity always current.
    static func issueServerCertificate(_ ca: ClusterCA, _ paths: ControlPlanePaths, names: [String]) throws(LQXError) {
        let own = try KeyAndRequest.generate(commonName: ClusterIdentity.controlPlane.description)
        let certificate = try ca.sign(requestDER: own.requestDER, for: .controlPlane, hosts: names)
        try PKIFiles.write(own.keyPEM, to: paths.key)
        try PKIFiles.write(try PKIFiles.pem(certificate) + ca.certificatePEM, to: paths.certificate, mode: 0o644)
    }
}

/// Bootstraps the cluster once the store runs (default project, first admin token), learns
/// the node port once bound, then judges heartbeats every second.
final class Housekeeping: Service, Sendable {
    let cluster: Cluster
    let paths: ControlPlanePaths
    let nodeAPI: GRPCService
    let nodePort: OneShot<Int>
    let logger: Logger
    /// Set after bootstrap: whether the first admin token was written.
    let ready = OneShot<Bool>()

    init(cluster: Cluster, paths: ControlPlanePaths, nodeAPI: GRPCService, nodePort: OneShot<Int>, logger: Logger) {
        self.cluster = cluster
        self.paths = paths
        self.nodeAPI = nodeAPI
        self.nodePort = nodePort
        self.logger = logger
    }

    func run() async throws {
        let started = Cluster.wallClock()
        do throws(LQXError) {
            try await cluster.bootstrap()
            var wrote = false
            if let token = try await cluster.bootstrapAdminToken() {
                try PKIFiles.write(token + "\n", to: paths.adminToken)
                wrote = true
            }
            ready.set(.success(wrote))
            nodePort.set(.success(try await nodeAPI.boundAddress().port))
        } catch {
            ready.set(.failure(error))
            nodePort.set(.failure(error))
            throw error
        }
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do throws(LQXError) {
                    try await self.cluster.checkHeartbeats(startedUnixMs: started)
                } catch {
                    self.logger.warning("heartbeat check failed: \(error.fullMessage)")
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    func health() async -> HTTPService.Reply {
        switch ready.current {
        case .success?: .init(contentType: "application/json", body: "{\"status\":\"ok\"}\n")
        case .failure(let error)?: .init(status: .serviceUnavailable, body: error.fullMessage + "\n")
        case nil: .init(status: .serviceUnavailable, body: "starting\n")
        }
    }
}
