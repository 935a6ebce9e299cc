import AgentProtocol
import Foundation
import HostBroker
import Logging
import Synchronization

/// An in-guest telemetry sample and when the node received it.
public struct VMTelemetry: Sendable {
    public var vm: String
    public var sample: TelemetrySample
    public var receivedUnixMilliseconds: Int64
}

/// Keeps the node's view of its VMs current from libvirt's lifecycle events (no polling) and runs
/// one agent broker per running VM: started when the domain starts (or is found running when the
/// daemon starts: re-adoption), stopped when it stops. VMs keep running while the daemon restarts.
public final class VMManager: Sendable {
    public let hypervisor: LibvirtHypervisor
    private let logger: Logger
    private let broker: BrokerConfiguration
    private let telemetryInterval: Duration
    private let state = Mutex<State>(State())
    /// Events are processed one at a time, in order, by one task (see `start`).
    private let events: AsyncStream<DomainEvent>
    private let eventInput: AsyncStream<DomainEvent>.Continuation

    private struct Entry {
        var state: DomainState
        var agentSocket: String
        var agent: AgentClient?
        var runner: Task<Void, Never>?
        var telemetry: VMTelemetry?
        var info: AgentInfo?
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
        var eventHandler: Int32?
        var eventTask: Task<Void, Never>?
        var watchers: [Int: (name: String, continuation: AsyncStream<VMTelemetry>.Continuation)] = [:]
        var nextWatcher = 0
    }

    public init(
        hypervisor: LibvirtHypervisor, broker: BrokerConfiguration = BrokerConfiguration(),
        telemetryInterval: Duration = .seconds(5), logger: Logger = Logger(label: "lqx-node")
    ) {
        self.hypervisor = hypervisor
        self.broker = broker
        self.telemetryInterval = telemetryInterval
        self.logger = logger
        (events, eventInput) = AsyncStream.makeStream(bufferingPolicy: .unbounded)
    }

    /// Subscribes to events, then adopts every VM that exists (agents for the running ones).
    public func start() async throws(NodeError) {
        let input = eventInput
        let id = try hypervisor.connection.addEventHandler { event in input.yield(event) }
        let events = self.events
        let task = Task { [weak self] in
            for await event in events {
                guard let self else { return }
                await self.handle(event)
            }
        }
        state.withLock {
            $0.eventHandler = id
            $0.eventTask = task
        }
        for vm in try await hypervisor.list() { update(vm.name, vm.state, agentSocket: vm.agentSocket) }
        logger.info("node adopted VMs", metadata: ["vms": "\(state.withLock { $0.vms.count })"])
    }

    /// Stops every broker (not the VMs) and the event subscription.
    public func shutdown() {
        let (runners, handler, eventTask) = state.withLock {
            state -> ([Task<Void, Never>], Int32?, Task<Void, Never>?) in
            let runners = state.vms.values.compactMap(\.runner)
            for name in state.vms.keys {
                state.vms[name]?.runner = nil
                state.vms[name]?.agent = nil
            }
            defer {
                state.eventHandler = nil
                state.eventTask = nil
            }
            return (runners, state.eventHandler, state.eventTask)
        }
        for runner in runners { runner.cancel() }
        if let handler { hypervisor.connection.removeEventHandler(handler) }
        eventTask?.cancel()
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
        let (stream, continuation) = AsyncStream.makeStream(
            of: VMTelemetry.self, bufferingPolicy: .bufferingNewest(4))
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

    /// What the VM's agent reported about itself when its current session began.
    public func agentInfo(_ name: String) -> AgentInfo? {
        state.withLock { $0.vms[name]?.info }
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
    public func agentSession(_ name: String, timeout: Duration = .seconds(30)) async throws(NodeError) -> AgentSession {
        guard let client = agent(name) else {
            throw NodeError(.failedPrecondition, "VM \(name) is not running, so it has no agent")
        }
        do {
            return try await client.session(timeout: timeout)
        } catch {
            throw NodeError(.timeout, "the agent of VM \(name) did not answer within \(timeout): \(error)")
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
    public func stop(_ name: String, timeout: Duration = .seconds(60)) async throws(NodeError) -> StopMethod {
        guard try await hypervisor.status(name).state.isActive else { return .alreadyStopped }
        let deadline = ContinuousClock.now + timeout
        var method = StopMethod.acpi
        if let session = agent(name)?.currentSession {
            // A guest that does not answer (hung, paused) must not hold the stop beyond `timeout`:
            // the request runs on its own (a reply that never comes cannot be cancelled; it ends
            // with the session) and the first of its answer and the deadline decides.
            let (outcome, decide) = AsyncStream.makeStream(of: Bool.self, bufferingPolicy: .bufferingNewest(2))
            let request = Task { decide.yield((try? await session.shutdown(.poweroff)) != nil) }
            let timer = Task {
                try? await Task.sleep(until: deadline, clock: .continuous)
                decide.yield(false)
            }
            var first = outcome.makeAsyncIterator()
            let accepted = await first.next() ?? false
            timer.cancel()
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
        _ = await waitForState(name, timeout: .seconds(10), { !$0.isActive })
        return .forced
    }

    /// Reboots a running VM: through its agent when one is connected (the guest shuts down
    /// cleanly and comes back), else by the ACPI reset request, which the guest must handle.
    /// Returns how it was asked.
    public func reboot(_ name: String) async throws(NodeError) -> StopMethod {
        guard try await hypervisor.status(name).state.isActive else {
            throw NodeError(.failedPrecondition, "VM \(name) is not running")
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
        let timer = Task {
            guard (try? await Task.sleep(for: timeout)) != nil else { return }
            self.endWait(id)
        }
        defer { timer.cancel() }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let parked = state.withLock { state -> Bool in
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
        _ client: AgentClient, every interval: Duration, info: @Sendable (AgentInfo) -> Void,
        store: @Sendable (TelemetrySample) -> Void
    ) async {
        while !Task.isCancelled {
            do {
                let session = try await client.session(timeout: .seconds(60))
                info(try await session.info())
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
            return state.watchers.values.filter { $0.name == name }.map(\.continuation)
        }
        for watcher in watchers { watcher.yield(telemetry) }
    }

    private func remove(_ name: String) {
        let (runner, waiters) = state.withLock { state -> (Task<Void, Never>?, [Waiter]) in
            let runner = state.vms.removeValue(forKey: name)?.runner
            let matching = state.waiters.filter { $0.value.name == name }
            for key in matching.keys { state.waiters[key] = nil }
            return (runner, Array(matching.values))
        }
        runner?.cancel()
        for waiter in waiters { waiter.continuation?.resume() }
    }

    private func update(_ name: String, _ newState: DomainState, agentSocket: String) {
        let broker = self.broker, logger = self.logger
        let (stale, waiters) = state.withLock { state -> (Task<Void, Never>?, [Waiter]) in
            var entry = state.vms[name] ?? Entry(state: newState, agentSocket: agentSocket)
            entry.state = newState
            var stale: Task<Void, Never>?
            if newState.isActive, entry.agent == nil {
                var vmLogger = logger
                vmLogger[metadataKey: "vm"] = "\(name)"
                let agentLogger = vmLogger
                let client = AgentClient(address: .unix(path: agentSocket), configuration: broker, logger: agentLogger)
                entry.agent = client
                let interval = telemetryInterval
                let store: @Sendable (TelemetrySample) -> Void = { [weak self] sample in
                    self?.store(name, sample)
                }
                let info: @Sendable (AgentInfo) -> Void = { [weak self] info in
                    self?.state.withLock { $0.vms[name]?.info = info }
                }
                entry.runner = Task {
                    await withDiscardingTaskGroup { group in
                        group.addTask {
                            do { try await client.run() } catch {
                                agentLogger.debug("agent broker ended", metadata: ["error": "\(error)"])
                            }
                        }
                        group.addTask { await Self.collectTelemetry(client, every: interval, info: info, store: store) }
                    }
                }
            } else if !newState.isActive {
                stale = entry.runner
                entry.agent = nil
                entry.runner = nil
                entry.info = nil
            }
            state.vms[name] = entry
            let ready = state.waiters.filter { $0.value.name == name && $0.value.wanted(newState) }
            for key in ready.keys { state.waiters[key] = nil }
            return (stale, Array(ready.values))
        }
        stale?.cancel()
        for waiter in waiters { waiter.continuation?.resume() }
    }
}
