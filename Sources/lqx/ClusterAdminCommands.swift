#if NodeClient
    import ArgumentParser
    import ControlPlaneAPI
    import Foundation
    import GRPCCore
    import GRPCNIOTransportHTTP2Posix
    import LQXModel
    import LQXServer

    typealias ClusterTransport = HTTP2ClientTransport.Posix

    extension ClusterEndpoint {
        func projects<T: Sendable>(
            _ body:
                @Sendable @escaping (Limiquantix_Compute_V1_ProjectService.Client<ClusterTransport>) async throws -> T
        ) async throws -> T {
            try await with { try await body(.init(wrapping: $0)) }
        }

        func tokens<T: Sendable>(
            _ body: @Sendable @escaping (Limiquantix_Compute_V1_TokenService.Client<ClusterTransport>) async throws -> T
        ) async throws -> T {
            try await with { try await body(.init(wrapping: $0)) }
        }

        func events<T: Sendable>(
            _ body: @Sendable @escaping (Limiquantix_Compute_V1_EventService.Client<ClusterTransport>) async throws -> T
        ) async throws -> T {
            try await with { try await body(.init(wrapping: $0)) }
        }
    }

    /// `30s`, `15m`, `1h`, `2d` or plain seconds; nil when it is none of these (or overflows).
    func durationSeconds(_ text: String) -> UInt32? {
        let units: [Character: UInt32] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        if let last = text.last, let unit = units[last], let number = UInt32(text.dropLast()) {
            let (product, overflow) = number.multipliedReportingOverflow(by: unit)
            return overflow ? nil : product
        }
        return UInt32(text)
    }

    func time(_ unixMs: Int64) -> String {
        guard unixMs > 0 else { return "-" }
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: Date(timeIntervalSince1970: Double(unixMs) / 1000))
    }

    // MARK: node

    struct ClusterNode: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "node",
            abstract: "Nodes of the cluster: list, cordon, labels, taints, join tokens, operator certificates.",
            subcommands: [
                List.self, Get.self, Cordon.self, Uncordon.self, Drain.self, Label.self, Taint.self, Delete.self,
                JoinToken.self, OperatorCert.self,
            ])

        static let header = ["NAME", "PHASE", "ADDRESS", "VCPUS", "MIB", "VMS", "SCHEDULABLE", "LABELS", "TAINTS"]

        static func row(_ node: Limiquantix_Compute_V1_Node) -> [String] {
            let s = node.status
            return [
                node.metadata.name, phaseName(s.phase, prefix: ""), s.address,
                "\(s.allocated.cpus)/\(s.allocatable.cpus)", "\(s.allocated.memoryMib)/\(s.allocatable.memoryMib)",
                "\(s.vmCount)", node.spec.unschedulable ? "no (cordoned)" : "yes",
                node.spec.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","),
                node.spec.taints.map { "\($0.key)\($0.value.isEmpty ? "" : "=\($0.value)"):\($0.effect)" }
                    .joined(separator: ","),
            ]
        }

        static func one(
            _ options: ClusterOptions, _ output: OutputFormat, verb: String,
            _ call:
                @Sendable @escaping (Limiquantix_Compute_V1_NodeService.Client<ClusterTransport>, Metadata)
                async throws -> Limiquantix_Compute_V1_Node
        ) async throws {
            try await clusterCall(options) { endpoint in
                let metadata = endpoint.metadata
                let node = try await endpoint.nodes { try await call($0, metadata) }
                print(output == .json ? try nodeJSON(node) : "\(node.metadata.name): \(verb)")
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "List nodes: phase, allocated/allocatable vCPUs and MiB, VMs, labels, taints.")
            @OptionGroup var options: ClusterOptions
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
            func run() async throws {
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    let nodes = try await endpoint.nodes { client in
                        try await everyPage(Limiquantix_Compute_V1_ListNodesRequest()) {
                            try await client.listNodes($0, metadata: metadata)
                        }
                    }
                    try printList(nodes, key: "nodes", output: output, header: ClusterNode.header, row: ClusterNode.row)
                }
            }
        }

        struct Get: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show a node.")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "Node name.") var name: String
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
            func run() async throws {
                let name = self.name
                if output == .json {
                    try await ClusterNode.one(options, .json, verb: "") {
                        try await $0.getNode(.with { $0.name = name }, metadata: $1)
                    }
                    return
                }
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    let node = try await endpoint.nodes {
                        try await $0.getNode(.with { $0.name = name }, metadata: metadata)
                    }
                    try printList([node], key: "nodes", output: .text, header: ClusterNode.header, row: ClusterNode.row)
                    let i = node.status.inventory
                    print(
                        "inventory: \(i.cpuModel), \(i.sockets)×\(i.cores)×\(i.threads), \(i.hypervisor), vsock \(i.vsock), uefi \(i.uefi); version \(node.status.version)"
                    )
                    // Node-reported text: printed sanitized.
                    let migration = node.status.migrationUri
                    print("live migrations: \(migration.isEmpty ? "not taken" : TerminalText.safe(migration))")
                    for storage in node.status.sharedStorage {
                        print(
                            "shared storage: \(TerminalText.safe(storage.path)) (id \(TerminalText.safe(storage.id)))")
                    }
                }
            }
        }

        struct Cordon: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Take no new VMs on a node.")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "Node name.") var name: String
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
            func run() async throws {
                let name = self.name
                try await ClusterNode.one(options, output, verb: "cordoned") {
                    try await $0.cordonNode(.with { $0.name = name }, metadata: $1)
                }
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Remove a node from the cluster (a host decommissioned or replaced).",
                discussion: """
                    Only a node no VM is placed on, and that is in MAINTENANCE (drained), OFFLINE, NOT_READY \
                    or PENDING: drain it first. Its heartbeats are refused afterwards; to come back, remove \
                    STATE_DIR/cluster on the host and join again with a new token.
                    """)
            @OptionGroup var options: ClusterOptions
            @Argument(help: "Node name.") var name: String
            func run() async throws {
                let name = self.name
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    _ = try await endpoint.nodes {
                        try await $0.deleteNode(.with { $0.name = name }, metadata: metadata)
                    }
                    print("node \(TerminalText.safe(name)) deleted")
                }
            }
        }

        struct Uncordon: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Take new VMs on a node again.")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "Node name.") var name: String
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
            func run() async throws {
                let name = self.name
                try await ClusterNode.one(options, output, verb: "uncordoned") {
                    try await $0.uncordonNode(.with { $0.name = name }, metadata: $1)
                }
            }
        }

        struct Drain: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Move every VM off a node; the node ends in MAINTENANCE.",
                discussion: """
                    A running VM whose disks can follow (read-only path disks, writable ones on shared storage \
                    both nodes declare with lqx-node --shared-storage) is live-migrated to a node started with \
                    --migration-uri. Every other VM is stopped on the node (through its agent), removed there \
                    and placed again by the scheduler. Either way it never runs twice. VMs whose disks the \
                    node created (clones, new disks) cannot leave it: the drain is then refused, naming them. \
                    `lqx node uncordon NAME` ends maintenance.
                    """)
            @OptionGroup var options: ClusterOptions
            @Argument(help: "Node name.") var name: String
            func run() async throws {
                let name = self.name
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    try await endpoint.nodes { client in
                        try await client.drainNode(.with { $0.name = name }, metadata: metadata) { response in
                            for try await p in response.messages {
                                if p.vm.isEmpty {
                                    print("\(name): drained, MAINTENANCE (lqx node uncordon \(name) ends it)")
                                } else if p.done {
                                    print(
                                        "\(TerminalText.safe(p.vm)): moved off, now on \(TerminalText.safe(p.target)) (\(p.remaining) left)"
                                    )
                                } else {
                                    print("\(TerminalText.safe(p.vm)): waiting: \(TerminalText.safe(p.error))")
                                }
                            }
                        }
                    }
                }
            }
        }

        struct Label: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Set a node label (KEY=VALUE) or remove it (KEY-).")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "Node name.") var name: String
            @Argument(help: "KEY=VALUE, or KEY- to remove.") var label: String
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
            func run() async throws {
                let name = self.name, label = self.label
                try await ClusterNode.one(options, output, verb: "labelled \(label)") { client, metadata in
                    try await client.labelNode(
                        .with {
                            $0.name = name
                            if label.hasSuffix("-") {
                                $0.key = String(label.dropLast())
                            } else if let eq = label.firstIndex(of: "=") {
                                $0.key = String(label[..<eq])
                                $0.value = String(label[label.index(after: eq)...])
                            } else {
                                $0.key = label
                                $0.value = ""
                            }
                        }, metadata: metadata)
                }
            }
        }

        struct Taint: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Taint a node (KEY[=VALUE]:EFFECT) or remove a key's taints (KEY-).")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "Node name.") var name: String
            @Argument(help: "KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute, or KEY- to remove.") var taint: String
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
            func run() async throws {
                let name = self.name, text = self.taint
                let key: String, value: String, effect: Limiquantix_Compute_V1_TaintEffect
                if text.hasSuffix("-") {
                    (key, value, effect) = (String(text.dropLast()), "", .unspecified)
                } else {
                    do throws(LQXError) {
                        let parsed = try NodeSpec.Taint.parse(text, field: "taint")
                        guard let parsedEffect = parsed.effect else {
                            throw LQXError(.invalidSpec, "taint \(text) needs an effect (:NoSchedule, …)")
                        }
                        key = parsed.key
                        value = parsed.value ?? ""
                        effect =
                            switch parsedEffect {
                            case .noSchedule: .noSchedule
                            case .preferNoSchedule: .preferNoSchedule
                            case .noExecute: .noExecute
                            }
                    } catch {
                        throw ValidationError(error.message)
                    }
                }
                try await ClusterNode.one(options, output, verb: "tainted \(text)") { client, metadata in
                    try await client.taintNode(
                        .with {
                            $0.name = name
                            $0.key = key
                            $0.value = value
                            $0.effect = effect
                        }, metadata: metadata)
                }
            }
        }

        struct OperatorCert: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "operator-cert",
                abstract: "Client certificates for calling joined nodes directly (lqx --node).",
                subcommands: [Create.self])

            struct Create: AsyncParsableCommand {
                static let configuration = CommandConfiguration(
                    abstract: "Get a certificate of the cluster CA naming you, for node APIs (admins).",
                    discussion: """
                        Makes a P-256 key here (it never leaves this machine), has the control plane sign \
                        a certificate for it naming operator:<your user>, and writes operator.key (0600), \
                        operator.crt and ca.crt into --out. Joined nodes admit it on their mutual-TLS API: \
                        lqx --node HOST:PORT --node-credentials DIR vm list. Certificates cannot be revoked \
                        yet: keep them short-lived (12 h by default, at most 30 days). Each one issued is in \
                        the audit log with its SHA-256.
                        """)
                @OptionGroup var options: ClusterOptions
                @Option(help: "How long it is valid: 30m, 12h (default), 7d, or seconds (at most 30d).")
                var ttl: String = "12h"
                @Option(
                    help: "Directory to write into (default: ~/.config/limiquantix/node-credentials).",
                    completion: .directory)
                var out: String?
                @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

                func run() async throws {
                    guard let seconds = durationSeconds(ttl), seconds > 0 else {
                        throw ValidationError("--ttl takes a duration like 30m, 12h or 7d (at most 30d)")
                    }
                    let directory =
                        out ?? ((ClusterConfig.path as NSString).deletingLastPathComponent + "/node-credentials")
                    try await clusterCall(options) { endpoint in
                        let metadata = endpoint.metadata
                        let key = try KeyAndRequest.generate(commonName: "operator")
                        let issued = try await endpoint.nodes { client in
                            try await client.issueOperatorCertificate(
                                .with {
                                    $0.certificateRequest = Data(key.requestDER)
                                    $0.ttlSeconds = seconds
                                }, metadata: metadata)
                        }
                        let files = NodeTarget.credentialFiles
                        try PKIFiles.write(key.keyPEM, to: "\(directory)/\(files.key)")
                        try PKIFiles.write(issued.certificatePem, to: "\(directory)/\(files.certificate)", mode: 0o644)
                        try PKIFiles.write(issued.caPem, to: "\(directory)/\(files.ca)", mode: 0o644)
                        if output == .json {
                            print(try nodeJSON(issued))
                            return
                        }
                        print(directory)
                        FileHandle.standardError.write(
                            Data(
                                """
                                \(issued.identity), valid until \(time(issued.expiresUnixMs)) (sha256 \(issued.sha256)). Use it with:
                                  lqx --node HOST:PORT --node-credentials \(directory) vm list
                                  (or export LQX_NODE_CREDENTIALS=\(directory))

                                """.utf8))
                    }
                }
            }
        }

        struct JoinToken: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "join-token", abstract: "Single-use tokens nodes join with.", subcommands: [Create.self])

            struct Create: AsyncParsableCommand {
                static let configuration = CommandConfiguration(
                    abstract: "Create a join token and print the lqx-node command line that uses it.")
                @OptionGroup var options: ClusterOptions
                @Option(help: "How long it is valid: 30m, 1h (default), 2d, or seconds.") var ttl: String = "1h"
                @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

                func run() async throws {
                    guard let seconds = durationSeconds(ttl) else {
                        throw ValidationError("--ttl takes a duration like 30m, 1h or 2d (at most 7d)")
                    }
                    try await clusterCall(options) { endpoint in
                        let metadata = endpoint.metadata
                        let token = try await endpoint.nodes { client in
                            try await client.createJoinToken(.with { $0.ttlSeconds = seconds }, metadata: metadata)
                        }
                        if output == .json {
                            print(try nodeJSON(token))
                            return
                        }
                        print(token.token)
                        FileHandle.standardError.write(
                            Data(
                                """
                                valid until \(time(token.expiresUnixMs)), once. On the node:
                                  lqx-node --control-plane \(endpoint.address) --join-token \(token.token) --ca-sha256 \(token.caSha256) --listen 0.0.0.0:7443

                                """.utf8))
                    }
                }

            }
        }
    }

    // MARK: project, token

    struct ClusterProject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "project", abstract: "Projects and their quotas.",
            subcommands: [Create.self, List.self, Quota.self])

        struct QuotaOptions: ParsableArguments {
            @Option(help: "At most this many vCPUs (default: unlimited).") var vcpus: UInt32?
            @Option(name: .customLong("memory"), help: "At most this many MiB.") var memory: UInt64?
            @Option(help: "At most this many VMs.") var vms: UInt32?

            var quota: Limiquantix_Compute_V1_Quota {
                .with {
                    if let vcpus { $0.vcpus = vcpus }
                    if let memory { $0.memoryMib = memory }
                    if let vms { $0.vms = vms }
                }
            }
        }

        static func row(_ p: Limiquantix_Compute_V1_Project) -> [String] {
            [
                p.metadata.name, p.quota.hasVcpus ? "\(p.quota.vcpus)" : "-",
                p.quota.hasMemoryMib ? "\(p.quota.memoryMib)" : "-", p.quota.hasVms ? "\(p.quota.vms)" : "-",
            ]
        }

        struct Create: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Create a project (admins).")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "Project name.") var name: String
            @OptionGroup var quota: QuotaOptions
            func run() async throws {
                let name = self.name, quota = self.quota.quota
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    let project = try await endpoint.projects { client in
                        try await client.createProject(
                            .with {
                                $0.name = name
                                $0.quota = quota
                            }, metadata: metadata)
                    }
                    print("created project \(project.metadata.name)")
                }
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List projects with their quotas.")
            @OptionGroup var options: ClusterOptions
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
            func run() async throws {
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    let projects = try await endpoint.projects {
                        try await $0.listProjects(.init(), metadata: metadata).projects
                    }
                    try printList(
                        projects, key: "projects", output: output, header: ["NAME", "VCPUS", "MIB", "VMS"],
                        row: ClusterProject.row)
                }
            }
        }

        struct Quota: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Set a project's quota (unset: unlimited).")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "Project name.") var name: String
            @OptionGroup var quota: QuotaOptions
            func run() async throws {
                let name = self.name, quota = self.quota.quota
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    let project = try await endpoint.projects { client in
                        try await client.setQuota(
                            .with {
                                $0.project = name
                                $0.quota = quota
                            }, metadata: metadata)
                    }
                    print(
                        "project \(project.metadata.name): quota "
                            + ClusterProject.row(project).dropFirst().joined(separator: " "))
                }
            }
        }
    }

    struct ClusterToken: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "token", abstract: "API tokens (admins).", subcommands: [Create.self, List.self, Revoke.self])

        struct Create: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Create a token; it is shown once.")
            @OptionGroup var options: ClusterOptions
            @Option(help: "Whose token it is (audit records name them).") var user: String
            @Option(help: "viewer, operator or admin.") var role: String = "viewer"
            @Option(name: .customLong("for-project"), help: "Only this project (default: every project).")
            var forProject: String?
            @Option(help: "Expire after this many seconds (default: never).") var ttl: UInt32?
            func run() async throws {
                let role: Limiquantix_Compute_V1_Role
                switch self.role {
                case "viewer": role = .viewer
                case "operator": role = .operator
                case "admin": role = .admin
                default: throw ValidationError("--role is viewer, operator or admin")
                }
                let user = self.user, project = forProject ?? "", ttl = self.ttl ?? 0
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    let created = try await endpoint.tokens { client in
                        try await client.createToken(
                            .with {
                                $0.user = user
                                $0.role = role
                                $0.project = project
                                $0.ttlSeconds = ttl
                            }, metadata: metadata)
                    }
                    print(created.token)
                    FileHandle.standardError.write(Data("token \(created.info.id) for \(user); shown once\n".utf8))
                }
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List tokens (never their secrets).")
            @OptionGroup var options: ClusterOptions
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
            func run() async throws {
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    let tokens = try await endpoint.tokens {
                        try await $0.listTokens(.init(), metadata: metadata).tokens
                    }
                    try printList(
                        tokens, key: "tokens", output: output,
                        header: ["ID", "USER", "ROLE", "PROJECT", "EXPIRES", "REVOKED"]
                    ) { t in
                        [
                            t.id, t.user, phaseName(t.role, prefix: ""), t.project.isEmpty ? "*" : t.project,
                            time(t.expiresUnixMs), t.revoked ? "yes" : "no",
                        ]
                    }
                }
            }
        }

        struct Revoke: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Revoke a token by id.")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "Token id (from token list).") var id: String
            func run() async throws {
                let id = self.id
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    _ = try await endpoint.tokens { try await $0.revokeToken(.with { $0.id = id }, metadata: metadata) }
                    print("revoked \(id)")
                }
            }
        }
    }

    // MARK: events, audit

    struct ClusterEvents: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "events", abstract: "The event log of VMs and nodes; -f follows it.")
        @OptionGroup var options: ClusterOptions
        @Option(help: "Only this VM's events.") var vm: String?
        @Option(help: "Only this node's events.") var node: String?
        @Flag(name: .shortAndLong, help: "Keep printing new events.") var follow = false
        @Option(name: .shortAndLong, help: "Output format: text or json (one document per line).")
        var output: OutputFormat = .text

        static func line(_ e: Limiquantix_Compute_V1_Event, _ output: OutputFormat) throws -> String {
            if output == .json { return try nodeJSON(e) }
            let object = e.project.isEmpty ? e.objectName : "\(e.project)/\(e.objectName)"
            return TerminalText.safe("\(time(e.timeUnixMs))  \(e.type)  \(e.kind) \(object)  \(e.reason): \(e.message)")
        }

        func run() async throws {
            let request = Limiquantix_Compute_V1_ListEventsRequest.with {
                $0.vm = vm ?? ""
                $0.node = node ?? ""
                $0.project = options.project ?? ""
            }
            let output = self.output, follow = self.follow
            try await clusterCall(options) { endpoint in
                let metadata = endpoint.metadata
                try await endpoint.events { client in
                    if follow {
                        try await client.watchEvents(request, metadata: metadata) { response in
                            for try await event in response.messages { print(try ClusterEvents.line(event, output)) }
                        }
                    } else {
                        for event in try await client.listEvents(request, metadata: metadata).events {
                            print(try ClusterEvents.line(event, output))
                        }
                    }
                }
            }
        }
    }

    struct ClusterAudit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "audit", abstract: "Who ran what in which VM: exec, file transfers, power operations.")
        @OptionGroup var options: ClusterOptions
        @Option(help: "Only this VM's records.") var vm: String?
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

        func run() async throws {
            let request = Limiquantix_Compute_V1_ListAuditRequest.with {
                $0.vm = vm ?? ""
                $0.project = options.project ?? ""
            }
            let output = self.output
            try await clusterCall(options) { endpoint in
                let metadata = endpoint.metadata
                let records = try await endpoint.events { try await $0.listAudit(request, metadata: metadata).records }
                try printList(
                    records, key: "records", output: output,
                    header: ["TIME", "USER", "VM", "ACTION", "DETAIL", "RESULT"]
                ) { r in
                    [time(r.timeUnixMs), r.user, "\(r.project)/\(r.vm)", r.action, r.detail, r.result]
                }
            }
        }
    }
#endif
