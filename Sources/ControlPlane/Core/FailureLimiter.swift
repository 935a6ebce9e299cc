import LQXModel
import Synchronization

/// Failed attempts at credentials (bearer tokens, join tokens) per client address. Each address
/// may fail `burst` times; after that one more failure is allowed every `refillMilliseconds`. An
/// address over its limit is refused before its credentials are looked at, with when to retry,
/// so it cannot keep guessing; callers with valid credentials from other addresses are not
/// affected. Memory is bounded: at most `capacity` addresses are tracked, and when a new one comes
/// the one whose last failure is oldest is forgotten. IPv6 addresses count per /64 (one host
/// usually holds the whole prefix).
public final class FailureLimiter: Sendable {
    struct Bucket {
        var allowance: Double
        var updatedUnixMs: Int64
    }

    let burst: Double
    let refillMilliseconds: Int64
    let capacity: Int
    let now: @Sendable () -> Int64
    private let buckets = Mutex<[String: Bucket]>([:])
    /// A random secret of this process: a proxy in it that limits its own clients (the JSON
    /// gateway) sends it with the address it forwards for, so its clients are counted each on
    /// their own rather than all as the proxy's address. Never leaves the process.
    public let proxyKey: String = {
        var generator = SystemRandomNumberGenerator()
        return (0..<4).map { _ in String(generator.next() as UInt64, radix: 16) }.joined(separator: "-")
    }()

    /// A limiter allowing `burst` failures per address, then one per `refillMilliseconds`.
    public init(
        burst: Int = 20, refillMilliseconds: Int64 = 3_000, capacity: Int = 4_096,
        now: @escaping @Sendable () -> Int64
    ) {
        self.burst = Double(max(1, burst))
        self.refillMilliseconds = max(1, refillMilliseconds)
        self.capacity = max(1, capacity)
        self.now = now
    }

    /// Refuses `peer` with `resource_exhausted` when it has no failure left to spend.
    public func check(_ peer: String) throws(LQXError) {
        let key = Self.key(peer)
        let time = now()
        let wait = buckets.withLock { buckets -> Int64? in
            guard let bucket = buckets[key] else { return nil }
            let allowance = refilled(bucket, at: time)
            guard allowance < 1 else { return nil }
            return Int64((1 - allowance) * Double(refillMilliseconds))
        }
        if let wait {
            let seconds = max(1, (wait + 999) / 1000)
            throw LQXError(
                .resourceExhausted, "too many failed authentications from \(key): try again in \(seconds) s")
        }
    }

    /// Counts a failure of `peer`.
    public func failed(_ peer: String) {
        let key = Self.key(peer)
        let time = now()
        buckets.withLock { buckets in
            if buckets[key] == nil, buckets.count >= capacity,
                let oldest = buckets.min(by: { $0.value.updatedUnixMs < $1.value.updatedUnixMs })?.key
            {
                buckets.removeValue(forKey: oldest)
            }
            let allowance = buckets[key].map { refilled($0, at: time) } ?? burst
            buckets[key] = Bucket(allowance: max(0, allowance - 1), updatedUnixMs: time)
        }
    }

    /// Whether two secrets are equal, in time that does not depend on where they differ.
    public static func same(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }

    /// How many addresses are tracked.
    public var tracked: Int { buckets.withLock { $0.count } }

    private func refilled(_ bucket: Bucket, at time: Int64) -> Double {
        let elapsed = Double(max(0, time - bucket.updatedUnixMs))
        return min(burst, bucket.allowance + elapsed / Double(refillMilliseconds))
    }

    /// The address a gRPC peer description names (`ipv4:1.2.3.4:5` → `1.2.3.4`,
    /// `ipv6:[2001:db8:1:2::9]:5` → `2001:db8:1:2::/64`); anything else as it is.
    static func key(_ peer: String) -> String {
        if peer.hasPrefix("ipv4:") {
            let rest = peer.dropFirst(5)
            return String(rest.lastIndex(of: ":").map { rest[..<$0] } ?? rest)
        }
        if peer.hasPrefix("ipv6:") {
            var rest = peer.dropFirst(5)
            if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
                rest = rest[rest.index(after: rest.startIndex)..<close]
            }
            return prefix64(String(rest))
        }
        return peer
    }

    /// The /64 an IPv6 address is in, written `a:b:c:d::/64`.
    static func prefix64(_ address: String) -> String {
        let halves = address.split(separator: "::", maxSplits: 1, omittingEmptySubsequences: false)
        let head = halves[0].split(separator: ":", omittingEmptySubsequences: false).filter { !$0.isEmpty }
        let tail =
            halves.count > 1
            ? halves[1].split(separator: ":", omittingEmptySubsequences: false).filter { !$0.isEmpty } : []
        let missing = max(0, 8 - head.count - tail.count)
        let groups =
            head.map(String.init) + Array(repeating: "0", count: halves.count > 1 ? missing : 0) + tail.map(String.init)
        return groups.prefix(4).map { String(UInt16($0, radix: 16) ?? 0, radix: 16) }.joined(separator: ":") + "::/64"
    }
}
