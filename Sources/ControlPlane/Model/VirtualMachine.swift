import LQXModel

/// A VM as the cluster stores it: what its user wants (`spec`) and what the system observed
/// (`status`). Applying the same spec twice changes nothing.
public struct VirtualMachine: Sendable, Equatable, Codable {
    /// Identity, project, labels, version.
    public var meta: ObjectMeta
    /// Owned by the user.
    public var spec: Spec
    /// Owned by the control plane.
    public var status: Status

    /// A VM not yet stored.
    public init(meta: ObjectMeta, spec: Spec, status: Status = Status()) {
        self.meta = meta
        self.spec = spec
        self.status = status
    }

    /// The desired power state.
    public enum RunState: String, Sendable, Equatable, Codable, CaseIterable {
        /// The VM should run.
        case running
        /// The VM should be stopped (its definition stays on its node).
        case stopped
        /// The VM should run, paused.
        case paused
    }

    /// What the user asks for.
    public struct Spec: Sendable, Equatable, Codable {
        /// Desired power state.
        public var runState: RunState
        /// CPU, memory, firmware, boot, disks, NICs (its `name` is the VM's name).
        public var machine: VMSpec
        /// Where it may run.
        public var placement: Placement
        /// Whether it is restarted elsewhere when its node fails.
        public var ha: HAPolicy

        /// Creates a spec.
        public init(
            runState: RunState = .running, machine: VMSpec, placement: Placement = Placement(),
            ha: HAPolicy = HAPolicy()
        ) {
            self.runState = runState
            self.machine = machine
            self.placement = placement
            self.ha = ha
        }

        /// Checks every field (a clear error naming it).
        public func validate() throws(LQXError) {
            try machine.validate()
            try placement.validate()
            try ha.validate()
        }

        private enum CodingKeys: String, CodingKey { case runState, machine, placement, ha }

        /// Decodes a stored spec (`ha` absent in records written before it existed: off).
        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            runState = try container.decode(RunState.self, forKey: .runState)
            machine = try container.decode(VMSpec.self, forKey: .machine)
            placement = try container.decode(Placement.self, forKey: .placement)
            ha = try container.decodeIfPresent(HAPolicy.self, forKey: .ha) ?? HAPolicy()
        }
    }

    /// Where the VM is in its life (MODEL.md).
    public enum Phase: String, Sendable, Equatable, Codable, CaseIterable {
        /// Waiting for a node (see the `Scheduled` condition).
        case pending = "PENDING"
        /// A node is chosen; it is being defined there.
        case scheduled = "SCHEDULED"
        /// Being started on its node.
        case starting = "STARTING"
        /// Running.
        case running = "RUNNING"
        /// Paused.
        case paused = "PAUSED"
        /// Being stopped.
        case stopping = "STOPPING"
        /// Defined on its node, not running.
        case stopped = "STOPPED"
        /// Moving to another node.
        case migrating = "MIGRATING"
        /// An operation failed (see the conditions).
        case failed = "FAILED"
        /// Its node does not report it.
        case unknown = "UNKNOWN"
    }

    /// What the control plane observed.
    public struct Status: Sendable, Equatable, Codable {
        /// Where the VM is in its life.
        public var phase: Phase
        /// The id of the node it is placed on, or empty.
        public var nodeID: String
        /// The placement epoch: grows with every new placement; commands carry it.
        public var epoch: Int64
        /// Conditions with reasons.
        public var conditions: [Condition]
        /// Whether the guest agent is connected to its node's broker (as the node last reported).
        public var agentConnected: Bool
        /// What the agent last said of itself (kept while it is disconnected).
        public var agent: AgentFacts
        /// Being moved off its node (a drain): stopped there, removed from it, then placed again.
        public var evicting: Bool
        /// Being live-migrated from this node (its id) to `nodeID`: it runs there until the
        /// migration is done. Nothing else is done to the VM meanwhile.
        public var migratingFrom: String
        /// A live migration of it failed: the next move off its node is by stop and start.
        public var migrationFailed: Bool

        /// A new VM's status: pending, nowhere.
        public init(
            phase: Phase = .pending, nodeID: String = "", epoch: Int64 = 0, conditions: [Condition] = [],
            agentConnected: Bool = false
        ) {
            self.phase = phase
            self.nodeID = nodeID
            self.epoch = epoch
            self.conditions = conditions
            self.agentConnected = agentConnected
            self.agent = AgentFacts()
            self.evicting = false
            self.migratingFrom = ""
            self.migrationFailed = false
        }

        private enum CodingKeys: String, CodingKey {
            case phase, nodeID, epoch, conditions, agentConnected, agent, evicting, migratingFrom, migrationFailed
        }

        /// Decodes a stored status; fields added later default when absent.
        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            phase = try container.decode(Phase.self, forKey: .phase)
            nodeID = try container.decode(String.self, forKey: .nodeID)
            epoch = try container.decode(Int64.self, forKey: .epoch)
            conditions = try container.decode([Condition].self, forKey: .conditions)
            agentConnected = try container.decodeIfPresent(Bool.self, forKey: .agentConnected) ?? false
            agent = try container.decodeIfPresent(AgentFacts.self, forKey: .agent) ?? AgentFacts()
            evicting = try container.decodeIfPresent(Bool.self, forKey: .evicting) ?? false
            migratingFrom = try container.decodeIfPresent(String.self, forKey: .migratingFrom) ?? ""
            migrationFailed = try container.decodeIfPresent(Bool.self, forKey: .migrationFailed) ?? false
        }
    }

    /// What a guest agent says of itself in its hello, relayed by its node. The guest writes
    /// these: each is cut to `limit` bytes (at a character boundary) before it is kept.
    public struct AgentFacts: Sendable, Equatable, Codable {
        /// The most bytes kept of each field.
        public static let limit = 256
        /// The agent's version.
        public var version: String
        /// The guest OS (`PRETTY_NAME` of os-release).
        public var osPrettyName: String
        /// The guest's host name.
        public var hostname: String

        /// Facts, each cut to `limit` bytes.
        public init(version: String = "", osPrettyName: String = "", hostname: String = "") {
            self.version = Self.bounded(version)
            self.osPrettyName = Self.bounded(osPrettyName)
            self.hostname = Self.bounded(hostname)
        }

        /// Whether the agent told nothing yet.
        public var isEmpty: Bool { version.isEmpty && osPrettyName.isEmpty && hostname.isEmpty }

        /// ` (agent VERSION, OS, host NAME)` for messages, or empty when nothing is known.
        public var summary: String {
            let parts = [
                version.isEmpty ? "" : "agent \(version)", osPrettyName, hostname.isEmpty ? "" : "host \(hostname)",
            ].filter { !$0.isEmpty }
            return parts.isEmpty ? "" : " (\(parts.joined(separator: ", ")))"
        }

        static func bounded(_ text: String) -> String {
            guard text.utf8.count > limit else { return text }
            var cut = ""
            for character in text {
                guard cut.utf8.count + character.utf8.count <= limit else { break }
                cut.append(character)
            }
            return cut
        }
    }
}
