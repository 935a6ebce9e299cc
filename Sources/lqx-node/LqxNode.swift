import ArgumentParser
import Foundation
import HostBroker
import LQXModel
import Logging
import NodeCore
import NodeDaemon
import ServiceLifecycle

@main
struct LqxNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lqx-node",
        abstract: "limiquantix node daemon: runs this host's VMs under libvirt and reaches the agent inside each.",
        discussion: """
            Serves the node gRPC API (proto/limiquantix/node/v1/node.proto) on --listen and, with \
            --metrics-listen, HTTP GET /health and /metrics (Prometheus: host, daemon and every VM's \
            in-guest metrics, labels node and vm). VMs are libvirt domains carrying the node's \
            metadata; their disks, console logs and specs live under --state-dir, their agent \
            sockets under --run-dir. Stopping the daemon (SIGTERM, SIGINT) leaves the VMs running; \
            the next start adopts them and reconnects their agents.

            Standalone (never joined), the API has no authentication: bind it to localhost or a \
            management network only (docs/threat-model.md). With --control-plane and --join-token \
            the node joins a cluster once: it makes a key, gets a certificate from the cluster CA \
            (kept in --state-dir/cluster; later starts reuse it and need no token), heartbeats to \
            the control plane, and serves its API with mutual TLS, admitting only the control \
            plane and operators holding a cluster certificate (plaintext only with --insecure-listen).
            """,
        version: LimiquantixVersion.current)

    @Option(name: .customLong("listen"), help: "gRPC API address HOST:PORT (port 0: any free port).")
    var listen: String = "127.0.0.1:7443"

    @Option(name: .customLong("metrics-listen"), help: "HTTP /health and /metrics address HOST:PORT (default: off).")
    var metricsListen: String?

    @Option(name: .customLong("libvirt-uri"), help: "libvirt connection URI.")
    var libvirtURI: String = "qemu:///system"

    @Option(name: .customLong("state-dir"), help: "VM disks, console logs and specs.")
    var stateDir: String = "/var/lib/limiquantix/node"

    @Option(name: .customLong("run-dir"), help: "Agent sockets (must be reachable by libvirt's QEMU user).")
    var runDir: String = "/run/limiquantix/node"

    @Option(name: .customLong("node-name"), help: "Name in metrics and node info (default: the host name).")
    var nodeName: String?

    @Option(name: .customLong("telemetry-interval"), help: "Seconds between in-guest telemetry samples per VM.")
    var telemetryInterval: Double = 5

    @Option(
        name: .customLong("memory-trim"),
        help: ArgumentHelp(
            "Seconds between giving back code pages the daemon no longer runs (default 30; 0 never).",
            discussion: "They stay in the page cache and come back by a minor fault when used again."))
    var memoryTrim: Double = 30

    @Option(
        name: .customLong("agent-reply-timeout"),
        help: ArgumentHelp(
            "Seconds an in-guest operation waits for the agent's reply, and for each piece of a transfer.",
            discussion: "Then it fails with code timeout and the agent's stream is reset (a guest cannot hold it)."))
    var agentReplyTimeout: Double = 30

    @Option(name: .customLong("control-plane"), help: "The control plane's API HOST:PORT to join (with --join-token).")
    var controlPlane: String?

    @Option(name: .customLong("join-token"), help: "A single-use token from `lqx node join-token create`.")
    var joinToken: String?

    @Option(
        name: .customLong("ca-sha256"),
        help: "The cluster CA's SHA-256 (printed with the join token): joining checks it before sending the token.")
    var caSHA256: String?

    @Option(name: .customLong("control-plane-ca"), help: "The cluster CA's PEM file, instead of --ca-sha256.")
    var controlPlaneCA: String?

    @Option(
        name: .customLong("advertise-address"),
        help:
            "Where the control plane reaches this node's API, HOST[:PORT] (default: the route's source address, the --listen port)."
    )
    var advertiseAddress: String?

    @Option(
        name: .customLong("migration-uri"),
        help: ArgumentHelp(
            "The libvirt URI other nodes' libvirtd reach this host's with, to live-migrate VMs here.",
            discussion: """
                e.g. qemu+tls://host-b.example/system (libvirt's TLS or SSH transport between hosts, set up \
                as libvirt documents). Reported to the control plane, which then drains other nodes onto \
                this one by live migration; without it this node takes no live migrations (VMs come here \
                by stop and start).
                """))
    var migrationURI: String?

    @Option(
        name: .customLong("migration-address"),
        help: "Host or IP the migration stream comes to on this host (default: libvirt's choice, the host name).")
    var migrationAddress: String?

    @Option(
        name: .customLong("shared-storage"),
        help: ArgumentHelp(
            "A directory other hosts mount at the same path (NFS, a cluster file system); repeatable, at most 16.",
            discussion: """
                Its id is read from DIR/.limiquantix-storage (written by the first node that declares it). \
                Reported to the control plane: a VM whose writable disks lie there live-migrates to nodes \
                declaring the same storage at the same path.
                """, valueName: "DIR"))
    var sharedStorage: [String] = []

    @Flag(
        name: .customLong("insecure-listen"),
        help: "A joined node serves its API without TLS (development only: anyone who reaches it controls the node).")
    var insecureListen = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level \(logLevel)")
        }
        guard memoryTrim >= 0, memoryTrim.isFinite else { throw ValidationError("--memory-trim takes seconds >= 0") }
        guard telemetryInterval >= 0.1, telemetryInterval <= 3600 else {
            throw ValidationError("--telemetry-interval takes 0.1 to 3600 seconds")
        }
        guard agentReplyTimeout >= 0.1, agentReplyTimeout <= 86400 else {
            throw ValidationError("--agent-reply-timeout takes 0.1 to 86400 seconds")
        }
        let api: HostPort, metrics: HostPort?
        do {
            api = try HostPort(parsing: listen, for: .listen, field: "--listen")
            metrics = try metricsListen.map { text throws(LQXError) in
                try HostPort(parsing: text, for: .listen, field: "--metrics-listen")
            }
        } catch {
            throw ValidationError(error.message)
        }
        var join: NodeConfiguration.JoinSettings?
        if let joinToken {
            guard let controlPlane else { throw ValidationError("--join-token needs --control-plane HOST:PORT") }
            let trust: CATrust
            switch (caSHA256, controlPlaneCA) {
            case (let pin?, nil): trust = .sha256(pin)
            case (nil, let file?): trust = .file(file)
            default:
                throw ValidationError(
                    "joining needs exactly one of --ca-sha256 HEX (printed by `lqx node join-token create`) or --control-plane-ca FILE"
                )
            }
            do {
                let target = try HostPort(parsing: controlPlane, for: .connect, field: "--control-plane")
                // HOST:PORT, or a bare host (an IPv6 one without brackets) with the --listen port.
                let advertise = try advertiseAddress.map { text throws(LQXError) -> HostPort in
                    if let full = try? HostPort(parsing: text, for: .connect, field: "--advertise-address") {
                        return full
                    }
                    let host = text.contains(":") && !text.hasPrefix("[") ? "[\(text)]" : text
                    return try HostPort(parsing: "\(host):\(api.port)", for: .connect, field: "--advertise-address")
                }
                join = .init(controlPlane: target, token: joinToken, trust: trust, advertise: advertise)
            } catch {
                throw ValidationError(error.message)
            }
        } else if controlPlane != nil || caSHA256 != nil || controlPlaneCA != nil {
            throw ValidationError(
                "--control-plane, --ca-sha256 and --control-plane-ca are for joining: give --join-token too")
        }
        for directory in [stateDir, runDir] where !directory.hasPrefix("/") {
            throw ValidationError("\(directory): --state-dir and --run-dir must be absolute paths")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "lqx-node")
        // The run directory is traversed by libvirt's QEMU user to bind each VM's agent socket.
        for directory in [stateDir, runDir] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            chmod(directory, 0o755)
        }
        var configuration = NodeConfiguration(
            listen: api, metricsListen: metrics, libvirtURI: libvirtURI,
            layout: NodeLayout(stateDirectory: stateDir, runDirectory: runDir),
            nodeName: nodeName ?? ProcessInfo.processInfo.hostName,
            telemetryInterval: .milliseconds(Int64(telemetryInterval * 1000)),
            broker: BrokerConfiguration(operationTimeout: .milliseconds(Int64(agentReplyTimeout * 1000))),
            memoryTrim: memoryTrim > 0 ? .milliseconds(Int64(memoryTrim * 1000)) : nil)
        configuration.join = join
        configuration.insecureListen = insecureListen
        if let migrationURI {
            guard migrationURI.contains("://") else {
                throw ValidationError("--migration-uri \(migrationURI): a libvirt URI (SCHEME://HOST/system)")
            }
            configuration.migration = .init(uri: migrationURI, address: migrationAddress ?? "")
        } else if migrationAddress != nil {
            throw ValidationError("--migration-address needs --migration-uri")
        }
        guard sharedStorage.count <= SharedStorage.maximumPerNode else {
            throw ValidationError("--shared-storage: at most \(SharedStorage.maximumPerNode) directories")
        }
        for directory in sharedStorage {
            do {
                let storage = try SharedStorage.declare(directory)
                if !configuration.sharedStorage.contains(storage) { configuration.sharedStorage.append(storage) }
            } catch {
                throw ValidationError(error.message)
            }
        }
        let node: NodeServer
        do {
            node = try await NodeServer.build(configuration, logger: logger)
        } catch {
            logger.critical("cannot start: \(error.fullMessage)")
            throw ExitCode(1)
        }
        // SIGTERM and SIGINT stop the API first (open calls get 10 s), then the agent brokers; the
        // VMs keep running.
        let group = ServiceGroup(
            configuration: .init(services: node.services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            do {
                let bound = try await node.boundAddresses()
                // One line on stdout for scripts and tests: where the API and metrics ended up.
                FileHandle.standardOutput.write(
                    Data("lqx-node listening grpc=\(bound.api) metrics=\(bound.metrics?.description ?? "off")\n".utf8))
            } catch {
                logger.critical("cannot start: \(error)")
                await group.triggerGracefulShutdown()
                throw ExitCode(1)
            }
            try await tasks.waitForAll()
        }
        logger.info("node daemon stopped; VMs keep running")
    }
}
