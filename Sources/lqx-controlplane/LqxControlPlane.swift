import ArgumentParser
import ControlPlane
import ControlPlaneServer
import Foundation
import LQXModel
import LQXServer
import Logging
import ServiceLifecycle

@main
struct LqxControlPlane: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lqx-controlplane",
        abstract: "limiquantix control plane: the cluster API, its store, node join and heartbeats.",
        discussion: """
            Serves the cluster API (proto/limiquantix/compute/v1/compute.proto) over gRPC with TLS on \
            --listen; clients authenticate with bearer tokens. Nodes join on the same address with a \
            single-use join token (lqx node join-token create) and then heartbeat to --node-listen \
            with mutual TLS, presenting the certificate the cluster CA gave them. On first start it \
            creates the cluster CA under --state-dir/pki (keys 0600) and an admin token in \
            --state-dir/admin.token (0600), and prints where. State lives in --db: SQLite by default \
            (nothing to set up), or PostgreSQL (postgres://USER[:PASSWORD]@HOST[:PORT]/DB, or \
            postgres://USER@/DB?host=/run/postgresql for a socket).
            """,
        version: LimiquantixVersion.current)

    @Option(name: .customLong("listen"), help: "API address HOST:PORT (gRPC, TLS; port 0: any free port).")
    var listen: String = "0.0.0.0:8443"

    @Option(
        name: .customLong("node-listen"),
        help: "Node address HOST:PORT for heartbeats (gRPC, mutual TLS; default: the API host, port 8444).")
    var nodeListen: String?

    @Option(
        name: .customLong("http-listen"),
        help: ArgumentHelp(
            "HTTPS HOST:PORT for the JSON API, /health and /metrics (default: the API host, port 8445; \"off\": none).",
            discussion:
                "Every unary call is POST /limiquantix.compute.v1.<Service>/<Method> with a JSON body and Authorization: Bearer TOKEN (the Connect protocol's unary JSON form)."
        ))
    var httpListen: String?

    @Option(name: .customLong("metrics-listen"), help: "Plain HTTP /health and /metrics HOST:PORT (default: off).")
    var metricsListen: String?

    @Option(name: .customLong("db"), help: "sqlite:PATH or postgres://… (default: sqlite:<state-dir>/controlplane.db).")
    var db: String?

    @Option(name: .customLong("state-dir"), help: "CA, certificates, the first admin token, the default database.")
    var stateDir: String = "/var/lib/limiquantix/controlplane"

    @Option(
        name: .customLong("server-name"),
        help: ArgumentHelp(
            "A host name or address clients and nodes use to reach this control plane (repeatable).",
            discussion: "Added to its certificate beside localhost, the loopback addresses and the host name."))
    var serverNames: [String] = []

    @Option(name: .customLong("heartbeat-interval"), help: "Seconds between a node's heartbeats.")
    var heartbeatInterval: Double = 5

    @Option(
        name: .customLong("heartbeat-grace"),
        help: "Seconds without a heartbeat before a node is NOT_READY (default: 3 intervals).")
    var heartbeatGrace: Double?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level \(logLevel)")
        }
        guard heartbeatInterval >= 0.1, heartbeatInterval <= 300 else {
            throw ValidationError("--heartbeat-interval takes 0.1 to 300 seconds")
        }
        let grace = heartbeatGrace ?? heartbeatInterval * 3
        guard grace > heartbeatInterval, grace <= 3600 else {
            throw ValidationError("--heartbeat-grace must be longer than --heartbeat-interval and at most 3600 s")
        }
        guard stateDir.hasPrefix("/") else { throw ValidationError("--state-dir must be an absolute path") }
        let configuration: ControlPlaneConfiguration
        do {
            let api = try HostPort(parsing: listen, for: .listen, field: "--listen")
            let nodes =
                try nodeListen.map { text throws(LQXError) in
                    try HostPort(parsing: text, for: .listen, field: "--node-listen")
                } ?? HostPort(host: api.host, port: api.port == 0 ? 0 : 8444)
            let https: HostPort? =
                httpListen == "off"
                ? nil
                : try httpListen.map { text throws(LQXError) in
                    try HostPort(parsing: text, for: .listen, field: "--http-listen")
                } ?? HostPort(host: api.host, port: api.port == 0 ? 0 : 8445)
            let metrics = try metricsListen.map { text throws(LQXError) in
                try HostPort(parsing: text, for: .listen, field: "--metrics-listen")
            }
            let store =
                try db.map { text throws(LQXError) in try StoreLocation(parsing: text) }
                ?? .default(stateDirectory: stateDir)
            configuration = ControlPlaneConfiguration(
                listen: api, nodeListen: nodes, httpListen: https, metricsListen: metrics, store: store,
                stateDirectory: stateDir,
                serverNames: serverNames, heartbeatInterval: .milliseconds(Int64(heartbeatInterval * 1000)),
                heartbeatGrace: .milliseconds(Int64(grace * 1000)))
        } catch {
            throw ValidationError(error.message)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "lqx-controlplane")
        let daemon: ControlPlaneDaemon
        do {
            try FileManager.default.createDirectory(
                atPath: stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            daemon = try ControlPlaneDaemon.build(configuration, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(1)
        }
        let group = ServiceGroup(
            configuration: .init(
                services: daemon.services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            do {
                let started = try await daemon.started()
                let paths = daemon.paths
                var lines = [
                    "lqx-controlplane listening grpc=\(started.api) nodes=\(started.nodes) https=\(started.json?.description ?? "off") metrics=\(started.metrics?.description ?? "off") db=\(configuration.store)",
                    "cluster CA: \(paths.caCertificate) (sha256 \(daemon.ca.fingerprint))",
                ]
                if started.wroteAdminToken {
                    lines.append("admin token (first start, 0600): \(paths.adminToken)")
                }
                // Lines on stdout for operators, scripts and tests.
                FileHandle.standardOutput.write(Data((lines.joined(separator: "\n") + "\n").utf8))
            } catch {
                logger.critical("cannot start: \(error)")
                await group.triggerGracefulShutdown()
                throw ExitCode(1)
            }
            try await tasks.waitForAll()
        }
        logger.info("control plane stopped")
    }
}
