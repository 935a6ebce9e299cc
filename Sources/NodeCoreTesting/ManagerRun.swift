import NodeCore

/// A VM manager's `run()` in the background for a test (the daemon runs it in its ServiceGroup).
public final class ManagerRun: Sendable {
    /// The task running the manager.
    public let task: Task<Void, Never>

    /// Adopts the VMs, then runs the manager until `stop()`.
    public init(_ manager: VMManager) async throws {
        try await manager.adopt()
        // Unstructured on purpose (a test kit): cancelled by `stop()` or by the test through `task`.
        task = Task { try? await manager.run() }
    }

    /// Stops the brokers (as a daemon stopping would) and waits until they ended.
    public func stop() async {
        task.cancel()
        await task.value
    }
}
