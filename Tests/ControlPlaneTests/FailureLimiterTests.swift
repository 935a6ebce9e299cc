import LQXModel
import Testing

@testable import ControlPlane

@Suite("failed-authentication limits")
struct FailureLimiterTests {
    @Test("an address may fail `burst` times, then once per refill; other addresses are not affected")
    func burstAndRefill() throws {
        let clock = TestClock()
        let limiter = FailureLimiter(burst: 3, refillMilliseconds: 2_000, now: { clock.now })
        let peer = "ipv4:10.0.0.7:51000"
        for _ in 0..<3 {
            try limiter.check(peer)
            limiter.failed(peer)
        }
        let refused = #expect(throws: LQXError.self) { try limiter.check("ipv4:10.0.0.7:51001") }
        #expect(refused?.code == .resourceExhausted)
        #expect(refused?.message == "too many failed authentications from 10.0.0.7: try again in 2 s")
        try limiter.check("ipv4:10.0.0.8:51000")
        clock.advance(seconds: 1)
        #expect(throws: LQXError.self) { try limiter.check(peer) }
        clock.advance(seconds: 1)
        try limiter.check(peer)
        limiter.failed(peer)
        #expect(throws: LQXError.self) { try limiter.check(peer) }
        // Time refills up to the burst, not beyond.
        clock.advance(seconds: 3_600)
        for _ in 0..<3 {
            try limiter.check(peer)
            limiter.failed(peer)
        }
        #expect(throws: LQXError.self) { try limiter.check(peer) }
    }

    @Test("addresses: IPv4 without the port, IPv6 per /64, others as given")
    func keys() {
        #expect(FailureLimiter.key("ipv4:192.0.2.1:443") == "192.0.2.1")
        #expect(FailureLimiter.key("ipv6:[2001:db8:1:2::9]:443") == "2001:db8:1:2::/64")
        #expect(FailureLimiter.key("ipv6:[2001:db8:1:2:aa:bb:cc:dd]:1") == "2001:db8:1:2::/64")
        #expect(FailureLimiter.key("ipv6:[::1]:8443") == "0:0:0:0::/64")
        #expect(FailureLimiter.key("ipv6:[2001:db8::]:1") == "2001:db8:0:0::/64")
        #expect(FailureLimiter.key("in-process:1") == "in-process:1")
    }

    @Test("memory is bounded: the address whose last failure is oldest is forgotten first")
    func bounded() throws {
        let clock = TestClock()
        let limiter = FailureLimiter(burst: 1, refillMilliseconds: 60_000, capacity: 100, now: { clock.now })
        limiter.failed("ipv4:10.0.0.1:1")
        for host in 2...500 {
            clock.advance(seconds: 1)
            limiter.failed("ipv4:10.0.\(host / 250).\(host % 250):1")
        }
        #expect(limiter.tracked == 100)
        // The first address was forgotten: it may try again; a recent one may not.
        try limiter.check("ipv4:10.0.0.1:1")
        #expect(throws: LQXError.self) { try limiter.check("ipv4:10.0.2.0:1") }
    }

    @Test("secrets compare equal only when equal")
    func same() {
        #expect(FailureLimiter.same("abc", "abc"))
        #expect(!FailureLimiter.same("abc", "abd"))
        #expect(!FailureLimiter.same("abc", "abcd"))
        #expect(!FailureLimiter(now: { 0 }).proxyKey.isEmpty)
    }
}
