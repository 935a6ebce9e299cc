import ControlPlane
import ControlPlaneAPI
import GRPCCore
import LQXModel
import LQXServer

/// `EventService`: the event log (listed and followed) and the audit log.
struct EventService: Limiquantix_Compute_V1_EventService.ServiceProtocol {
    let cluster: Cluster
    var auth: Authentication { Authentication(cluster: cluster) }

    /// The store query for a request: a VM or node named by its name.
    func query(_ m: Limiquantix_Compute_V1_ListEventsRequest, _ principal: Principal) async throws(LQXError) -> LogQuery
    {
        let project = m.project.isEmpty ? (principal.project.isEmpty ? nil : principal.project) : m.project
        var object: String?
        if !m.vm.isEmpty {
            object = try await cluster.vm(project ?? Cluster.defaultProject, m.vm, by: principal).meta.id
        } else if !m.node.isEmpty {
            object = try await cluster.node(m.node, by: principal).meta.id
        }
        return LogQuery(
            after: m.after, object: object, project: m.node.isEmpty ? project : nil,
            limit: m.limit == 0 ? 1000 : Int(m.limit))
    }

    func listEvents(request: ServerRequest<Limiquantix_Compute_V1_ListEventsRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_ListEventsResponse>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let events = try await cluster.events(try await query(request.message, principal), by: principal)
                return .with { $0.events = events.map(\.proto) }
            })
    }

    func watchEvents(request: ServerRequest<Limiquantix_Compute_V1_ListEventsRequest>, context: ServerContext)
        async throws -> StreamingServerResponse<Limiquantix_Compute_V1_Event>
    {
        let (principal, initial) = try await auth.call(context, request.metadata) { principal in
            (principal, try await query(request.message, principal))
        }
        // Subscribed before the first read, so nothing committed in between is missed.
        let (changes, stop) = cluster.feed.changes()
        return StreamingServerResponse { writer in
            var query = initial
            // The client going away (or the server stopping) ends the stream of changes.
            try await withRPCCancellationHandler {
                try await RPCErrorMapping.mapping {
                    var iterator = changes.makeAsyncIterator()
                    repeat {
                        while true {
                            let events = try await cluster.events(query, by: principal)
                            for event in events { try await writer.write(event.proto) }
                            guard let last = events.last else { break }
                            query.after = last.sequence
                            if events.count < query.limit { break }
                        }
                    } while await iterator.next() != nil
                }
            } onCancelRPC: {
                stop()
            }
            return [:]
        }
    }

    func listAudit(request: ServerRequest<Limiquantix_Compute_V1_ListAuditRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_ListAuditResponse>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let m = request.message
                let records = try await cluster.audit(
                    LogQuery(
                        after: m.after, object: m.vm.isEmpty ? nil : m.vm, project: m.project.isEmpty ? nil : m.project,
                        limit: m.limit == 0 ? 1000 : Int(m.limit)), by: principal)
                return .with {
                    $0.records = records.map { r in
                        .with {
                            $0.sequence = r.sequence
                            $0.timeUnixMs = r.timeUnixMs
                            $0.user = r.user
                            $0.project = r.project
                            $0.vm = r.vm
                            $0.action = r.action
                            $0.detail = r.detail
                            $0.result = r.result
                        }
                    }
                }
            })
    }
}
