#if NodeClient
    import ArgumentParser
    import ControlPlaneAPI
    import GRPCCore

    extension ClusterEndpoint {
        func settings<T: Sendable>(
            _ body:
                @Sendable @escaping (Limiquantix_Compute_V1_ClusterService.Client<ClusterTransport>) async throws -> T
        ) async throws -> T {
            try await with { try await body(.init(wrapping: $0)) }
        }
    }

    /// `lqx cluster get|set`: cluster-wide settings.
    struct ClusterSettingsCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cluster", abstract: "Cluster-wide settings: get, set KEY VALUE.",
            discussion: """
                Settings:
                  ha.tolerate-failures K   host failures admission control keeps room for (default 0: off). \
                Starting an HA VM is refused when some set of K node failures would leave an HA VM \
                without a node to restart on (simulated by packing the displaced HA VMs in priority \
                order with the scheduler's rules); the refusal names the nodes and the shortfall.
                """,
            subcommands: [Get.self, Change.self])

        static func show(_ settings: Limiquantix_Compute_V1_ClusterSettings, _ output: OutputFormat) throws {
            try printList(settings.settings, key: "settings", output: output, header: ["KEY", "VALUE", "MEANING"]) {
                [$0.key, $0.value, $0.help]
            }
        }

        struct Get: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show every cluster setting.")
            @OptionGroup var options: ClusterOptions
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

            func run() async throws {
                let output = self.output
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    let settings = try await endpoint.settings {
                        try await $0.getClusterSettings(.init(), metadata: metadata)
                    }
                    if output == .json {
                        print(try nodeJSON(settings))
                    } else {
                        try ClusterSettingsCommand.show(settings, output)
                    }
                }
            }
        }

        struct Change: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "set", abstract: "Set one cluster setting (admins; audited).",
                discussion: "Example: lqx cluster set ha.tolerate-failures 1")
            @OptionGroup var options: ClusterOptions
            @Argument(help: "The setting, e.g. ha.tolerate-failures.") var key: String
            @Argument(help: "Its new value.") var value: String
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

            func run() async throws {
                let key = self.key, value = self.value, output = self.output
                try await clusterCall(options) { endpoint in
                    let metadata = endpoint.metadata
                    let settings = try await endpoint.settings { client in
                        try await client.setClusterSetting(
                            .with {
                                $0.key = key
                                $0.value = value
                            }, metadata: metadata)
                    }
                    if output == .json { print(try nodeJSON(settings)) } else { print("\(key) = \(value)") }
                }
            }
        }
    }
#endif
