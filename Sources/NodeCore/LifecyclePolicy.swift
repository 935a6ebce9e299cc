/// How long lifecycle operations wait, in one place (the API layer passes requests through; it
/// decides no timing of its own).
public struct LifecyclePolicy: Sendable, Equatable {
    /// A graceful stop's time for the guest to power off before the VM is stopped at once, when
    /// the request gives none.
    public var stopTimeout: Duration
    /// The longest graceful stop a request may ask for.
    public var maximumStopTimeout: Duration
    /// How long an operation waits for the hypervisor's event confirming its effect (started,
    /// stopped) before it reports the state it reads.
    public var settle: Duration
    /// How long an in-guest operation waits for the VM's agent session.
    public var agentWait: Duration
    /// How long detaching a disk from a running VM waits for the guest to release it.
    public var detachTimeout: Duration

    /// The defaults: 60 s to stop (at most a day), 10 s to settle, 15 s for an agent, 20 s to detach.
    public init(
        stopTimeout: Duration = .seconds(60), maximumStopTimeout: Duration = .seconds(86400),
        settle: Duration = .seconds(10), agentWait: Duration = .seconds(15), detachTimeout: Duration = .seconds(20)
    ) {
        self.stopTimeout = stopTimeout
        self.maximumStopTimeout = maximumStopTimeout
        self.settle = settle
        self.agentWait = agentWait
        self.detachTimeout = detachTimeout
    }
}
