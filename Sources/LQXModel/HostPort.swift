/// A TCP address as operators write it: `HOST:PORT`, `[IPV6]:PORT`, or `:PORT` for a listener on
/// every interface. The one parser of addresses in limiquantix (listeners and clients alike).
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    /// A host name or IP address (IPv6 without brackets); `0.0.0.0` for "every interface".
    public var host: String
    /// 0 (a listener only: any free port) to 65535.
    public var port: Int

    /// What the address is for, which decides what is allowed.
    public enum Use: Sendable {
        /// Something to bind: the host may be empty (every interface) and port 0 means any free port.
        case listen
        /// Something to connect to: host and a port 1…65535 are required.
        case connect
    }

    /// Creates an address without checking it.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `text`; `field` names the flag or field in the error (e.g. `--listen`).
    public init(parsing text: String, for use: Use, field: String) throws(LQXError) {
        let expected =
            use == .listen ? "HOST:PORT, [IPV6]:PORT or :PORT (port 0: any free port)" : "HOST:PORT or [IPV6]:PORT"
        func invalid(_ why: String) -> LQXError {
            LQXError(.invalidSpec, "\(field) \(text.debugDescription): \(why); expected \(expected)")
        }
        let host: Substring, port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw invalid("no closing ]") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw invalid("no port after ]") }
            guard host.contains(":") else { throw invalid("brackets are for IPv6 addresses") }
            port = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw invalid("no port") }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
            guard !host.contains(":") else { throw invalid("an IPv6 address needs brackets") }
        }
        guard !port.isEmpty, port.allSatisfy({ $0.isASCII && $0.isNumber }), let number = Int(port) else {
            throw invalid("the port is not a number")
        }
        switch use {
        case .listen:
            guard (0...65535).contains(number) else { throw invalid("the port must be 0…65535") }
        case .connect:
            guard (1...65535).contains(number) else { throw invalid("the port must be 1…65535") }
            guard !host.isEmpty else { throw invalid("the host is missing") }
        }
        guard host.utf8.count <= 253,
            host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-:%_".contains($0)) })
        else { throw invalid("the host is not a host name or IP address") }
        self.host = host.isEmpty ? "0.0.0.0" : String(host)
        self.port = number
    }

    /// Whether the host is written as an IPv6 address.
    public var isIPv6: Bool { host.contains(":") }

    /// Whether the host is a dotted IPv4 address.
    public var isIPv4: Bool {
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets.allSatisfy { !$0.isEmpty && $0.count <= 3 && UInt8($0) != nil }
    }

    /// `host:port`, with brackets around an IPv6 host.
    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
