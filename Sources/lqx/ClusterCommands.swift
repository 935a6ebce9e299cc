#if NodeClient
    import ArgumentParser
    import ControlPlaneAPI
    import Foundation
    import GRPCCore
    import GRPCNIOTransportHTTP2Posix
    import LQXModel
    import LQXServer
    import LQXTypes
    import SwiftProtobuf

    /// `lqx` against a control plane (no --node, no --agent).
    struct LqxCluster: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "lqx",
            abstract: "limiquantix operator CLI: the cluster through its control plane.",
            discussion: """
                Commands go to the control plane saved by `lqx login HOST:PORT --token T`, or given by \
                --server / $LQX_SERVER and --token / $LQX_TOKEN. VMs are named within a project \
                (--project, default: the token's, else default). Every get and list takes -o json.

                `lqx --node HOST:PORT …` talks to one node daemon instead, and `lqx --agent ADDR …` to \
                one guest agent (info, ping, shutdown and the rest): see `lqx --node X --help`.

                Exit status: the remote command's for exec (128+N when killed by signal N), 255 when \
                lqx itself or the call fails.
                """,
            version: LimiquantixVersion.current,
            subcommands: [
                Login.self, ClusterVM.self, ClusterNode.self, ClusterSettingsCommand.self, ClusterProject.self,
                ClusterToken.self,
                ClusterEvents.self, ClusterAudit.self, Exec.self, Copy.self, Metrics.self, Top.self,
                // Agent commands: they need --agent, which selects the other command tree.
                Info.self, Ping.self, Shutdown.self,
            ])

        // Declared here too, so `lqx --server X vm list` reads them before the command name.
        @OptionGroup var cluster: ClusterOptions
    }

    /// Runs `body` against the control plane, printing failures as `lqx: message [code]`.
    func clusterCall(_ options: ClusterOptions, _ body: (ClusterEndpoint) async throws -> Void) async throws {
        try await runReportingErrors { try await body(try options.endpoint()) }
    }

    /// Prints `messages` as JSON (one document with `key`) or as aligned text rows.
    func printList<M: SwiftProtobuf.Message>(
        _ messages: [M], key: String, output: OutputFormat, header: [String], row: (M) -> [String]
    ) throws {
        if output == .json {
            let items = try messages.map { try nodeJSON($0) }
            print("{\"\(key)\":[\(items.joined(separator: ","))]}")
            return
        }
        let rows = [header] + messages.map { row($0).map(TerminalText.safe) }
        var widths = [Int](repeating: 0, count: header.count)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        for row in rows {
            let cells = row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }
            print(cells.joined(separator: "  "))
        }
    }

    /// An enum case as the schema writes it: `notReady` → `NOT_READY`.
    func phaseName<E: SwiftProtobuf.Enum>(_ value: E, prefix: String = "") -> String {
        var out = ""
        for character in "\(value)" {
            if character.isUppercase, !out.isEmpty { out += "_" }
            out += character.uppercased()
        }
        return out
    }

    func keyValues(_ pairs: [String], flag: String) throws -> [String: String] {
        var result: [String: String] = [:]
        for pair in pairs {
            guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                throw ValidationError("\(flag) takes KEY=VALUE, got \(pair)")
            }
            result[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
        }
        return result
    }

    /// The HA options' parsing and names.
    enum HAOptions {
        static let names: [(String, Limiquantix_Compute_V1_HAPriority)] = [
            ("lowest", .lowest), ("low", .low), ("medium", .medium), ("high", .high), ("highest", .highest),
        ]

        /// The priority `--ha-priority` names, nil when not given.
        static func priority(_ text: String?) throws -> Limiquantix_Compute_V1_HAPriority? {
            guard let text else { return nil }
            guard let match = names.first(where: { $0.0 == text.lowercased() }) else {
                throw ValidationError("--ha-priority is one of lowest, low, medium, high, highest (got \(text))")
            }
            return match.1
        }

        /// `high` for `.high`.
        static func name(_ priority: Limiquantix_Compute_V1_HAPriority) -> String {
            names.first { $0.1 == priority }?.0 ?? "medium"
        }
    }

    // MARK: vm

    struct ClusterVM: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "vm", abstract: "VMs of the cluster: create, list, power, delete, explain.",
            subcommands: [
                Create.self, List.self, Get.self, Change.self, Power.Start.self, Power.Stop.self, Power.Restart.self,
                Power.Pause.self, Power.Resume.self, Delete.self, Explain.self,
            ])

        struct Create: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create a VM; the scheduler places it and its node starts it.",
                discussion: """
                    Image and kernel paths are paths on the node the VM is placed on (an image library \
                    comes later): constrain placement to nodes that have them. Placement: --node-selector on node labels, --toleration for tainted nodes \
                    (KEY[=VALUE][:NoSchedule|PreferNoSchedule|NoExecute]), --affinity / --anti-affinity \
                    groups (hard; soft with a trailing ~). `lqx vm explain NAME` shows why it went where \
                    it did, or why it waits.
                    """)
            @OptionGroup var options: ClusterOptions
            @Argument(help: "VM name (letters, digits, - _ .; unique in its project).") var name: String
            @Option(help: "Kernel to boot directly (path on the nodes).") var kernel: String?
            @Option(help: "Initramfs for --kernel.") var initrd: String?
            @Option(help: "Kernel command line for --kernel.") var cmdline: String = "console=ttyS0"
            @Option(help: "Existing disk image on the node (repeatable).") var disk: [String] = []
            @Option(help: "New qcow2 image backed by this image (repeatable).") var clone: [String] = []
            @Option(help: "vCPUs.") var cpus: UInt32 = 1
            @Option(help: "Memory in MiB.") var memory: UInt64 = 512
            @Option(help: "Label KEY=VALUE (repeatable).") var label: [String] = []
            @Option(name: .customLong("node-selector"), help: "Only nodes labelled KEY=VALUE (repeatable).")
            var nodeSelector: [String] = []
            @Option(help: "Tolerate a taint KEY[=VALUE][:EFFECT] (repeatable).") var toleration: [String] = []
            @Option(name: .customLong("affinity"), help: "Run with the VMs of this group (GROUP, or GROUP~ soft).")
            var affinity: [String] = []
            @Option(name: .customLong("anti-affinity"), help: "Never beside the VMs of this group (GROUP~: soft).")
            var antiAffinity: [String] = []
            @Option(help: "spread (default) or pack.") var strategy: String?
            @Flag(help: "Create it stopped.") var stopped = false
            @Flag(help: "Restart it on another node when its node fails (admission control may refuse it).")
            var ha = false
            @Option(name: .customLong("ha-priority"), help: "lowest, low, medium (default), high or highest.")
            var haPriority: String?
            @Option(name: .customLong("ha-max-restarts"), help: "Restarts by HA per hour at most (default 3).")
            var haMaxRestarts: UInt32?
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

            func validate() throws {
                if !ha && (haPriority != nil || haMaxRestarts != nil) {
                    throw ValidationError("--ha-priority and --ha-max-restarts need --ha")
                }
                _ = try HAOptions.priority(haPriority)
                if kernel == nil && initrd != nil { throw ValidationError("--initrd needs --kernel") }
                if kernel == nil && disk.isEmpty && clone.isEmpty {
                    throw ValidationError("give --kernel PATH (with --initrd) or a disk to boot (--disk, --clone)")
                }
                if let strategy, !["spread", "pack"].contains(strategy) {
                    throw ValidationError("--strategy is spread or pack")
                }
            }

            func run() async throws {
                try await clusterCall(options) { endpoint in
                    let labels = try keyValues(label, flag: "--label")
                    let selector = try keyValues(nodeSelector, flag: "--node-selector")
                    var tolerations: [Limiquantix_Compute_V1_Toleration] = []
                    for text in toleration {
                        let parsed: (key: String, value: String?, effect: NodeSpec.Taint.Effect?)
                        do throws(LQXError) {
                            parsed = try NodeSpec.Taint.parse(text, field: "--toleration")
                        } catch {
                            throw ValidationError(error.message)
                        }
                        tolerations.append(
                            .with {
                                $0.key = parsed.key
                                if let value = parsed.value { $0.value = value }
                                $0.effect =
                                    switch parsed.effect {
                                    case .noSchedule?: .noSchedule
                                    case .preferNoSchedule?: .preferNoSchedule
                                    case .noExecute?: .noExecute
                                    case nil: .unspecified
                                    }
                            })
                    }
                    func rules(_ groups: [String]) -> [Limiquantix_Compute_V1_GroupRule] {
                        groups.map { group in
                            .with {
                                $0.group = group.hasSuffix("~") ? String(group.dropLast()) : group
                                $0.soft = group.hasSuffix("~")
                            }
                        }
                    }
                    let request = Limiquantix_Compute_V1_CreateVMRequest.with {
                        $0.project = endpoint.project
                        $0.name = name
                        $0.labels = labels
                        $0.spec = .with {
                            $0.runState = stopped ? .stopped : .running
                            $0.machine = .with {
                                $0.vcpus = cpus
                                $0.memoryMib = memory
                                if let kernel {
                                    $0.kernel = .with {
                                        $0.kernel = kernel
                                        $0.initrd = initrd ?? ""
                                        $0.cmdline = cmdline
                                    }
                                }
                                $0.disks =
                                    disk.map { path in .with { $0.path = path } }
                                    + clone.map { image in .with { $0.cloneOf = image } }
                            }
                            $0.placement = .with {
                                $0.nodeSelector = selector
                                $0.tolerations = tolerations
                                $0.affinity = rules(affinity)
                                $0.antiAffinity = rules(antiAffinity)
                                $0.strategy =
                                    switch strategy {
                                    case "spread": .spread
                                    case "pack": .pack
                                    default: .clusterDefault
                                    }
                            }
                            if ha {
                                $0.ha = .with {
                                    $0.enabled = true
                                    if let priority = try? HAOptions.priority(haPriority) { $0.priority = priority }
                                    if let haMaxRestarts { $0.maxRestarts = haMaxRestarts }
                                }
                            }
                        }
                    }
                    let metadata = endpoint.metadata
                    let vm = try await endpoint.vms { try await $0.createVM(request, metadata: metadata) }
                    if output == .json {
                        print(try nodeJSON(vm))
                    } else {
                        let phase = phaseName(vm.status.phase, prefix: "")
                        let place =
                            vm.status.node.isEmpty
                            ? "waiting for a node (lqx vm explain \(name))" : "on \(vm.status.node)"
                        print("created \(vm.metadata.name) (\(vm.metadata.id)), \(phase), \(place)")
                    }
                }
            }
        }

        static func row(_ vm: Limiquantix_Compute_V1_VM) -> [String] {
            let reason = vm.status.conditions.first { !$0.status }.map { "\($0.reason): \($0.message)" } ?? ""
            return [
                vm.metadata.project, vm.metadata.name, phaseName(vm.status.phase),
                vm.status.node.isEmpty ? "-" : vm.status.node, "\(vm.spec.machine.vcpus)",
                "\(vm.spec.machine.memoryMib)", vm.status.agent.connected ? "yes" : "no", reason,
            ]
        }

        static let header = ["PROJECT", "NAME", "PHASE", "NODE", "VCPUS", "MIB", "AGENT", "MESSAGE"]

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List VMs (every project the token sees).")
            @OptionGroup var options: ClusterOptions
            @Option(help: "Only VMs on this node.") var node: String?
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

            func run() async throws {
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    let request = Limiquantix_Compute_V1_ListVMsRequest.with {
                        $0.project = endpoint.project
                        $0.node = node ?? ""
                    }
                    // Every page, on one connection.
                    let vms = try await endpoint.vms { client in
                        try await everyPage(request) { try await client.listVMs($0, metadata: metadata) }
                    }
                    try printList(vms, key: "vms", output: output, header: ClusterVM.header, row: ClusterVM.row)
                }
            }
        }

        struct Get: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show a VM: spec, status, conditions.")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "VM name.") var name: String
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

            func run() async throws {
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata, ref = endpoint.ref(name)
                    let vm = try await endpoint.vms { try await $0.getVM(ref, metadata: metadata) }
                    if output == .json {
                        print(try nodeJSON(vm))
                        return
                    }
                    let cells = ClusterVM.row(vm)
                    print("name:      \(TerminalText.safe(vm.metadata.project))/\(TerminalText.safe(vm.metadata.name))")
                    print("id:        \(vm.metadata.id) (resource_version \(vm.metadata.resourceVersion))")
                    print("phase:     \(cells[2]) on \(cells[3]), epoch \(vm.status.epoch)")
                    print("machine:   \(cells[4]) vCPUs, \(cells[5]) MiB, run state \(vm.spec.runState)")
                    let policy = vm.spec.ha
                    if policy.enabled {
                        print(
                            "ha:        on, priority \(HAOptions.name(policy.priority)), at most \(policy.maxRestarts) restarts in \(policy.restartWindowSeconds) s"
                        )
                    }
                    let agent = vm.status.agent
                    let facts = [
                        agent.version.isEmpty ? "" : "lqx-agent \(TerminalText.safe(agent.version))",
                        TerminalText.safe(agent.osPrettyName),
                        agent.hostname.isEmpty ? "" : "host \(TerminalText.safe(agent.hostname))",
                    ].filter { !$0.isEmpty }.joined(separator: ", ")
                    print(
                        "agent:     \(agent.connected ? "connected" : "not connected")\(facts.isEmpty ? "" : ", " + facts)"
                    )
                    for (key, value) in vm.metadata.labels.sorted(by: { $0.key < $1.key }) {
                        print("label:     \(TerminalText.safe(key))=\(TerminalText.safe(value))")
                    }
                    for condition in vm.status.conditions {
                        print(
                            "condition: \(condition.type)=\(condition.status) \(condition.reason): \(TerminalText.safe(condition.message))"
                        )
                    }
                }
            }
        }

        struct Change: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "set",
                abstract: "Change a VM's HA policy, size or labels (read, change, write back; retried on a race).",
                discussion: """
                    Examples: lqx vm set db --ha=true --ha-priority high; lqx vm set web --ha=false; \
                    lqx vm set db --cpus 4 --memory 8192 (size only while it is stopped). Turning HA on \
                    for a running VM is an admission: refused when the cluster could not restart every \
                    HA VM after ha.tolerate-failures node failures (lqx cluster get).
                    """)
            @OptionGroup var options: ClusterOptions
            @Argument(help: "VM name.") var name: String
            @Option(help: "true: restart it on another node when its node fails; false: do not.") var ha: Bool?
            @Option(name: .customLong("ha-priority"), help: "lowest, low, medium, high or highest.")
            var haPriority: String?
            @Option(name: .customLong("ha-max-restarts"), help: "Restarts by HA per window at most (0 to 100).")
            var haMaxRestarts: UInt32?
            @Option(name: .customLong("ha-restart-window"), help: "The window those restarts count in, seconds.")
            var haRestartWindow: UInt32?
            @Option(help: "vCPUs.") var cpus: UInt32?
            @Option(help: "Memory in MiB.") var memory: UInt64?
            @Option(help: "Set label KEY=VALUE (repeatable).") var label: [String] = []
            @Option(name: .customLong("remove-label"), help: "Remove label KEY (repeatable).")
            var removeLabel: [String] = []
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

            func validate() throws {
                _ = try HAOptions.priority(haPriority)
                let unchanged =
                    ha == nil && haPriority == nil && haMaxRestarts == nil && haRestartWindow == nil && cpus == nil
                    && memory == nil && label.isEmpty && removeLabel.isEmpty
                if unchanged {
                    throw ValidationError("nothing to change: give --ha, --ha-priority, --cpus, --memory or --label")
                }
            }

            func run() async throws {
                let set = try keyValues(label, flag: "--label"), remove = removeLabel
                let ha = self.ha, priority = try HAOptions.priority(haPriority), restarts = haMaxRestarts
                let window = haRestartWindow, cpus = self.cpus, memory = self.memory, name = self.name
                let output = self.output
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata, ref = endpoint.ref(name)
                    let vm = try await endpoint.vms { client in
                        var attempt = 0
                        while true {
                            let current = try await client.getVM(ref, metadata: metadata)
                            var spec = current.spec
                            if let ha { spec.ha.enabled = ha }
                            if let priority { spec.ha.priority = priority }
                            if let restarts { spec.ha.maxRestarts = restarts }
                            if let window { spec.ha.restartWindowSeconds = window }
                            if let cpus { spec.machine.vcpus = cpus }
                            if let memory { spec.machine.memoryMib = memory }
                            var labels = current.metadata.labels
                            for key in remove { labels.removeValue(forKey: key) }
                            labels.merge(set) { _, new in new }
                            let request = Limiquantix_Compute_V1_UpdateVMRequest.with {
                                $0.vm = ref
                                $0.spec = spec
                                $0.labels = labels
                                $0.resourceVersion = current.metadata.resourceVersion
                            }
                            do {
                                return try await client.updateVM(request, metadata: metadata)
                            } catch let error as RPCError where error.code == .aborted && attempt < 5 {
                                attempt += 1  // changed meanwhile: read it again
                            }
                        }
                    }
                    if output == .json {
                        print(try nodeJSON(vm))
                    } else {
                        let policy = vm.spec.ha
                        let state =
                            policy.enabled
                            ? "HA on (priority \(HAOptions.name(policy.priority)), \(policy.maxRestarts) restarts per \(policy.restartWindowSeconds) s)"
                            : "HA off"
                        print(
                            "\(vm.metadata.name): updated (resource_version \(vm.metadata.resourceVersion)), \(state)")
                    }
                }
            }
        }

        /// Power operations: one name, one call.
        enum Power {
            static func run(
                _ options: ClusterOptions, _ name: String, _ output: OutputFormat, verb: String,
                _ call:
                    @Sendable @escaping (
                        Limiquantix_Compute_V1_VMService.Client<HTTP2ClientTransport.Posix>,
                        Limiquantix_Compute_V1_VMRef, Metadata
                    ) async throws -> Limiquantix_Compute_V1_VM
            ) async throws {
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata, ref = endpoint.ref(name)
                    let vm = try await endpoint.vms { try await call($0, ref, metadata) }
                    print(output == .json ? try nodeJSON(vm) : "\(vm.metadata.name): \(verb) (\(ClusterVM.row(vm)[2]))")
                }
            }

            struct Start: AsyncParsableCommand {
                static let configuration = CommandConfiguration(commandName: "start", abstract: "Run a VM.")
                @OptionGroup var options: ClusterOptions
                @Argument(help: "VM name.") var name: String
                @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
                func run() async throws {
                    try await Power.run(options, name, output, verb: "start requested") {
                        try await $0.startVM($1, metadata: $2)
                    }
                }
            }

            struct Stop: AsyncParsableCommand {
                static let configuration = CommandConfiguration(
                    commandName: "stop", abstract: "Stop a VM: its agent shuts the guest down (forced after 60 s).")
                @OptionGroup var options: ClusterOptions
                @Argument(help: "VM name.") var name: String
                @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
                func run() async throws {
                    try await Power.run(options, name, output, verb: "stop requested") { client, ref, metadata in
                        try await client.stopVM(.with { $0.vm = ref }, metadata: metadata)
                    }
                }
            }

            struct Restart: AsyncParsableCommand {
                static let configuration = CommandConfiguration(
                    commandName: "restart", abstract: "Reboot the guest (through its agent, else ACPI).")
                @OptionGroup var options: ClusterOptions
                @Argument(help: "VM name.") var name: String
                @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
                func run() async throws {
                    try await Power.run(options, name, output, verb: "rebooted") {
                        try await $0.restartVM($1, metadata: $2)
                    }
                }
            }

            struct Pause: AsyncParsableCommand {
                static let configuration = CommandConfiguration(commandName: "pause", abstract: "Pause a VM.")
                @OptionGroup var options: ClusterOptions
                @Argument(help: "VM name.") var name: String
                @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
                func run() async throws {
                    try await Power.run(options, name, output, verb: "pause requested") {
                        try await $0.pauseVM($1, metadata: $2)
                    }
                }
            }

            struct Resume: AsyncParsableCommand {
                static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume a VM.")
                @OptionGroup var options: ClusterOptions
                @Argument(help: "VM name.") var name: String
                @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
                func run() async throws {
                    try await Power.run(options, name, output, verb: "resume requested") {
                        try await $0.resumeVM($1, metadata: $2)
                    }
                }
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Delete a VM: its node removes it and the disks it created, then the cluster forgets it.")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "VM name.") var name: String

            func run() async throws {
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata, ref = endpoint.ref(name)
                    _ = try await endpoint.vms { try await $0.deleteVM(ref, metadata: metadata) }
                    print("\(name): deletion requested")
                }
            }
        }

        struct Explain: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract:
                    "Why the scheduler places a VM where it does: per node, the filter that refused it or its score.")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "VM name.") var name: String
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

            func run() async throws {
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata, ref = endpoint.ref(name)
                    let explanation = try await endpoint.vms { try await $0.explainVM(ref, metadata: metadata) }
                    if output == .json {
                        print(try nodeJSON(explanation))
                        return
                    }
                    print(explanation.summary)
                    try printList(
                        explanation.verdicts, key: "verdicts", output: .text,
                        header: ["NODE", "FITS", "SCORE", "REASON"]
                    ) { verdict in
                        [
                            verdict.node, verdict.fits ? "yes" : "no", verdict.fits ? "\(verdict.score)" : "-",
                            verdict.fits ? "" : "\(verdict.reason): \(verdict.message)",
                        ]
                    }
                }
            }
        }
    }
#endif
