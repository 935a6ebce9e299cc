import ControlPlaneAPI
import Foundation
import GRPCCore
import LQXModel
import LQXServer
import NodeCore

/// What a node keeps after joining a cluster: its id, where the control plane is, and (beside
/// it in the same directory) its key, its certificate and the cluster CA. Later starts reuse it.
public struct ClusterMembership: Sendable, Codable, Equatable {
    /// The id the control plane gave this node.
    public var nodeID: String
    /// The control plane's API address (`HOST:PORT`), where the node joined.
    public var controlPlane: String
    /// The control plane's mutual-TLS node port.
    public var nodePort: Int
    /// How often to heartbeat, as the control plane asked (ms).
    public var heartbeatIntervalMs: Int

    /// Where heartbeats go: the control plane's host, its node port.
    public func heartbeatAddress() throws(LQXError) -> HostPort {
        let api = try HostPort(parsing: controlPlane, for: .connect, field: "control plane")
        return HostPort(host: api.host, port: nodePort)
    }
}

/// The files of a node's membership, in `<state-dir>/cluster/` (keys 0600).
public struct MembershipFiles: Sendable {
    /// The directory.
    public let directory: String
    /// `membership.json`.
    public var membership: String { directory + "/membership.json" }
    /// The node's key.
    public var key: String { directory + "/node.key" }
    /// The node's certificate chain (its certificate, then the CA).
    public var certificate: String { directory + "/node.crt" }
    /// The cluster CA.
    public var ca: String { directory + "/ca.crt" }

    /// The files under the node's state directory.
    public init(stateDirectory: String) {
        directory = stateDirectory + "/cluster"
    }

    /// The membership, or nil when this node never joined.
    public func load() throws(LQXError) -> ClusterMembership? {
        guard let text = try PKIFiles.read(membership) else { return nil }
        for path in [key, certificate, ca] where !FileManager.default.fileExists(atPath: path) {
            throw LQXError(.failedPrecondition, "\(membership) exists but \(path) does not: join again")
        }
        do {
            return try JSONDecoder().decode(ClusterMembership.self, from: Data(text.utf8))
        } catch {
            throw LQXError(.failedPrecondition, "\(membership) cannot be read", cause: error)
        }
    }

    /// Writes a new membership: key, certificate and CA first, the membership last (its
    /// presence means the rest is complete).
    func save(_ value: ClusterMembership, keyPEM: String, certificatePEM: String, caPEM: String) throws(LQXError) {
        try PKIFiles.write(keyPEM, to: key)
        try PKIFiles.write(certificatePEM + caPEM, to: certificate, mode: 0o644)
        try PKIFiles.write(caPEM, to: ca, mode: 0o644)
        let data: Data
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            data = try encoder.encode(value)
        } catch {
            throw LQXError(.internal, "cannot encode the membership", cause: error)
        }
        try PKIFiles.write(String(decoding: data, as: UTF8.self) + "\n", to: membership)
    }
}

/// How a joining node knows it talks to the right control plane before it sends its token.
public enum CATrust: Sendable, Equatable {
    /// The CA certificate's SHA-256 (hex, what `lqx node join-token create` prints).
    case sha256(String)
    /// The CA certificate in a PEM file copied from the control plane.
    case file(String)
}

/// What a node tells the control plane when it joins.
public struct JoinDetails: Sendable {
    /// The node's name.
    public var name: String
    /// Where the control plane reaches the node API.
    public var advertise: HostPort
    /// The host's hardware.
    public var inventory: HostInventory
    /// The hypervisor.
    public var hypervisor: HypervisorInfo

    /// Creates details.
    public init(name: String, advertise: HostPort, inventory: HostInventory, hypervisor: HypervisorInfo) {
        self.name = name
        self.advertise = advertise
        self.inventory = inventory
        self.hypervisor = hypervisor
    }

    var capacity: Limiquantix_Compute_V1_Resources {
        .with {
            $0.cpus = UInt32(clamping: inventory.cpu.logical)
            $0.memoryMib = inventory.memory.totalBytes / (1024 * 1024)
        }
    }
}

/// Joining a cluster with a single-use token.
public enum ClusterJoin {
    /// Fetches the cluster CA and checks it against `trust`, then joins over TLS trusting only
    /// that CA: sends a certificate request for a key made here (the key never leaves the node)
    /// and saves what comes back in `files`.
    public static func join(
        controlPlane: HostPort, token: String, trust: CATrust, details: JoinDetails, files: MembershipFiles
    ) async throws(LQXError) -> ClusterMembership {
        let caPEM = try await clusterCA(controlPlane, trust: trust)
        let own = try KeyAndRequest.generate(commonName: details.name)
        let request = Limiquantix_Compute_V1_JoinRequest.with {
            $0.joinToken = token
            $0.name = details.name
            $0.address = details.advertise.description
            $0.capacity = details.capacity
            $0.inventory = .with {
                $0.cpuModel = details.inventory.cpu.model
                $0.sockets = UInt32(clamping: details.inventory.cpu.sockets)
                $0.cores = UInt32(clamping: details.inventory.cpu.coresPerSocket)
                $0.threads = UInt32(clamping: details.inventory.cpu.threadsPerCore)
                $0.hypervisor = details.hypervisor.domainType
                $0.vsock = details.hypervisor.vhostVsock
                $0.uefi = details.hypervisor.uefi
            }
            $0.version = LimiquantixVersion.current
            $0.certificateRequest = Data(own.requestDER)
        }
        let response = try await ClientTransport.with(controlPlane, security: .tlsTrusting(caPEM: caPEM)) { client in
            try await Limiquantix_Compute_V1_NodeAgentService.Client(wrapping: client).join(
                request, options: ClientTransport.failFast)
        }
        let certificate = try PKIFiles.certificate(der: Array(response.certificate))
        guard ClusterIdentity(certificate: certificate) == .node(response.nodeID) else {
            throw LQXError(.internal, "the control plane's certificate does not name node \(response.nodeID)")
        }
        let membership = ClusterMembership(
            nodeID: response.nodeID, controlPlane: controlPlane.description, nodePort: Int(response.nodePort),
            heartbeatIntervalMs: Int(response.heartbeatIntervalMs))
        try files.save(membership, keyPEM: own.keyPEM, certificatePEM: try PKIFiles.pem(certificate), caPEM: caPEM)
        return membership
    }

    /// The cluster CA (PEM) as `trust` allows: read from its file, or fetched and compared.
    static func clusterCA(_ controlPlane: HostPort, trust: CATrust) async throws(LQXError) -> String {
        switch trust {
        case .file(let path):
            guard let pem = try PKIFiles.read(path) else { throw LQXError(.notFound, "\(path) does not exist") }
            _ = try PKIFiles.certificate(pem: pem)
            return pem
        case .sha256(let pin):
            let expected = pin.lowercased().replacingOccurrences(of: ":", with: "")
            guard expected.count == 64, expected.allSatisfy(\.isHexDigit) else {
                throw LQXError(.invalidSpec, "--ca-sha256 takes the 64 hex digits of the CA's SHA-256")
            }
            // Nothing secret is sent on this unverified connection; what comes back is trusted
            // only if its hash matches the pin.
            let ca = try await ClientTransport.with(controlPlane, security: .unverifiedTLS) { client in
                try await Limiquantix_Compute_V1_NodeAgentService.Client(wrapping: client).getClusterCA(
                    .init(), options: ClientTransport.failFast)
            }
            let certificate = try PKIFiles.certificate(der: Array(ca.certificate))
            let actual = PKIFiles.fingerprint(of: certificate)
            guard actual == expected else {
                throw LQXError(
                    .permissionDenied,
                    "the control plane at \(controlPlane) presents CA sha256 \(actual), not the \(expected) given: not joining"
                )
            }
            return try PKIFiles.pem(certificate)
        }
    }

    /// The local address the host would use to reach `peer` (the route's source address): the
    /// default management address to advertise.
    public static func sourceAddress(toward peer: HostPort) -> String? {
        // Every pointer stays inside the closure it was made for (an escaped one is undefined
        // behaviour: a release build advertised 0.0.0.0).
        func connect<Address>(_ fd: Int32, _ address: inout Address) -> Bool {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<Address>.size)) == 0
                }
            }
        }
        func localAddress<Address>(_ fd: Int32, _ address: inout Address) -> Bool {
            var length = socklen_t(MemoryLayout<Address>.size)
            return withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
            }
        }
        func text<Raw>(_ family: Int32, _ raw: inout Raw) -> String? {
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            let written = buffer.withUnsafeMutableBufferPointer { out in
                withUnsafePointer(to: &raw) { inet_ntop(family, $0, out.baseAddress, socklen_t(out.count)) != nil }
            }
            guard written else { return nil }
            return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        let family = peer.isIPv6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        if peer.isIPv6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(peer.port).bigEndian)
            guard inet_pton(AF_INET6, peer.host, &address.sin6_addr) == 1, connect(fd, &address) else { return nil }
            var local = sockaddr_in6()
            guard localAddress(fd, &local) else { return nil }
            return text(AF_INET6, &local.sin6_addr)
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(peer.port).bigEndian)
        guard inet_pton(AF_INET, peer.host, &address.sin_addr) == 1, connect(fd, &address) else { return nil }
        var local = sockaddr_in()
        guard localAddress(fd, &local) else { return nil }
        return text(AF_INET, &local.sin_addr)
    }
}
