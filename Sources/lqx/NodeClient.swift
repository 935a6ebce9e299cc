#if NodeClient
    import AgentProtocol
    import Foundation
    import GRPCCore
    import GRPCNIOTransportHTTP2Posix
    import LQXModel
    import LQXServer
    import NodeAPI
    import SwiftProtobuf

    typealias NodeStub = Limiquantix_Node_V1_Node.Client<HTTP2ClientTransport.Posix>

    /// A node daemon to call and how: plaintext (a standalone node, on localhost by default) or
    /// mutual TLS with an operator certificate of the cluster CA (a joined node).
    struct NodeTarget: Sendable {
        var address: String
        var security: ClientSecurity = .plaintext

        /// The files `lqx node operator-cert create` writes into a credentials directory.
        static let credentialFiles = (certificate: "operator.crt", key: "operator.key", ca: "ca.crt")

        /// `address` reached with the operator credentials in `directory` (nil: plaintext).
        init(address: String, credentials directory: String?) throws {
            self.address = address
            guard let directory else { return }
            let files = Self.credentialFiles
            let paths = [files.certificate, files.key, files.ca].map { "\(directory)/\($0)" }
            for path in paths where !FileManager.default.isReadableFile(atPath: path) {
                throw CLIError(
                    "--node-credentials \(directory): \(path) is missing or unreadable (lqx node operator-cert create --out \(directory) writes it)"
                )
            }
            security = .mutualTLS(certificateChain: paths[0], privateKey: paths[1], caFile: paths[2])
        }
    }

    /// A gRPC connection to one node daemon for the length of a command.
    enum NodeConnection {
        /// Calls fail at once when the node cannot be reached (instead of waiting for it).
        static let callOptions = ClientTransport.failFast

        static func with<T: Sendable>(
            _ target: NodeTarget, _ body: @Sendable @escaping (NodeStub) async throws -> T
        ) async throws -> T {
            let address = try parse(target.address)
            let transport: HTTP2ClientTransport.Posix
            do {
                transport = try ClientTransport.make(address, security: target.security)
            } catch {
                throw CLIError(error.fullMessage)
            }
            do {
                return try await withGRPCClient(transport: transport) { client in
                    try await body(NodeStub(wrapping: client))
                }
            } catch let error as RPCError {
                throw NodeCallError(error, node: target.address, plaintext: target.security == .plaintext)
            }
        }

        static func parse(_ address: String) throws -> HostPort {
            do {
                return try HostPort(parsing: address, for: .connect, field: "--node")
            } catch {
                throw CLIError(error.message)
            }
        }
    }

    /// A failed node call, printed as the node's message and its stable code.
    struct NodeCallError: Error, CustomStringConvertible {
        let error: RPCError
        let node: String
        /// Whether the call went without TLS (a joined node then refuses the connection).
        var plaintext = true
        init(_ error: RPCError, node: String, plaintext: Bool) {
            self.error = error
            self.node = node
            self.plaintext = plaintext
        }

        var description: String {
            var code: String?
            for entry in error.metadata where entry.key == "lqx-error-code" {
                if case .string(let value) = entry.value { code = value }
            }
            // Without the node's own code, the call did not reach the node's service.
            if error.code == .unavailable, code == nil {
                let hint =
                    plaintext
                    ? " (a node that joined a cluster serves mutual TLS only: give --node-credentials DIR, made by `lqx node operator-cert create`)"
                    : ""
                return "cannot reach the node at \(node): \(error.message)\(hint)"
            }
            return "\(error.message) [\(code ?? "\(error.code)")]"
        }
    }

    /// JSON of a node API message: protobuf's JSON mapping with the schema's snake_case names and
    /// 64-bit integers as numbers; fields at their zero value (false, 0, "") are left out.
    func nodeJSON(_ message: some SwiftProtobuf.Message) throws -> String {
        var options = JSONEncodingOptions()
        options.alwaysPrintInt64sAsNumbers = true
        options.preserveProtoFieldNames = true
        return try message.jsonString(options: options)
    }
#endif
