/// A list request that pages (`page_token`).
public protocol PagedRequest: Sendable {
    /// Where the page starts (empty: the first page).
    var pageToken: String { get set }
}

/// A page of a list (`next_page_token`: empty on the last page).
public protocol PagedResponse: Sendable {
    /// What the page holds.
    associatedtype Item
    /// The page's items.
    var items: [Item] { get }
    /// Where the next page starts; empty when this one is the last.
    var nextPageToken: String { get }
}

extension Limiquantix_Compute_V1_ListVMsRequest: PagedRequest {}
extension Limiquantix_Compute_V1_ListNodesRequest: PagedRequest {}

extension Limiquantix_Compute_V1_ListVMsResponse: PagedResponse {
    /// The VMs of the page.
    public var items: [Limiquantix_Compute_V1_VM] { vms }
}

extension Limiquantix_Compute_V1_ListNodesResponse: PagedResponse {
    /// The nodes of the page.
    public var items: [Limiquantix_Compute_V1_Node] { nodes }
}

/// Every item of a paged list: `call` is made for the first page (`request` as given) and again
/// with each next page token until the last page.
public func everyPage<Request: PagedRequest, Response: PagedResponse>(
    _ request: Request, _ call: (Request) async throws -> Response
) async throws -> [Response.Item] {
    var items: [Response.Item] = []
    var page = request
    while true {
        let reply = try await call(page)
        items += reply.items
        guard !reply.nextPageToken.isEmpty else { return items }
        page.pageToken = reply.nextPageToken
    }
}
