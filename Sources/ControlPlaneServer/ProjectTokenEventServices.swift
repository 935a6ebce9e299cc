import ControlPlane
import ControlPlaneAPI
import GRPCCore
import LQXModel
import LQXServer

/// `ProjectService`: projects and quotas.
struct ProjectService: Limiquantix_Compute_V1_ProjectService.ServiceProtocol {
    let cluster: Cluster
    var auth: Authentication { Authentication(cluster: cluster) }

    func createProject(
        request: ServerRequest<Limiquantix_Compute_V1_CreateProjectRequest>, context: ServerContext
    ) async throws -> ServerResponse<Limiquantix_Compute_V1_Project> {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                try await cluster.createProject(
                    request.message.name, quota: Project.Quota(request.message.quota), by: principal
                ).proto
            })
    }

    func listProjects(
        request: ServerRequest<Limiquantix_Compute_V1_ListProjectsRequest>, context: ServerContext
    ) async throws -> ServerResponse<Limiquantix_Compute_V1_ListProjectsResponse> {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let projects = try await cluster.projects(by: principal)
                return .with { $0.projects = projects.map(\.proto) }
            })
    }

    func setQuota(request: ServerRequest<Limiquantix_Compute_V1_SetQuotaRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_Project>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                try await cluster.setQuota(
                    request.message.project, Project.Quota(request.message.quota), by: principal
                ).proto
            })
    }
}

/// `ClusterService`: cluster-wide settings.
struct ClusterService: Limiquantix_Compute_V1_ClusterService.ServiceProtocol {
    let cluster: Cluster
    var auth: Authentication { Authentication(cluster: cluster) }

    func getClusterSettings(
        request: ServerRequest<Limiquantix_Compute_V1_GetClusterSettingsRequest>, context: ServerContext
    ) async throws -> ServerResponse<Limiquantix_Compute_V1_ClusterSettings> {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                try await cluster.settings(by: principal).proto
            })
    }

    func setClusterSetting(
        request: ServerRequest<Limiquantix_Compute_V1_SetClusterSettingRequest>, context: ServerContext
    ) async throws -> ServerResponse<Limiquantix_Compute_V1_ClusterSettings> {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                try await cluster.setSetting(request.message.key, to: request.message.value, by: principal).proto
            })
    }
}

/// `TokenService`: API tokens.
struct TokenService: Limiquantix_Compute_V1_TokenService.ServiceProtocol {
    let cluster: Cluster
    var auth: Authentication { Authentication(cluster: cluster) }

    func createToken(request: ServerRequest<Limiquantix_Compute_V1_CreateTokenRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_CreatedToken>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let m = request.message
                let role: Role =
                    switch m.role {
                    case .admin: .admin
                    case .operator: .operator
                    default: .viewer
                    }
                let (token, record) = try await cluster.createToken(
                    user: m.user, role: role, project: m.project,
                    ttl: m.ttlSeconds == 0 ? nil : .seconds(m.ttlSeconds), by: principal)
                return .with {
                    $0.token = token
                    $0.info = record.proto
                }
            })
    }

    func listTokens(request: ServerRequest<Limiquantix_Compute_V1_ListTokensRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_ListTokensResponse>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                let tokens = try await cluster.tokens(by: principal)
                return .with { $0.tokens = tokens.map(\.proto) }
            })
    }

    func revokeToken(request: ServerRequest<Limiquantix_Compute_V1_RevokeTokenRequest>, context: ServerContext)
        async throws -> ServerResponse<Limiquantix_Compute_V1_RevokeTokenResponse>
    {
        ServerResponse(
            message: try await auth.call(context, request.metadata) { principal in
                try await cluster.revokeToken(id: request.message.id, by: principal)
                return Limiquantix_Compute_V1_RevokeTokenResponse()
            })
    }
}
