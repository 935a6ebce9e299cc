import ControlPlaneAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel
import LQXServer
import LQXTestSupport
import Testing

/// The `authorization` metadata for a bearer token.
func bearer(_ token: String) -> Metadata { ["authorization": "Bearer \(token)"] }

/// A running control plane and what it printed.
struct ControlPlaneProcess {
    let daemon: Daemon
    let api: HostPort
    let nodes: HostPort
    let metrics: String
    /// The HTTPS listener (JSON API) as HOST:PORT.
    let https: String
    let fingerprint: String
    let stateDirectory: String
    var caFile: String { stateDirectory + "/pki/ca.crt" }

    /// Starts one in `root`; `ports` fixes the API and node ports (a restart must keep them: joined
    /// nodes heartbeat to the node port they were given).
    static func start(_ root: String, ports: (api: Int, nodes: Int)? = nil) async throws -> ControlPlaneProcess {
        let state = root + "/controlplane"
        let daemon = try Daemon(
            Command.binary("lqx-controlplane"),
            [
                "--listen", "127.0.0.1:\(ports?.api ?? 0)", "--node-listen", "127.0.0.1:\(ports?.nodes ?? 0)",
                "--metrics-listen", "127.0.0.1:0",
                "--http-listen", "127.0.0.1:0",
                // A grace of 4 s: TCG guests booting beside the other libvirt suites can delay a
                // heartbeat past 1.5 s, and a NOT_READY node refuses in-guest calls.
                "--state-dir", state, "--heartbeat-interval", "0.2", "--heartbeat-grace", "4",
            ], logPath: root + "/controlplane.log")
        guard let first = await daemon.line(), let grpc = Daemon.field("grpc", in: first),
            let nodes = Daemon.field("nodes", in: first), let metrics = Daemon.field("metrics", in: first),
            let https = Daemon.field("https", in: first),
            let second = await daemon.line(), let sha = second.split(separator: " ").last
        else {
            daemon.kill()
            throw LQXError(.io, "lqx-controlplane did not start: \(daemon.log)")
        }
        return ControlPlaneProcess(
            daemon: daemon, api: try HostPort(parsing: grpc, for: .connect, field: "grpc"),
            nodes: try HostPort(parsing: nodes, for: .connect, field: "nodes"), metrics: metrics, https: https,
            fingerprint: String(sha.dropLast()), stateDirectory: state)
    }

    /// Runs `body` with a client over TLS trusting the cluster CA.
    func client<T: Sendable>(_ body: @Sendable @escaping (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T)
        async throws -> T
    {
        try await ClientTransport.with(api, security: .tls(caFile: caFile), body)
    }

    /// Runs `body` with the event service client.
    func events<T: Sendable>(
        _ body:
            @Sendable @escaping (Limiquantix_Compute_V1_EventService.Client<HTTP2ClientTransport.Posix>)
            async throws -> T
    ) async throws -> T {
        try await client { try await body(.init(wrapping: $0)) }
    }

    /// Runs `body` with the token service client.
    func tokens<T: Sendable>(
        _ body:
            @Sendable @escaping (Limiquantix_Compute_V1_TokenService.Client<HTTP2ClientTransport.Posix>)
            async throws -> T
    ) async throws -> T {
        try await client { try await body(.init(wrapping: $0)) }
    }

    /// Runs `body` with the node service client over TLS trusting the cluster CA.
    func nodeService<T: Sendable>(
        _ body:
            @Sendable @escaping (Limiquantix_Compute_V1_NodeService.Client<HTTP2ClientTransport.Posix>)
            async throws -> T
    ) async throws -> T {
        try await ClientTransport.with(api, security: .tls(caFile: caFile)) { client in
            try await body(Limiquantix_Compute_V1_NodeService.Client(wrapping: client))
        }
    }

    var adminToken: String {
        get throws {
            try String(contentsOfFile: stateDirectory + "/admin.token", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }
}

/// A fresh directory with a control plane started in it (on fixed ports when given).
func startedControlPlane(ports: (api: Int, nodes: Int)? = nil) async throws -> (String, ControlPlaneProcess) {
    let root = NSTemporaryDirectory() + "lqx-cp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    // libvirt's QEMU user reaches the nodes' run directories through it.
    chmod(root, 0o755)
    return (root, try await ControlPlaneProcess.start(root, ports: ports))
}

/// Stops the control plane and removes its directory.
func tearDown(_ root: String, _ cp: ControlPlaneProcess) {
    cp.daemon.kill()
    try? FileManager.default.removeItem(atPath: root)
}

/// An `lqx-node` with a fixed port, on libvirt's test driver unless `libvirt` says otherwise;
/// nil token: no join flags.
func startNode(
    _ root: String, _ name: String, port: Int, controlPlane: ControlPlaneProcess, token: String?,
    pin: String? = nil, libvirt: String = "test:///default", extra: [String] = []
) throws -> Daemon {
    var arguments =
        [
            "--listen", "127.0.0.1:\(port)", "--libvirt-uri", libvirt, "--state-dir", root + "/\(name)/state",
            "--run-dir", root + "/\(name)/run", "--node-name", name, "--memory-trim", "0",
        ] + extra
    if let token {
        arguments += [
            "--control-plane", controlPlane.api.description, "--join-token", token, "--ca-sha256",
            pin ?? controlPlane.fingerprint,
        ]
    }
    return try Daemon(Command.binary("lqx-node"), arguments, logPath: root + "/\(name).log")
}
