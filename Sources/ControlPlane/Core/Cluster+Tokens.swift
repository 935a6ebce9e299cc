import LQXModel

extension Cluster {
    /// Makes an API token (admins); its text is returned once and only its hash is stored.
    public func createToken(
        user: String, role: Role, project: String, ttl: Duration?, by principal: Principal
    ) async throws(LQXError) -> (token: String, record: TokenRecord) {
        try principal.require(.admin, to: "create tokens")
        try VMSpec.validate(name: user)
        if !project.isEmpty, try await repository.project(named: project) == nil {
            throw LQXError(.notFound, "project \(project) does not exist")
        }
        let milliseconds = ttl.map { $0.components.seconds * 1000 }
        if let milliseconds, milliseconds <= 0 { throw LQXError(.invalidSpec, "--ttl must be more than 0") }
        let (plaintext, record) = TokenSecret.issue(
            user: user, role: role, project: project, now: now(), ttlMilliseconds: milliseconds)
        try await store.commit([.create(try Repository.stored(record))])
        return (plaintext, record)
    }

    /// Every token (admins), without secrets.
    public func tokens(by principal: Principal) async throws(LQXError) -> [TokenRecord] {
        try principal.require(.admin, to: "list tokens")
        return try await repository.tokens()
    }

    /// Revokes a token by id (admins); it stops working at once.
    public func revokeToken(id: String, by principal: Principal) async throws(LQXError) {
        try principal.require(.admin, to: "revoke tokens")
        try await retrying { () async throws(LQXError) in
            guard let (found, version) = try await repository.token(id: id) else {
                throw LQXError(.notFound, "token \(id) does not exist")
            }
            var record = found
            record.revoked = true
            try await store.commit([.update(try Repository.stored(record), expected: version)])
        }
    }

    /// The principal of a bearer token, or a specific `unauthenticated` error.
    public func authenticate(bearer text: String) async throws(LQXError) -> Principal {
        guard let (id, secret) = TokenSecret.parse(text) else {
            throw LQXError(.unauthenticated, "the token is malformed (expected lqx_…)")
        }
        guard let (record, _) = try await repository.token(id: id) else {
            throw LQXError(.unauthenticated, "the token is not valid")
        }
        try TokenSecret.verify(secret, record, now: now())
        return Principal(user: record.user, role: record.role, project: record.project, tokenID: record.id)
    }

    /// On first start (no token yet): an admin token for `user`, to be written where the operator
    /// finds it. Nil when tokens exist.
    public func bootstrapAdminToken(user: String = "admin") async throws(LQXError) -> String? {
        guard try await repository.tokens().isEmpty else { return nil }
        return try await createToken(user: user, role: .admin, project: "", ttl: nil, by: .system).token
    }
}
