import AgentProtocol
import Foundation
import HostBroker
import LQXModel
import Logging
import ServiceLifecycle
import Synchronization

/// An in-guest telemetry sample and when the node received it.
public struct VMTelemetry: Sendable {
    /// The VM's name.
    public var vm: String
    /// What the agent reported.
    public var sample: TelemetrySample
    /// When the node received it, Unix milliseconds.
    public var receivedUnixMilliseconds: Int64
}

/// Keeps the node's view of its VMs current from the hypervisor's lifecycle events (no polling)
/// and runs one agent broker per running VM: started when the VM starts (or is found running when
/// the daemon starts: re-adoption), stopped when it stops. VMs keep running while the daemon
/// restarts.
///
/// A `Service`: `run()` consumes events and owns every VM's broker task until graceful shutdown
/// (brokers stop, VMs keep running). Operations (`NodeCore`) may be called while it runs.
public final class VMManager: Service, Sendable {
    /// The backend.
    public let hypervisor: any Hypervisor
    private let logger: Logger
    private let broker: BrokerConfiguration
    private let telemetryInterval: Duration
    /// Waits and defaults of lifecycle operations.
    public let policy: LifecyclePolicy
    private let state = Mutex<State>(State())

    private struct Entry {
        var state: DomainState
        var agentSocket: String
        var agent: AgentClient?
        /// Finishing it ends the VM's broker task (see `run`).
        var stopBroker: AsyncStream<Never>.Continuation?
        var telemetry: VMTelemetry?
        /// What the agent said of itself, and the session it said it on.
        var info: (session: UInt64, info: AgentInfo)?
    }

    /// A broker to start: `run` adds it to its task group.
    private struct Launch {
        var name: String
        var client: AgentClient
        var stopped: AsyncStream<Never>
    }

    /// A `waitForState` call. It is registered before its timer starts and before it parks, so
    /// neither a state change nor the timeout can slip in between and be missed: whoever ends the
    /// wait removes the entry, and a caller that finds its entry gone does not park.
    private struct Waiter {
        let name: String
        let wanted: @Sendable (DomainState) -> Bool
        /// Set once the caller has parked.
        var continuation: CheckedContinuation<Void, Never>?
    }

    private struct State {
        var vms: [String: Entry] = [:]
        var waiters: [Int: Waiter] = [:]
        var nextWaiter = 0
        var events: AsyncStream<DomainEvent>?
        var adopted = false
        /// Brokers decided by `adopt` or an event, started by `run` right after.
        var launches: [Launch] = []
        /// Telemetry followers: of one VM, or of every VM (name nil).
        var watchers: [Int: (name: String?, continuation: AsyncStream<VMTelemetry>.Continuation)] = [:]
        var nextWatcher = 0
        /// Followers of "a VM changed" (its state, or its agent's session began).
        var changeFollowers: [Int: AsyncStream<Void>.Continuation] = [:]
    }

    /// Creates a manager; nothing runs until `adopt()` / `run()`.
    public init(
        hypervisor: any Hypervisor, broker: BrokerConfiguration = BrokerConfiguration(),
        telemetryInterval: Duration = .seconds(5), policy: LifecyclePolicy = LifecyclePolicy(),
        logger: Logger = Logger(label: "lqx-node")
    ) {
        self.hypervisor = hypervisor
        self.policy = policy
        self.broker = broker
        self.telemetryInterval = telemetryInterval
        self.logger = logger
    }

    /// Subscribes to the hypervisor's events, then records every VM that exists (the running ones
    /// get a broker once `run` runs). Idempotent; `run` calls it when nobody did.
    public func adopt() async throws(LQXError) {
        guard state.withLock({ $0.events == nil }) else { return }
        let events = try hypervisor.events()
        state.withLock { $0.events = events }
        for vm in try await hypervisor.list() { update(vm.name, vm.state, agentSocket: vm.agentSocket) }
        state.withLock { $0.adopted = true }
        logger.info("node adopted VMs", metadata: ["vms": "\(state.withLock { $0.vms.count })"])
    }

    /// Handles lifecycle events in order and runs the brokers, until graceful shutdown or
    /// cancellation; then every broker stops (the VMs keep running).
    public func run() async throws {
        try await adopt()
        guard let events = state.withLock({ $0.events }) else { return }
        defer {
            let stops = state.withLock { state -> [AsyncStream<Never>.Continuation] in
                state.events = nil
                defer {
                    for name in state.vms.keys {
                        state.vms[name]?.agent = nil
                        state.vms[name]?.stopBroker = nil
                    }
                }
                return state.vms.values.compactMap(\.stopBroker)
            }
            for stop in stops { stop.finish() }
        }
        let logger = self.logger, interval = telemetryInterval
        await withDiscardingTaskGroup { group in
            func launchPending() {
                for launch in state.withLock({ state in
                    defer { state.launches = [] }; return state.launches
                }) {
                    group.addTask { await self.runBroker(launch, interval: interval, logger: logger) }
                }
            }
            launchPending()
            // Events are handled by this one task, in order; a broker decided by one is started here.
            for await event in events.cancelOnGracefulShutdown() {
                await handle(event)
                launchPending()
            }
            group.cancelAll()
        }
    }

    /// One VM's broker and telemetry collection, until the VM stops or `run` ends.
    private func runBroker(_ launch: Launch, interval: Duration, logger: Logger) async {
        let name = launch.name, client = launch.client
        let store: @Sendable (TelemetrySample) -> Void = { [weak self] sample in self?.store(name, sample) }
        let info: @Sendable (UInt64, AgentInfo) -> Void = { [weak self] session, info in
            self?.state.withLock { $0.vms[name]?.info = (session, info) }
            self?.announceChange()
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do { try await client.run() } catch {
                    logger.debug("agent broker ended", metadata: ["vm": "\(name)", "error": "\(error)"])
                }
            }
            group.addTask { await Self.collectTelemetry(client, every: interval, info: info, store: store) }
            group.addTask { for await _ in launch.stopped {} }
            _ = await group.next()
            group.cancelAll()
        }
    }

    /// The state the node knows (from events) for a VM, or nil when it does not know the VM.
    public func knownState(_ name: String) -> DomainState? {
        state.withLock { $0.vms[name]?.state }
    }

    /// The latest in-guest telemetry sample of a VM (a subscription per running VM's agent).
    public func telemetry(_ name: String) -> TelemetrySample? {
        state.withLock { $0.vms[name]?.telemetry?.sample }
    }

    /// The latest sample with the time the node received it.
    public func latestTelemetry(_ name: String) -> VMTelemetry? {
        state.withLock { $0.vms[name]?.telemetry }
    }

    /// Every VM's latest sample (for the metrics endpoint).
    public func allTelemetry() -> [VMTelemetry] {
        state.withLock { $0.vms.values.compactMap(\.telemetry) }.sorted { $0.vm < $1.vm }
    }

    /// Samples of one VM as they arrive, until the consumer stops (a slow consumer sees the newest
    /// few; the node never buffers more per watcher).
    public func watchTelemetry(_ name: String) -> AsyncStream<VMTelemetry> {
        follow(name, buffer: 4)
    }

    /// Every VM's samples from now on, and the latest of each VM known now. A slow follower
    /// loses the oldest buffered samples (at most 1024 wait), never holds up collection.
    public func watchAllTelemetry() -> (latest: [VMTelemetry], updates: AsyncStream<VMTelemetry>) {
        let updates = follow(nil, buffer: 1024)
        let latest = state.withLock { state in state.vms.values.compactMap(\.telemetry) }
        return (latest.sorted { $0.vm < $1.vm }, updates)
    }

    private func follow(_ name: String?, buffer: Int) -> AsyncStream<VMTelemetry> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: VMTelemetry.self, bufferingPolicy: .bufferingNewest(buffer))
        let id = state.withLock { state -> Int in
            state.nextWatcher += 1
            state.watchers[state.nextWatcher] = (name, continuation)
            return state.nextWatcher
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.watchers.removeValue(forKey: id) }
        }
        return stream
    }

    /// What the VM's agent reported about itself when its current session began; nil while no
    /// session is open or the current one has not answered yet (never an earlier boot's facts).
    public func agentInfo(_ name: String) -> AgentInfo? {
        let (agent, known) = state.withLock { ($0.vms[name]?.agent, $0.vms[name]?.info) }
        guard let known, let session = agent?.currentSession, session.id == known.session else { return nil }
        return known.info
    }

    /// Whether the VM's agent has a session open now.
    public func agentConnected(_ name: String) -> Bool {
        agent(name)?.currentSession != nil
    }

    /// Known VMs, running VMs and VMs with a connected agent.
    public func counts() -> (vms: Int, running: Int, agentsConnected: Int) {
        let entries = state.withLock { Array($0.vms.values) }
        return (
            entries.count, entries.filter { $0.state == .running }.count,
            entries.filter { $0.agent?.currentSession != nil }.count
        )
    }

    /// The broker of a running VM.
    public func agent(_ name: String) -> AgentClient? {
        state.withLock { $0.vms[name]?.agent }
    }

    /// A live agent session of a running VM, waiting up to `timeout` for the agent.
    public func agentSession(_ name: String, timeout: Duration) async throws(LQXError) -> AgentSession {
        guard let client = agent(name) else {
            throw LQXError(.failedPrecondition, "VM \(name) is not running, so it has no agent")
        }
        do {
            return try await client.session(timeout: timeout)
        } catch {
            throw LQXError(
                .unavailable, "the agent of VM \(name) has no session after \(timeout)", cause: AgentError.from(error))
        }
    }

    /// How a graceful stop ended.
    public enum StopMethod: String, Sendable {
        /// The agent powered the guest off.
        case agent
        /// The guest reacted to the ACPI power button.
        case acpi
        /// Neither worked in time (or force was asked): the VM was stopped at once.
        case forced
        /// It was not running.
        case alreadyStopped = "already_stopped"
    }

    /// Stops a VM gracefully: through its agent when one is connected, else the ACPI power button;
    /// after `timeout` without the VM shutting off, it is stopped at once.
    public func stop(_ name: String, timeout: Duration) async throws(LQXError) -> StopMethod {
        guard try await hypervisor.status(name).state.isActive else { return .alreadyStopped }
        let deadline = ContinuousClock.now + timeout
        var method = StopMethod.acpi
        if let session = agent(name)?.currentSession {
            // A guest that does not answer (hung, paused) must not hold the stop beyond `timeout`:
            // the request runs on its own (a reply that never comes cannot be cancelled; it ends
            // with the session) and the first of its answer and the deadline decides.
            let (outcome, decide) = AsyncStream.makeStream(of: Bool.self, bufferingPolicy: .bufferingNewest(1))
            // Unstructured on purpose: a task group would wait for it. Cancelled below as soon as
            // the answer or the deadline decides; its reply wait ends at the broker's operation
            // deadline (`BrokerConfiguration.operationTimeout`) or with the session at the latest.
            let request = Task { decide.yield((try? await session.shutdown(.poweroff)) != nil) }
            let accepted = await withTaskGroup(of: Bool.self) { group in
                group.addTask {
                    var first = outcome.makeAsyncIterator()
                    return await first.next() ?? false
                }
                group.addTask {
                    try? await Task.sleep(until: deadline, clock: .continuous)
                    return false
                }
                let first = await group.next() ?? false
                group.cancelAll()
                return first
            }
            request.cancel()
            decide.finish()
            if accepted {
                method = .agent
            } else {
                logger.info("the agent did not accept the shutdown; using ACPI", metadata: ["vm": "\(name)"])
            }
        }
        if method == .acpi { try? await hypervisor.requestShutdown(name) }
        let remaining = max(deadline - ContinuousClock.now, .zero)
        if await waitForState(name, timeout: remaining, { !$0.isActive }) { return method }
        logger.warning("VM did not shut down in time; stopping it", metadata: ["vm": "\(name)"])
        try await hypervisor.forceStop(name)
        _ = await waitForState(name, timeout: policy.settle, { !$0.isActive })
        return .forced
    }

    /// Reboots a running VM: through its agent when one is connected (the guest shuts down
    /// cleanly and comes back), else by the ACPI reset request, which the guest must handle.
    /// Returns how it was asked.
    public func reboot(_ name: String) async throws(LQXError) -> StopMethod {
        guard try await hypervisor.status(name).state.isActive else {
            throw LQXError(.failedPrecondition, "VM \(name) is not running")
        }
        if let session = agent(name)?.currentSession {
            do {
                _ = try await session.shutdown(.reboot)
                return .agent
            } catch {
                logger.info("agent reboot failed; using ACPI", metadata: ["vm": "\(name)", "error": "\(error)"])
            }
        }
        try await hypervisor.reboot(name)
        return .acpi
    }

    /// Waits until the event-fed state of `name` satisfies `wanted`; false on timeout.
    public func waitForState(
        _ name: String, timeout: Duration, _ wanted: @escaping @Sendable (DomainState) -> Bool
    ) async -> Bool {
        let id = state.withLock { state -> Int in
            state.nextWaiter += 1
            state.waiters[state.nextWaiter] = Waiter(name: name, wanted: wanted)
            return state.nextWaiter
        }
        await withTaskGroup(of: Void.self) { group in
            // The timer ends the wait (resuming it if parked); a wait that ends first cancels it.
            group.addTask {
                guard (try? await Task.sleep(for: timeout)) != nil else { return }
                self.endWait(id)
            }
            group.addTask {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let parked = self.state.withLock { state -> Bool in
                        guard state.waiters[id] != nil else { return false }
                        if let current = state.vms[name]?.state, wanted(current) {
                            state.waiters[id] = nil
                            return false
                        }
                        state.waiters[id]?.continuation = continuation
                        return true
                    }
                    if !parked { continuation.resume() }
                }
            }
            _ = await group.next()
            group.cancelAll()
        }
        // A wait cancelled with its caller still holds its entry: drop it.
        endWait(id)
        return state.withLock { $0.vms[name].map { wanted($0.state) } ?? false }
    }

    /// Ends a wait (its timeout): resumes it if it parked; otherwise it will not park.
    private func endWait(_ id: Int) {
        state.withLock { $0.waiters.removeValue(forKey: id) }?.continuation?.resume()
    }

    private func handle(_ event: DomainEvent) async {
        if event.kind == .undefined {
            remove(event.name)
            return
        }
        // The event says that something happened; the state is read back so the cache never
        // guesses (events are handled in order, so a later read never loses to an earlier one).
        guard let status = (try? await hypervisor.managedStatus(event.name)) ?? nil else {
            remove(event.name)
            return
        }
        update(status.name, status.state, agentSocket: status.agentSocket)
    }

    /// Keeps a telemetry subscription open on the VM's agent, across reconnects, until cancelled.
    private static func collectTelemetry(
        _ client: AgentClient, every interval: Duration, info: @Sendable (UInt64, AgentInfo) -> Void,
        store: @Sendable (TelemetrySample) -> Void
    ) async {
        while !Task.isCancelled {
            do {
                let session = try await client.session(timeout: .seconds(60))
                info(session.id, try await session.info())
                for try await sample in session.telemetry(every: interval) { store(sample) }
            } catch {
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    private func store(_ name: String, _ sample: TelemetrySample) {
        let now = Int64((Date().timeIntervalSince1970 * 1000).rounded())
        let telemetry = VMTelemetry(vm: name, sample: sample, receivedUnixMilliseconds: now)
        let watchers = state.withLock { state -> [AsyncStream<VMTelemetry>.Continuation] in
            guard state.vms[name] != nil else { return [] }
            state.vms[name]?.telemetry = telemetry
            return state.watchers.values.filter { $0.name == name || $0.name == nil }.map(\.continuation)
        }
        for watcher in watchers { watcher.yield(telemetry) }
    }

    private func remove(_ name: String) {
        let (stop, waiters) = state.withLock { state -> (AsyncStream<Never>.Continuation?, [Waiter]) in
            let stop = state.vms.removeValue(forKey: name)?.stopBroker
            let matching = state.waiters.filter { $0.value.name == name }
            for key in matching.keys { state.waiters[key] = nil }
            return (stop, Array(matching.values))
        }
        stop?.finish()
        for waiter in waiters { waiter.continuation?.resume() }
        announceChange()
    }

    private func update(_ name: String, _ newState: DomainState, agentSocket: String) {
        let broker = self.broker, logger = self.logger
        let (stale, waiters) = state.withLock { state -> (AsyncStream<Never>.Continuation?, [Waiter]) in
            var entry = state.vms[name] ?? Entry(state: newState, agentSocket: agentSocket)
            entry.state = newState
            var stale: AsyncStream<Never>.Continuation?
            if newState.isActive, entry.agent == nil {
                var agentLogger = logger
                agentLogger[metadataKey: "vm"] = "\(name)"
                let client = AgentClient(address: .unix(path: agentSocket), configuration: broker, logger: agentLogger)
                let (stopped, stop) = AsyncStream.makeStream(of: Never.self)
                entry.agent = client
                entry.stopBroker = stop
                // Only recorded here: `run` starts the broker task right after this update.
                state.launches.append(Launch(name: name, client: client, stopped: stopped))
            } else if !newState.isActive {
                stale = entry.stopBroker
                entry.agent = nil
                entry.stopBroker = nil
                entry.info = nil
            }
            state.vms[name] = entry
            let ready = state.waiters.filter { $0.value.name == name && $0.value.wanted(newState) }
            for key in ready.keys { state.waiters[key] = nil }
            return (stale, Array(ready.values))
        }
        stale?.finish()
        for waiter in waiters { waiter.continuation?.resume() }
        announceChange()
    }

    /// A tick each time a VM's state changes or its agent's session begins (ticks in a row
    /// collapse to one): what a heartbeat pushes at once instead of waiting for its interval.
    public func changes() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let id = state.withLock { state -> Int in
            state.nextWatcher += 1
            state.changeFollowers[state.nextWatcher] = continuation
            return state.nextWatcher
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.changeFollowers.removeValue(forKey: id) }
        }
        return stream
    }

    private func announceChange() {
        for follower in state.withLock({ Array($0.changeFollowers.values) }) { follower.yield() }
    }
}
