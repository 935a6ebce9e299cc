import LQXModel
import NodeDaemon
import Testing

@Suite("the address a node advertises when it joins")
struct SourceAddressTests {
    @Test("toward a loopback control plane: the loopback address, never 0.0.0.0")
    func loopback() {
        #expect(ClusterJoin.sourceAddress(toward: HostPort(host: "127.0.0.1", port: 7443)) == "127.0.0.1")
        #expect(ClusterJoin.sourceAddress(toward: HostPort(host: "127.0.0.2", port: 7443)) == "127.0.0.1")
        // IPv6 loopback exists wherever the kernel has IPv6 enabled on lo.
        if let v6 = ClusterJoin.sourceAddress(toward: HostPort(host: "::1", port: 7443)) { #expect(v6 == "::1") }
        #expect(ClusterJoin.sourceAddress(toward: HostPort(host: "not-an-ip", port: 7443)) == nil)
    }
}
