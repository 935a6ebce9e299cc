import AgentProtocol

/// How the host reaches one agent.
public enum AgentAddress: Sendable, Equatable, CustomStringConvertible {
    /// A unix socket: QEMU/libvirt's end of a virtio-serial channel, or an agent's `--listen unix:`.
    case unix(path: String)
    /// AF_VSOCK to a guest CID and port.
    case vsock(cid: UInt32, port: UInt32)
    /// Hybrid vsock (Firecracker, Cloud Hypervisor): a unix socket on which the host writes
    /// `CONNECT <port>\n` and the VMM answers `OK <host-port>\n`.
    case hybridVsock(path: String, port: UInt32)

    /// Parses `unix:PATH`, `vsock:CID:PORT` or `hvsock:PATH:PORT`.
    public init(parsing text: String) throws(AgentError) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw AgentError(.invalidArgument, "unix: needs a socket path") }
            self = .unix(path: path)
        } else if text.hasPrefix("vsock:") {
            let parts = text.dropFirst(6).split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let cid = UInt32(parts[0]), let port = UInt32(parts[1]) else {
                throw AgentError(.invalidArgument, "vsock address must be vsock:CID:PORT, got \(text)")
            }
            self = .vsock(cid: cid, port: port)
        } else if text.hasPrefix("hvsock:") {
            let rest = text.dropFirst(7)
            guard let colon = rest.lastIndex(of: ":"), let port = UInt32(rest[rest.index(after: colon)...]),
                colon > rest.startIndex
            else {
                throw AgentError(.invalidArgument, "hybrid vsock address must be hvsock:PATH:PORT, got \(text)")
            }
            self = .hybridVsock(path: String(rest[..<colon]), port: port)
        } else {
            throw AgentError(
                .invalidArgument, "unknown agent address \(text); use unix:PATH, vsock:CID:PORT or hvsock:PATH:PORT")
        }
    }

    /// The address in the form `init(parsing:)` reads.
    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .vsock(let cid, let port): "vsock:\(cid):\(port)"
        case .hybridVsock(let path, let port): "hvsock:\(path):\(port)"
        }
    }
}
