#if NodeClient
    import AgentProtocol
    import Foundation
    import GRPCCore
    import GRPCNIOTransportHTTP2Posix
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
            var text = Substring(address)
            var host: Substring
            if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
                host = text[text.index(after: text.startIndex)..<close]
                text = text[text.index(after: close)...]
                guard text.hasPrefix(":") else { throw CLIError("--node takes HOST:PORT, got \(address)") }
                text = text.dropFirst()
            } else {
                guard let colon = text.lastIndex(of: ":") else {
                    throw CLIError("--node takes HOST:PORT, got \(address)")
                }
                host = text[..<colon]
                text = text[text.index(after: colon)...]
            }
            guard let port = Int(text), (1...65535).contains(port), !host.isEmpty else {
                throw CLIError("--node takes HOST:PORT, got \(address)")
            }
            return (String(host), port)
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
            if error.code == .unavailable, !error.message.hasPrefix("guest:") {
                return "cannot reach the node at \(node): \(error.message)"
            }
            var code = "\(error.code)"
            for entry in error.metadata where entry.key == "lqx-error-code" {
                if case .string(let value) = entry.value { code = value }
            }
            return "\(error.message) [\(code)]"
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
