#if NodeClient
    import AgentProtocol
    import Foundation
    import GRPCCore
    import GRPCNIOTransportHTTP2Posix
    import LQXModel
    import NodeAPI
    import SwiftProtobuf

    typealias NodeStub = Limiquantix_Node_V1_Node.Client<HTTP2ClientTransport.Posix>

    /// A gRPC connection to one node daemon for the length of a command.
    enum NodeConnection {
        /// Calls fail at once when the node cannot be reached (instead of waiting for it).
        static let callOptions: CallOptions = {
            var options = CallOptions.defaults
            options.waitForReady = false
            return options
        }()

        static func with<T: Sendable>(
            _ address: String, _ body: @Sendable @escaping (NodeStub) async throws -> T
        ) async throws -> T {
            let (host, port) = try parse(address)
            let octets = host.split(separator: ".")
            let transport =
                if host.contains(":") {
                    try HTTP2ClientTransport.Posix(
                        target: .ipv6(address: host, port: port), transportSecurity: .plaintext)
                } else if octets.count == 4, octets.allSatisfy({ UInt8($0) != nil }) {
                    try HTTP2ClientTransport.Posix(
                        target: .ipv4(address: host, port: port), transportSecurity: .plaintext)
                } else {
                    try HTTP2ClientTransport.Posix(target: .dns(host: host, port: port), transportSecurity: .plaintext)
                }
            do {
                return try await withGRPCClient(transport: transport) { client in
                    try await body(NodeStub(wrapping: client))
                }
            } catch let error as RPCError {
                throw NodeCallError(error, node: address)
            }
        }

        static func parse(_ address: String) throws -> (String, Int) {
            do {
                let parsed = try HostPort(parsing: address, for: .connect, field: "--node")
                return (parsed.host, parsed.port)
            } catch {
                throw CLIError(error.message)
            }
        }
    }

    /// A failed node call, printed as the node's message and its stable code.
    struct NodeCallError: Error, CustomStringConvertible {
        let error: RPCError
        let node: String
        init(_ error: RPCError, node: String) {
            self.error = error
            self.node = node
        }

        var description: String {
            var code: String?
            for entry in error.metadata where entry.key == "lqx-error-code" {
                if case .string(let value) = entry.value { code = value }
            }
            // Without the node's own code, the call did not reach the node's service.
            if error.code == .unavailable, code == nil {
                return "cannot reach the node at \(node): \(error.message)"
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
