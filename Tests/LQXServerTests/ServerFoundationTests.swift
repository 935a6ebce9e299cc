import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel
import LQXServer
import LQXTestSupport
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// A one-method service without generated code: `test.Echo/Say` returns its bytes reversed.
struct EchoService: RegistrableRPCService {
    static let say = MethodDescriptor(fullyQualifiedService: "test.Echo", method: "Say")
    /// Calls that said "hang": they wait until cancelled.
    static let hanging = Atomic<Int>(0)

    struct Bytes: MessageSerializer, MessageDeserializer {
        func serialize<Output: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Output { Output(message) }
        func deserialize<Input: GRPCContiguousBytes>(_ input: Input) throws -> [UInt8] {
            input.withUnsafeBytes { Array($0) }
        }
    }

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        router.registerHandler(forMethod: Self.say, deserializer: Bytes(), serializer: Bytes()) { request, _ in
            var message: [UInt8] = []
            for try await part in request.messages { message = part }
            if message == Array("hang".utf8) {
                EchoService.hanging.add(1, ordering: .relaxed)
                try await Task.sleep(for: .seconds(3600))
            }
            if message == Array("fail".utf8) {
                throw RPCErrorMapping.rpcError(LQXError(.failedPrecondition, "asked to fail"))
            }
            return StreamingServerResponse(single: ServerResponse(message: message.reversed()))
        }
    }
}

/// Keys and certificates made by openssl for one test: a CA, a server certificate for 127.0.0.1
/// and a client certificate, all signed by the CA, and a second CA that signed nothing here.
struct TestPKI {
    let directory: String
    var ca: String { directory + "/ca.pem" }
    var otherCA: String { directory + "/other-ca.pem" }
    var serverCert: String { directory + "/server.pem" }
    var serverKey: String { directory + "/server.key" }
    var clientCert: String { directory + "/client.pem" }
    var clientKey: String { directory + "/client.key" }
    var strangerCert: String { directory + "/stranger.pem" }
    var strangerKey: String { directory + "/stranger.key" }

    init() throws {
        directory = NSTemporaryDirectory() + "lqx-pki-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let ext = directory + "/san.ext"
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\n".write(toFile: ext, atomically: true, encoding: .utf8)
        func openssl(_ arguments: [String]) throws {
            let result = try Command.run("/usr/bin/openssl", arguments)
            guard result.status == 0 else { throw LQXError(.io, "openssl \(arguments[0]): \(result.stderr)") }
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for (name, subject) in [("ca", "/CN=lqx-test-ca"), ("other-ca", "/CN=lqx-other-ca")] {
            try openssl(
                ["req", "-x509"] + ec + [
                    "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).pem", "-subj", subject,
                    "-days", "2",
                ])
        }
        for (name, ca) in [("server", "ca"), ("client", "ca"), ("stranger", "other-ca")] {
            try openssl(
                ["req"] + ec + [
                    "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).csr", "-subj", "/CN=\(name)",
                ])
            try openssl([
                "x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", "\(directory)/\(ca).pem", "-CAkey",
                "\(directory)/\(ca).key", "-CAcreateserial", "-out", "\(directory)/\(name).pem", "-days", "2",
                "-extfile", ext,
            ])
        }
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

@Suite("server foundation: gRPC service, TLS, tokens, HTTP")
struct ServerFoundationTests {
    static var logger: Logger {
        var logger = Logger(label: "server-test")
        logger.logLevel = .critical
        return logger
    }

    /// Runs `service` in a ServiceGroup for `body`, then shuts it down gracefully.
    static func serving<T: Sendable>(
        _ services: [any Service], _ body: () async throws -> T
    ) async throws -> T {
        let group = ServiceGroup(configuration: .init(services: services, logger: logger))
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            defer { tasks.cancelAll() }
            let result = try await body()
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return result
        }
    }

    /// Calls Say over a client with `security`, with an optional bearer token.
    static func say(
        _ text: String, port: Int, security: HTTP2ClientTransport.Posix.TransportSecurity = .plaintext,
        token: String? = nil
    ) async throws -> String {
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: security)
        return try await withGRPCClient(transport: transport) { client in
            var metadata: Metadata = [:]
            if let token { metadata.addString("Bearer \(token)", forKey: "authorization") }
            var options = CallOptions.defaults
            options.waitForReady = false
            options.timeout = .seconds(5)
            return try await client.unary(
                request: ClientRequest(message: Array(text.utf8), metadata: metadata), descriptor: EchoService.say,
                serializer: EchoService.Bytes(), deserializer: EchoService.Bytes(), options: options
            ) { response in String(decoding: try response.message, as: UTF8.self) }
        }
    }

    static func code(_ error: any Error) -> (RPCError.Code, String?)? {
        guard let error = error as? RPCError else { return nil }
        var code: String?
        for entry in error.metadata where entry.key == RPCErrorMapping.errorCodeKey {
            if case .string(let value) = entry.value { code = value }
        }
        return (error.code, code)
    }

    @Test("plaintext: serves, reports its bound port, maps LQXError to status + stable code, stops gracefully")
    func plaintext() async throws {
        let service = GRPCService(address: HostPort(host: "127.0.0.1", port: 0), services: [EchoService()])
        try await Self.serving([service]) {
            let bound = try await service.boundAddress()
            #expect(bound.port > 0)
            #expect(try await Self.say("abc", port: bound.port) == "cba")
            do {
                _ = try await Self.say("fail", port: bound.port)
                Issue.record("the failing call answered")
            } catch {
                #expect(Self.code(error)! == (.failedPrecondition, "failed_precondition"))
            }
        }
    }

    @Test("graceful stop with a call open: it is cancelled after the grace period, the service ends cleanly")
    func gracefulStopWithOpenCall() async throws {
        let service = GRPCService(
            address: HostPort(host: "127.0.0.1", port: 0), services: [EchoService()], gracePeriod: .milliseconds(300))
        let group = ServiceGroup(configuration: .init(services: [service], logger: Self.logger))
        let running = Task { try await group.run() }
        let port = try await service.boundAddress().port
        let before = EchoService.hanging.load(ordering: .relaxed)
        let call = Task { try await Self.say("hang", port: port) }
        let deadline = ContinuousClock.now + .seconds(5)
        while EchoService.hanging.load(ordering: .relaxed) == before, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        try #require(EchoService.hanging.load(ordering: .relaxed) > before, "the call never reached the handler")
        await group.triggerGracefulShutdown()
        // Before the fix the service threw CancellationError here, and lqx-node exited 1 on SIGTERM.
        await #expect(throws: Never.self) { try await running.value }
        await #expect(throws: (any Error).self) { try await call.value }
    }

    @Test("TLS: a client trusting the CA gets through; plaintext and an untrusting client do not")
    func tls() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let service = GRPCService(
            address: HostPort(host: "127.0.0.1", port: 0),
            security: .tls(certificateChain: pki.serverCert, privateKey: pki.serverKey), services: [EchoService()])
        try await Self.serving([service]) {
            let port = try await service.boundAddress().port
            let trusting = HTTP2ClientTransport.Posix.TransportSecurity.tls {
                $0.trustRoots = .certificates([.file(path: pki.ca, format: .pem)])
            }
            #expect(try await Self.say("tls", port: port, security: trusting) == "slt")
            await #expect(throws: (any Error).self) { _ = try await Self.say("x", port: port) }
            let untrusting = HTTP2ClientTransport.Posix.TransportSecurity.tls {
                $0.trustRoots = .certificates([.file(path: pki.otherCA, format: .pem)])
            }
            await #expect(throws: (any Error).self) { _ = try await Self.say("x", port: port, security: untrusting) }
        }
    }

    @Test("mutual TLS: only a client certificate signed by the client CA is let in")
    func mutualTLS() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let service = GRPCService(
            address: HostPort(host: "127.0.0.1", port: 0),
            security: .mutualTLS(certificateChain: pki.serverCert, privateKey: pki.serverKey, clientCA: pki.ca),
            services: [EchoService()])
        try await Self.serving([service]) {
            let port = try await service.boundAddress().port
            func client(_ cert: String, _ key: String) -> HTTP2ClientTransport.Posix.TransportSecurity {
                .mTLS(certificateChain: [.file(path: cert, format: .pem)], privateKey: .file(path: key, format: .pem)) {
                    $0.trustRoots = .certificates([.file(path: pki.ca, format: .pem)])
                }
            }
            #expect(try await Self.say("m", port: port, security: client(pki.clientCert, pki.clientKey)) == "m")
            let anonymous = HTTP2ClientTransport.Posix.TransportSecurity.tls {
                $0.trustRoots = .certificates([.file(path: pki.ca, format: .pem)])
            }
            await #expect(throws: (any Error).self) { _ = try await Self.say("x", port: port, security: anonymous) }
            await #expect(throws: (any Error).self) {
                _ = try await Self.say("x", port: port, security: client(pki.strangerCert, pki.strangerKey))
            }
        }
    }

    @Test("bearer tokens: missing, malformed and rejected tokens are unauthenticated; a valid one passes")
    func bearerTokens() async throws {
        let interceptor = BearerTokenInterceptor { token, method in
            if token == "revoked" { throw LQXError(.permissionDenied, "token revoked") }
            return token == "s3cret" && method == EchoService.say
        }
        let service = GRPCService(
            address: HostPort(host: "127.0.0.1", port: 0), services: [EchoService()], interceptors: [interceptor])
        try await Self.serving([service]) {
            let port = try await service.boundAddress().port
            #expect(try await Self.say("ok", port: port, token: "s3cret") == "ko")
            for token in [nil, "", "wrong"] as [String?] {
                do {
                    _ = try await Self.say("x", port: port, token: token)
                    Issue.record("token \(String(describing: token)) was accepted")
                } catch {
                    #expect(Self.code(error)! == (.unauthenticated, "unauthenticated"))
                }
            }
            do {
                _ = try await Self.say("x", port: port, token: "revoked")
                Issue.record("a revoked token was accepted")
            } catch {
                #expect(Self.code(error)! == (.permissionDenied, "permission_denied"))
            }
        }
    }

    @Test("HTTP: routes answer, others 404; the bound port is reported; a taken port fails clearly")
    func http() async throws {
        let service = HTTPService(
            address: HostPort(host: "127.0.0.1", port: 0),
            routes: ["/health": { .init(contentType: "application/json", body: "{\"status\":\"ok\"}\n") }],
            logger: Self.logger)
        try await Self.serving([service]) {
            let bound = try await service.boundAddress()
            let health = try await httpGet(bound.description, "/health")
            #expect(health.status == 200 && health.body == "{\"status\":\"ok\"}\n")
            #expect(try await httpGet(bound.description, "/nope").status == 404)
            let taken = HTTPService(address: bound, routes: [:], logger: Self.logger)
            let group = ServiceGroup(configuration: .init(services: [taken], logger: Self.logger))
            async let run: Void = group.run()
            do {
                _ = try await taken.boundAddress()
                Issue.record("a second server bound a taken port")
            } catch let error as LQXError {
                #expect(error.code == .io && error.message.contains(bound.description))
            }
            _ = try? await run
        }
    }
}
