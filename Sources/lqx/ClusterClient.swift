#if NodeClient
    import ArgumentParser
    import ControlPlaneAPI
    import Foundation
    import GRPCCore
    import GRPCNIOTransportHTTP2Posix
    import LQXModel
    import LQXServer

    /// What `lqx login` writes to `~/.config/limiquantix/config` (0600): the control plane, the
    /// token and the cluster CA pinned at login.
    struct ClusterConfig: Codable, Equatable {
        var server: String
        var token: String
        var caPEM: String
        var caSHA256: String

        static var path: String {
            let environment = ProcessInfo.processInfo.environment
            let base =
                environment["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 }
                ?? (environment["HOME"] ?? NSHomeDirectory()) + "/.config"
            return base + "/limiquantix/config"
        }

        static func load() throws -> ClusterConfig? {
            guard let text = try PKIFiles.read(path) else { return nil }
            do {
                return try JSONDecoder().decode(ClusterConfig.self, from: Data(text.utf8))
            } catch {
                throw CLIError("\(path) cannot be read (\(error)); run lqx login again")
            }
        }

        func save() throws {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try PKIFiles.write(String(decoding: try encoder.encode(self), as: UTF8.self) + "\n", to: Self.path)
        }
    }

    extension ClusterOptions {
        /// The resolved endpoint.
        func endpoint() throws -> ClusterEndpoint {
            let environment = ProcessInfo.processInfo.environment
            let saved = try ClusterConfig.load()
            guard
                let server = server ?? environment["LQX_SERVER"].flatMap({ $0.isEmpty ? nil : $0 }) ?? saved?.server
            else {
                throw CLIError(
                    "no control plane: run `lqx login HOST:PORT --token T`, or give --server and --token (or use --node HOST:PORT for one node)"
                )
            }
            guard let token = token ?? environment["LQX_TOKEN"].flatMap({ $0.isEmpty ? nil : $0 }) ?? saved?.token
            else {
                throw CLIError("no token: give --token T or set LQX_TOKEN (or run lqx login)")
            }
            let security: ClientSecurity
            if let ca {
                security = .tls(caFile: ca)
            } else if let saved, saved.server == server || self.server == nil {
                security = .tlsTrusting(caPEM: saved.caPEM)
            } else {
                throw CLIError("no CA pinned for \(server): give --ca FILE or run lqx login \(server)")
            }
            // Several replicas: `--server A,B,C`, tried in that order.
            let addresses = try server.split(separator: ",").map { try ClusterEndpoint.address(String($0)) }
            guard let first = addresses.first else {
                throw CLIError("--server: give HOST:PORT (or several, comma-separated)")
            }
            var endpoint = ClusterEndpoint(address: first, token: token, security: security, project: project ?? "")
            endpoint.replicas = Array(addresses.dropFirst())
            return endpoint
        }
    }

    /// A control plane to call, with the token and how its certificate is checked.
    struct ClusterEndpoint: Sendable {
        var address: HostPort
        /// Other replicas of the same control plane, tried in order when one cannot be reached.
        var replicas: [HostPort] = []
        var token: String
        var security: ClientSecurity
        var project: String

        var metadata: Metadata { ["authorization": "Bearer \(token)"] }

        /// `HOST:PORT`, `https://HOST:PORT` or `https://HOST:PORT/`.
        static func address(_ text: String) throws -> HostPort {
            var rest = Substring(text)
            if rest.hasPrefix("https://") { rest = rest.dropFirst(8) }
            while rest.hasSuffix("/") { rest = rest.dropLast() }
            do {
                return try HostPort(parsing: String(rest), for: .connect, field: "--server")
            } catch {
                throw CLIError(error.message)
            }
        }

        /// Runs `body` with a client; failures print as the control plane's message and code.
        func with<T: Sendable>(_ body: @Sendable @escaping (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T)
            async throws -> T
        {
            let servers = [address] + replicas
            for (position, server) in servers.enumerated() {
                do {
                    return try await ClientTransport.with(server, security: security, body)
                } catch
                    where error.code == .unavailable && !error.message.contains("node ")
                    && position < servers.count - 1
                {
                    // This replica cannot be reached (down, or not yet listening): the next one.
                    // A call it took and never answered may then meet its own effect (a create:
                    // already_exists); reads and power operations are idempotent.
                    continue
                } catch {
                    throw ClusterCallError(error: error, server: server.description)
                }
            }
            throw ClusterCallError(error: LQXError(.unavailable, "no control plane to call"), server: "")
        }

        func vms<T: Sendable>(
            _ body:
                @Sendable @escaping (Limiquantix_Compute_V1_VMService.Client<HTTP2ClientTransport.Posix>)
                async throws -> T
        ) async throws -> T {
            try await with { try await body(.init(wrapping: $0)) }
        }

        func nodes<T: Sendable>(
            _ body:
                @Sendable @escaping (Limiquantix_Compute_V1_NodeService.Client<HTTP2ClientTransport.Posix>)
                async throws -> T
        ) async throws -> T {
            try await with { try await body(.init(wrapping: $0)) }
        }

        var ref: @Sendable (String) -> Limiquantix_Compute_V1_VMRef {
            let project = self.project
            return { name in
                .with {
                    $0.project = project
                    $0.name = name
                }
            }
        }
    }

    /// A failed cluster call: the control plane's message and its stable code.
    struct ClusterCallError: Error, CustomStringConvertible {
        let error: LQXError
        let server: String

        var description: String {
            if error.code == .unavailable, !error.message.contains("node ") {
                return "cannot reach the control plane at \(server): \(error.fullMessage)"
            }
            return "\(error.fullMessage) [\(error.code)]"
        }
    }

    /// `lqx login HOST:PORT --token T`: pins the cluster CA after showing its fingerprint,
    /// checks the token, and saves both.
    struct Login: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Save a control plane, its CA and a token for later commands.",
            discussion: """
                Fetches the cluster CA from the control plane and prints its SHA-256. With --ca-sha256 \
                (printed by lqx-controlplane at its first start and by `lqx node join-token create`) \
                it must match; otherwise lqx asks before trusting it (refused when stdin is not a \
                terminal). The token is checked with one call; the file is written 0600.
                """)
        @Argument(help: "Control plane HOST:PORT or https://HOST:PORT.") var server: String
        @OptionGroup var options: ClusterOptions
        @Option(name: .customLong("ca-sha256"), help: "Expected SHA-256 of the cluster CA (hex).") var caSHA256: String?

        func validate() throws {
            if options.token == nil { throw ValidationError("give the API token: lqx login HOST:PORT --token T") }
        }

        func run() async throws {
            let token = options.token ?? "", ca = options.ca
            try await runReportingErrors {
                let address = try ClusterEndpoint.address(server)
                let pem: String
                if let ca {
                    guard let text = try PKIFiles.read(ca) else { throw CLIError("\(ca) does not exist") }
                    pem = text
                } else {
                    let fetched = try await ClientTransport.with(address, security: .unverifiedTLS) { client in
                        try await Limiquantix_Compute_V1_NodeAgentService.Client(wrapping: client).getClusterCA(
                            .init(), options: ClientTransport.failFast)
                    }
                    pem = try PKIFiles.pem(try PKIFiles.certificate(der: Array(fetched.certificate)))
                }
                let fingerprint = PKIFiles.fingerprint(of: try PKIFiles.certificate(pem: pem))
                print("cluster CA sha256 \(fingerprint)")
                if let expected = caSHA256?.lowercased().replacingOccurrences(of: ":", with: "") {
                    guard expected == fingerprint else {
                        throw CLIError("the control plane's CA is \(fingerprint), not \(expected): not saved")
                    }
                } else if ca == nil {
                    guard isatty(0) == 1 else {
                        throw CLIError("stdin is not a terminal: give --ca-sha256 HEX (or --ca FILE) to trust this CA")
                    }
                    FileHandle.standardError.write(Data("trust this CA? [y/N] ".utf8))
                    guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
                        throw CLIError("not trusted: nothing saved")
                    }
                }
                let endpoint = ClusterEndpoint(
                    address: address, token: token, security: .tlsTrusting(caPEM: pem), project: "")
                let metadata = endpoint.metadata
                let projects = try await endpoint.with { client in
                    try await Limiquantix_Compute_V1_ProjectService.Client(wrapping: client).listProjects(
                        .init(), metadata: metadata, options: ClientTransport.failFast)
                }
                try ClusterConfig(server: address.description, token: token, caPEM: pem, caSHA256: fingerprint).save()
                print(
                    "saved \(ClusterConfig.path): \(address), \(projects.projects.count) project(s) visible to this token"
                )
            }
        }
    }
#endif
