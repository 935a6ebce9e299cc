import LQXModel

/// What a node reports when it joins.
public struct NodeRegistration: Sendable, Equatable {
    /// The host's name (unique in the cluster).
    public var name: String
    /// Where its node API listens.
    public var address: String
    /// CPUs and memory.
    public var capacity: Node.Resources
    /// Hardware and hypervisor.
    public var inventory: Node.Inventory
    /// The daemon's version.
    public var version: String

    /// Creates a registration.
    public init(
        name: String, address: String, capacity: Node.Resources, inventory: Node.Inventory = Node.Inventory(),
        version: String = LimiquantixVersion.current
    ) {
        self.name = name
        self.address = address
        self.capacity = capacity
        self.inventory = inventory
        self.version = version
    }
}

/// One VM as a node reports it in a heartbeat.
public struct ObservedVM: Sendable, Equatable {
    /// The VM's id.
    public var id: String
    /// Its name on the node.
    public var name: String
    /// Its state there (`running`, `shut off`, …).
    public var state: String
    /// Whether its agent is connected.
    public var agentConnected: Bool
    /// What its agent said of itself (empty: nothing yet, or a node that does not tell).
    public var agent: VirtualMachine.AgentFacts

    /// Creates an observation.
    public init(
        id: String, name: String, state: String, agentConnected: Bool,
        agent: VirtualMachine.AgentFacts = VirtualMachine.AgentFacts()
    ) {
        self.id = id
        self.name = name
        self.state = state
        self.agentConnected = agentConnected
        self.agent = agent
    }
}

/// What a node last reported of its VMs, and when.
public struct NodeObservation: Sendable, Equatable {
    /// When the report arrived (cluster clock, Unix ms).
    public var receivedUnixMs: Int64
    /// The node's VMs.
    public var vms: [ObservedVM]
}

extension Cluster {
    /// The prefix of join tokens (`lqxjoin_<id>_<secret>`), distinct from API tokens.
    public static let joinTokenPrefix = "lqxjoin"

    /// A single-use token a node joins with (admins); `ttl` bounds how long it is valid. Returns
    /// the token (shown once) and when it expires (Unix ms, on the cluster's clock).
    public func createJoinToken(ttl: Duration, by principal: Principal) async throws(LQXError) -> (
        token: String, expiresUnixMs: Int64
    ) {
        try principal.require(.admin, to: "create join tokens")
        guard ttl > .zero, ttl <= .seconds(7 * 86_400) else {
            throw LQXError(.invalidSpec, "--ttl must be more than 0 and at most 7 days")
        }
        let milliseconds = ttl.components.seconds * 1000 + ttl.components.attoseconds / 1_000_000_000_000_000
        let time = now()
        let (plaintext, record) = TokenSecret.issue(
            user: principal.user, role: .viewer, project: "", now: time, ttlMilliseconds: milliseconds,
            prefix: Self.joinTokenPrefix)
        try await store.commit([.create(try Repository.stored(record, kind: .joinToken))])
        return (plaintext, time + milliseconds)
    }

    /// How long operator certificates are valid unless asked otherwise, and at most.
    public static let operatorCertificateTTL: (default: Duration, maximum: Duration) = (
        .seconds(12 * 3600), .seconds(30 * 86_400)
    )

    /// Checks that `principal` may get a client certificate for node APIs (admins: a node API
    /// has no roles or projects) valid for `ttl`, and returns the identity it names.
    public func authorizeOperatorCertificate(ttl: Duration, by principal: Principal) throws(LQXError) -> String {
        try principal.require(.admin, to: "get certificates for node APIs")
        guard ttl > .zero, ttl <= Self.operatorCertificateTTL.maximum else {
            throw LQXError(.invalidSpec, "--ttl must be more than 0 and at most 30 days")
        }
        return principal.user
    }

    /// Registers a node with a join token: the token is consumed in the same transaction that
    /// creates the node, so it works once. The node starts PENDING until its first heartbeat.
    public func registerNode(joinToken: String, _ registration: NodeRegistration) async throws(LQXError) -> Node {
        guard let (id, secret) = TokenSecret.parse(joinToken, prefix: Self.joinTokenPrefix) else {
            throw LQXError(.unauthenticated, "the join token is malformed (expected \(Self.joinTokenPrefix)_…)")
        }
        guard let (record, version) = try await repository.token(id: id, kind: .joinToken) else {
            throw LQXError(.unauthenticated, "the join token was already used or never existed")
        }
        try TokenSecret.verify(secret, record, now: now())
        try VMSpec.validate(name: registration.name)
        let address = try HostPort(parsing: registration.address, for: .connect, field: "address")
        guard registration.capacity.cpus > 0, registration.capacity.memoryMiB > 0 else {
            throw LQXError(.invalidSpec, "a node must report its CPUs and memory")
        }
        let node = Node(
            meta: ObjectMeta(id: VMID.random().rawValue, name: registration.name, createdUnixMs: now()),
            status: Node.Status(
                address: address.description, capacity: registration.capacity, inventory: registration.inventory,
                version: registration.version))
        do {
            var joined = node
            joined.meta.resourceVersion = try await store.commit(
                [.delete(.joinToken, id: id, expected: version), .create(try Repository.stored(node))],
                events: [
                    event(
                        .node, node.meta, "Joined",
                        "joined from \(address) with \(registration.capacity.cpus) CPUs and \(registration.capacity.memoryMiB) MiB"
                    )
                ], audit: [])
            return joined
        } catch  where error.code == .conflict {
            throw LQXError(.unauthenticated, "the join token was already used")
        } catch  where error.code == .alreadyExists {
            throw LQXError(.alreadyExists, "a node named \(registration.name) has joined already")
        }
    }

    /// A node's heartbeat: it is READY from now on until `heartbeatGrace` passes without one.
    /// Only changes of phase or capacity are written (and place VMs that waited for room); what
    /// the node reports of its VMs is kept in memory as its latest observation. `paths` are its
    /// answers about the paths it was asked for (nil: a node that does not check paths);
    /// `migration` and `sharedStorage` what it declares for live migration. Returns the paths to
    /// ask it about next (those that VMs being placed name).
    @discardableResult
    public func heartbeat(
        nodeID: String, capacity: Node.Resources? = nil, vms: [ObservedVM]? = nil, paths answers: [String: Bool]? = nil,
        migration: Node.MigrationTarget? = nil, sharedStorage: [SharedStorage] = []
    ) async throws(LQXError) -> [String] {
        let time = now()
        heartbeats.withLock { $0[nodeID] = time }
        if let vms {
            let changed = observations.withLock { observations -> Bool in
                let before = observations[nodeID]?.vms
                observations[nodeID] = NodeObservation(receivedUnixMs: time, vms: vms)
                return before != vms
            }
            if changed { observed.publish(time) }
        }
        let changed = try await retrying { () async throws(LQXError) -> Bool in
            guard var node = try await repository.node(id: nodeID) else {
                throw LQXError(.notFound, "node \(nodeID) has not joined this cluster")
            }
            var reasons: [String] = []
            let phase = node.status.phase
            switch node.status.phase {
            case .pending, .notReady:
                // A node that went silent while draining goes on draining.
                var evicting = node.status.conditions["Draining"]?.status == true
                if !evicting {
                    evicting = try await repository.vms().contains {
                        ($0.status.nodeID == nodeID && $0.status.evicting) || $0.status.migratingFrom == nodeID
                    }
                }
                node.status.phase = evicting ? .draining : .ready
                reasons.append(evicting ? "node is back, DRAINING" : "node is READY")
            case .offline:
                node.status.phase = .maintenance
                reasons.append("node is back, in MAINTENANCE")
            default: break
            }
            if migration != node.status.migration {
                reasons.append(migration.map { "takes live migrations at \($0.uri)" } ?? "takes no live migrations")
                node.status.migration = migration
            }
            if sharedStorage != node.status.sharedStorage {
                reasons.append(
                    sharedStorage.isEmpty
                        ? "declares no shared storage"
                        : "shares storage \(sharedStorage.map(\.description).joined(separator: ", "))")
                node.status.sharedStorage = sharedStorage
            }
            if let capacity, capacity != node.status.capacity {
                reasons.append("capacity \(capacity.cpus) CPUs, \(capacity.memoryMiB) MiB")
                node.status.capacity = capacity
            }
            guard !reasons.isEmpty else { return false }
            try await store.commit(
                [.update(try Repository.stored(node), expected: node.meta.resourceVersion)],
                events: [
                    event(
                        .node, node.meta, node.status.phase != phase ? "NodeReady" : "NodeUpdated",
                        reasons.joined(separator: "; "))
                ], audit: [])
            return true
        }
        let learnt = paths.report(node: nodeID, answers)
        if changed || learnt { try await schedulePending() }
        return answers == nil ? [] : paths.wanted(now: time)
    }

    /// Marks nodes whose last heartbeat is older than the grace period (one that never sent one
    /// since this control plane started is judged from its start): READY and DRAINING ones
    /// NOT_READY (a failure), MAINTENANCE ones OFFLINE (switched off for maintenance, not a
    /// failure). The next heartbeat brings each back (READY, DRAINING, MAINTENANCE).
    public func checkHeartbeats(startedUnixMs: Int64) async throws(LQXError) {
        let time = now()
        let grace = heartbeatGrace.components.seconds * 1000
        let seen = heartbeats.withLock { $0 }
        for node in try await repository.nodes() where [.ready, .draining, .maintenance].contains(node.status.phase) {
            let last = seen[node.meta.id] ?? startedUnixMs
            guard time - last > grace else { continue }
            let offline = node.status.phase == .maintenance, phase = node.status.phase
            _ = try? await updateNode(node.meta.name, by: .system, reason: offline ? "NodeOffline" : "NodeNotReady") {
                node throws(LQXError) in
                // A heartbeat or an operator changed it meanwhile: judged again on the next round.
                guard node.status.phase == phase else { throw LQXError(.failedPrecondition, "changed meanwhile") }
                node.status.phase = offline ? .offline : .notReady
                return "no heartbeat for \((time - last) / 1000) s"
                    + (offline ? " (in maintenance: not a failure)" : "")
            }
        }
    }

    /// What `nodeID` last reported of its VMs (nil: nothing since this control plane started).
    public func observation(nodeID: String) -> NodeObservation? {
        observations.withLock { $0[nodeID] }
    }

    /// Replaces (or with nil removes) one VM in a node's latest observation: what the node
    /// answered to an operation, until its next report.
    public func patchObservation(nodeID: String, vmID: String, _ vm: ObservedVM?) {
        observations.withLock { observations in
            guard var observation = observations[nodeID] else { return }
            observation.vms.removeAll { $0.id == vmID || $0.name == vmID }
            if let vm { observation.vms.append(vm) }
            observations[nodeID] = observation
        }
    }

    /// Every node (viewers).
    public func nodes(by principal: Principal) async throws(LQXError) -> [Node] {
        try principal.require(.viewer, project: principal.project, to: "list nodes")
        return try await repository.nodes()
    }

    /// The node of that name (viewers).
    public func node(_ name: String, by principal: Principal) async throws(LQXError) -> Node {
        try principal.require(.viewer, project: principal.project, to: "read nodes")
        guard let node = try await repository.node(name: name) else {
            throw LQXError(.notFound, "node \(name) does not exist")
        }
        return node
    }

    /// Cordons (no new VMs) or uncordons a node (admins).
    public func setSchedulable(_ name: String, _ schedulable: Bool, by principal: Principal) async throws(LQXError)
        -> Node
    {
        let time = now()
        let node = try await updateNode(name, by: principal, reason: schedulable ? "Uncordoned" : "Cordoned") { node in
            node.spec.schedulable = schedulable
            if schedulable, node.status.conditions["Draining"]?.status == true {
                node.status.conditions.set(
                    Condition(
                        type: "Draining", status: false, reason: "Uncordoned", message: "the drain was ended",
                        lastTransitionUnixMs: time))
            }
            // Uncordoning ends maintenance (or a drain: VMs already moving finish moving); a node
            // switched off meanwhile is READY at its next heartbeat.
            if schedulable, [.maintenance, .draining].contains(node.status.phase) { node.status.phase = .ready }
            if schedulable, node.status.phase == .offline { node.status.phase = .notReady }
            return schedulable ? "node takes new VMs" : "node takes no new VMs"
        }
        if schedulable { try await schedulePending() }
        return node
    }

    /// Sets (value non-nil) or removes a node label (admins).
    public func setLabel(_ name: String, key: String, value: String?, by principal: Principal) async throws(LQXError)
        -> Node
    {
        let node = try await updateNode(name, by: principal, reason: "Labelled") {
            (node: inout Node) throws(LQXError) -> String in
            var values = node.spec.labels.values
            values[key] = value
            node.spec.labels = try Labels(values)
            return value.map { "label \(key)=\($0)" } ?? "label \(key) removed"
        }
        try await schedulePending()
        return node
    }

    /// Adds a taint, or removes every taint of that key when `taint.effect` is nil (admins).
    public func setTaint(
        _ name: String, key: String, value: String, effect: NodeSpec.Taint.Effect?, by principal: Principal
    ) async throws(LQXError) -> Node {
        let node = try await updateNode(name, by: principal, reason: "Tainted") { node in
            node.spec.taints.removeAll { $0.key == key }
            guard let effect else { return "taints \(key) removed" }
            let taint = NodeSpec.Taint(key: key, value: value, effect: effect)
            node.spec.taints.append(taint)
            return "taint \(taint.display)"
        }
        try await schedulePending()
        return node
    }

    /// Sets a node's overcommit ratios and reserved resources (admins; nil keeps a value).
    public func setResources(
        _ name: String, cpuOvercommit: Double? = nil, memoryOvercommit: Double? = nil, reservedCPUs: Int? = nil,
        reservedMemoryMiB: Int? = nil, by principal: Principal
    ) async throws(LQXError) -> Node {
        let node = try await updateNode(name, by: principal, reason: "ResourcesChanged") { node in
            node.spec.cpuOvercommit = cpuOvercommit ?? node.spec.cpuOvercommit
            node.spec.memoryOvercommit = memoryOvercommit ?? node.spec.memoryOvercommit
            node.spec.reservedCPUs = reservedCPUs ?? node.spec.reservedCPUs
            node.spec.reservedMemoryMiB = reservedMemoryMiB ?? node.spec.reservedMemoryMiB
            let room = node.allocatable
            return "allocatable \(room.cpus) vCPUs, \(room.memoryMiB) MiB"
        }
        try await schedulePending()
        return node
    }

    /// Changes a node's record with `change` (which returns the event's message), validating its
    /// spec, retrying on a lost race.
    func updateNode(
        _ name: String, by principal: Principal, reason: String,
        _ change: @Sendable (inout Node) throws(LQXError) -> String
    ) async throws(LQXError) -> Node {
        try principal.require(.admin, to: "change nodes")
        return try await retrying { () async throws(LQXError) -> Node in
            guard var node = try await repository.node(name: name) else {
                throw LQXError(.notFound, "node \(name) does not exist")
            }
            let expected = node.meta.resourceVersion
            let message = try change(&node)
            try node.spec.validate()
            node.meta.resourceVersion = try await store.commit(
                [.update(try Repository.stored(node), expected: expected)],
                events: [event(.node, node.meta, reason, message)], audit: [])
            return node
        }
    }
}

extension Cluster {
    /// Removes a node from the cluster (admins): a host decommissioned or replaced. Only a node
    /// that no VM is placed on (drain it first) and that the control plane sends nothing to
    /// (MAINTENANCE, OFFLINE, NOT_READY or PENDING) — so no VM can be running there unseen. Its
    /// heartbeats are refused from then on; to come back it joins again with a new token.
    public func deleteNode(_ name: String, by principal: Principal) async throws(LQXError) {
        try principal.require(.admin, to: "delete nodes")
        try await retrying { () async throws(LQXError) in
            guard let node = try await repository.node(name: name) else {
                throw LQXError(.notFound, "node \(name) does not exist")
            }
            guard ![.ready, .draining].contains(node.status.phase) else {
                throw LQXError(
                    .failedPrecondition,
                    "node \(name) is \(node.status.phase.rawValue): drain it first (it ends in MAINTENANCE), or stop its daemon"
                )
            }
            let placed = try await repository.vms().filter {
                $0.status.nodeID == node.meta.id || $0.status.migratingFrom == node.meta.id
            }
            guard placed.isEmpty else {
                let names = placed.prefix(5).map { "\($0.meta.project)/\($0.meta.name)" }.joined(separator: ", ")
                throw LQXError(
                    .failedPrecondition,
                    "node \(name) still has \(placed.count) VM\(placed.count == 1 ? "" : "s") placed on it (\(names)\(placed.count > 5 ? ", …" : "")): drain it first"
                )
            }
            try await store.commit(
                [.delete(.node, id: node.meta.id, expected: node.meta.resourceVersion)],
                events: [event(.node, node.meta, "NodeDeleted", "removed from the cluster by \(principal.user)")],
                audit: [])
            heartbeats.withLock { _ = $0.removeValue(forKey: node.meta.id) }
            observations.withLock { _ = $0.removeValue(forKey: node.meta.id) }
        }
    }
}

extension Cluster {
    /// A VM placed on a node that no longer exists (a placement that committed while the node
    /// was being deleted; the node was sent nothing, so nothing of it runs) is placed again.
    func releaseOrphan(vmID: String) async throws(LQXError) {
        try await unplace(vmID, reason: "NodeGone", "its node was deleted from the cluster: placing it again") {
            vm async throws(LQXError) in
            guard !vm.status.nodeID.isEmpty else { return false }
            return try await repository.node(id: vm.status.nodeID) == nil
        }
    }
}
