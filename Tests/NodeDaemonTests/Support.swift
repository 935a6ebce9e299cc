import Foundation
import LQXModel
import LQXServer
import Logging
import NodeCore
import NodeDaemon
import ServiceLifecycle

/// A node daemon's services in one ServiceGroup for a test, stopped gracefully by `stop()`.
struct RunningNode: Sendable {
    let node: NodeServer
    let group: ServiceGroup
    let task: Task<Void, any Error>
    let api: HostPort
    let metrics: HostPort?

    static func start(
        _ configuration: NodeConfiguration, hypervisor: (any Hypervisor)? = nil, logger: Logger
    ) async throws -> RunningNode {
        let node = try await NodeServer.build(configuration, hypervisor: hypervisor, logger: logger)
        let group = ServiceGroup(configuration: .init(services: node.services, logger: logger))
        let task = Task { try await group.run() }
        let bound = try await node.boundAddresses()
        return RunningNode(node: node, group: group, task: task, api: bound.api, metrics: bound.metrics)
    }

    func stop() async {
        await group.triggerGracefulShutdown()
        _ = try? await task.value
    }
}
