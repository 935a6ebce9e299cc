import Crypto
import Foundation
import LQXModel

/// What a token may do (per project, or everywhere when its project is empty).
public enum Role: String, Sendable, Equatable, Codable, CaseIterable, Comparable {
    /// Reads.
    case viewer
    /// Reads, runs lifecycle operations, exec and file transfer.
    case `operator`
    /// Everything, including nodes, projects and tokens.
    case admin

    private var rank: Int { Role.allCases.firstIndex(of: self)! }
    /// Whether `lhs` grants less than `rhs`.
    public static func < (lhs: Role, rhs: Role) -> Bool { lhs.rank < rhs.rank }
}

/// A stored API or join token: only the SHA-256 of its secret is kept.
public struct TokenRecord: Sendable, Equatable, Codable {
    /// Public part of the token (`lqx_<id>_<secret>`).
    public var id: String
    /// Who it belongs to (audit logs name them).
    public var user: String
    /// What it may do.
    public var role: Role
    /// The project it is limited to; empty: every project.
    public var project: String
    /// Hex SHA-256 of the secret.
    public var secretHash: String
    /// When it was made, Unix milliseconds.
    public var createdUnixMs: Int64
    /// When it stops working, Unix milliseconds; nil: never.
    public var expiresUnixMs: Int64?
    /// Whether it was revoked.
    public var revoked: Bool
}

/// Who is calling, once a token was verified.
public struct Principal: Sendable, Equatable {
    /// The token's user.
    public var user: String
    /// Its role.
    public var role: Role
    /// The project it is limited to; empty: every project.
    public var project: String
    /// The token's id.
    public var tokenID: String

    /// Creates a principal.
    public init(user: String, role: Role, project: String = "", tokenID: String = "") {
        self.user = user
        self.role = role
        self.project = project
        self.tokenID = tokenID
    }

    /// The control plane itself (reconciler, scheduler): everything.
    public static let system = Principal(user: "system", role: .admin)

    /// Refuses unless the principal holds at least `role` in `project` ("" = cluster-wide).
    public func require(_ role: Role, project: String = "", to action: String) throws(LQXError) {
        let scoped = self.project.isEmpty || self.project == project
        guard scoped else {
            throw LQXError(
                .permissionDenied, "\(user) may not \(action): the token is limited to project \(self.project)")
        }
        guard self.role >= role else {
            throw LQXError(
                .permissionDenied,
                "\(user) may not \(action): it needs the \(role.rawValue) role (the token has \(self.role.rawValue))")
        }
    }
}

/// Token secrets: made from the system's random source, stored as hashes, compared in constant time.
public enum TokenSecret {
    /// A new token: its plaintext (shown once) and the record to store.
    public static func issue(
        user: String, role: Role, project: String, now: Int64, ttlMilliseconds: Int64?, prefix: String = "lqx"
    ) -> (plaintext: String, record: TokenRecord) {
        let id = randomHex(8)
        let secret = randomHex(24)
        let record = TokenRecord(
            id: id, user: user, role: role, project: project, secretHash: hash(secret), createdUnixMs: now,
            expiresUnixMs: ttlMilliseconds.map { now + $0 }, revoked: false)
        return ("\(prefix)_\(id)_\(secret)", record)
    }

    /// The id and secret of a token's text, or nil when it is not one.
    public static func parse(_ text: String, prefix: String = "lqx") -> (id: String, secret: String)? {
        let parts = text.split(separator: "_", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == prefix, parts[1].count == 16, parts[2].count == 48,
            (parts[1] + parts[2]).allSatisfy({ $0.isHexDigit && !$0.isUppercase })
        else { return nil }
        return (String(parts[1]), String(parts[2]))
    }

    /// Checks `secret` against `record` at `now`: a specific error for each way it fails.
    public static func verify(_ secret: String, _ record: TokenRecord, now: Int64) throws(LQXError) {
        let given = Array(hash(secret).utf8)
        let stored = Array(record.secretHash.utf8)
        var difference: UInt8 = given.count == stored.count ? 0 : 1
        for (a, b) in zip(given, stored) { difference |= a ^ b }
        guard difference == 0 else { throw LQXError(.unauthenticated, "the token is not valid") }
        guard !record.revoked else { throw LQXError(.unauthenticated, "the token was revoked") }
        if let expires = record.expiresUnixMs, now >= expires {
            throw LQXError(.unauthenticated, "the token expired")
        }
    }

    static func hash(_ secret: String) -> String {
        SHA256.hash(data: Array(secret.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    static func randomHex(_ bytes: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }
}
