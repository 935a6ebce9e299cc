import ArgumentParser
import ControlPlane
import ControlPlaneAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import LQXModel
import LQXServer
import LQXTestSupport
import Logging

/// Control-plane benchmarks (`benchmarks/controlplane.sh` runs them and writes
/// benchmarks/results/controlplane-*.md).
@main
struct ControlPlaneBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lqx-cp-bench",
        abstract: "Benchmarks of the control plane: scheduler decisions, concurrent creates, the API.",
        subcommands: [
            SchedulerBench.self, CreatesBench.self, APIBench.self, ScaleBench.self, RelayBench.self,
            AdmissionBench.self,
        ])
}

/// Scheduler decision latency on synthetic clusters.
struct SchedulerBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "Scheduler decision p50/p99 on clusters of N nodes holding 10 VMs each.")

    @Option(help: "Cluster sizes to measure, comma-separated.")
    var nodes: String = "1000,10000"
    @Option(help: "VMs already placed on each node.")
    var vmsPerNode = 10
    @Option(help: "Decisions measured per cluster size.")
    var decisions = 2000

    func run() async throws {
        say("| nodes | VMs | decision (filter + score every node) | snapshot from stored nodes and VMs |")
        say("|---:|---:|---|---|")
        for count in nodes.split(separator: ",").compactMap({ Int($0) }) {
            var random = SplitMix64(seed: 42)
            let nodeObjects = (0..<count).map { Fixture.node($0, random: &random, now: 0) }
            let vms = (0..<count * vmsPerNode).map {
                Fixture.vm($0, project: "default", node: "node-\($0 / vmsPerNode)", random: &random, now: 0)
            }
            var building = Samples()
            var snapshot = ClusterSnapshot(nodes: nodeObjects, vms: vms)
            for _ in 0..<10 {
                let (built, time) = await timed { ClusterSnapshot(nodes: nodeObjects, vms: vms) }
                building.add(time)
                snapshot = built
            }
            let scheduler = Scheduler()
            var deciding = Samples()
            var placed = 0
            var last: Decision?
            for index in 0..<decisions {
                let request = Fixture.request(index, random: &random)
                let (decision, time) = await timed { scheduler.schedule(request, on: snapshot) }
                deciding.add(time)
                if let node = decision.nodeID {
                    snapshot.place(request, on: node)
                    placed += 1
                }
                last = decision
            }
            say("| \(count) | \(vms.count) | \(deciding.summary) | \(building.summary) |")
            if let last { say("|  |  | \(placed)/\(decisions) placed; last: \(last.summary) |  |") }
        }
    }
}

/// Options naming the store a benchmark runs on.
struct StoreOptions: ParsableArguments {
    @Option(help: "sqlite (a file in a temporary directory) or postgres (a temporary server, Debian's PostgreSQL 15).")
    var store: String = "sqlite"

    /// Runs `body` with a fresh `--db` location of that kind (removed afterwards).
    func withLocation<T>(_ body: (String, String) async throws -> T) async throws -> T {
        let directory = try TempDir()
        defer { directory.remove() }
        switch store {
        case "sqlite": return try await body("sqlite:" + directory.file("store.db"), store)
        case "postgres":
            guard let server = try PostgresServer.shared() else {
                throw ValidationError("PostgreSQL 15 is not installed (apt-get install postgresql)")
            }
            return try await body(server.createDatabase("bench\(UInt32.random(in: 0...UInt32.max))"), store)
        default: throw ValidationError("--store is sqlite or postgres, not \(store)")
        }
    }

    /// Runs `body` with a running store of that kind (removed afterwards).
    func withStore<T>(_ body: (any Store, String) async throws -> T) async throws -> T {
        var logger = Logger(label: "bench-store")
        logger.logLevel = .warning
        return try await withLocation { db, kind in
            let opened = try StoreLocation(parsing: db).open(logger: logger)
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await opened.run() }
                defer { group.cancelAll() }
                return try await body(opened, kind)
            }
        }
    }
}

/// Concurrent creates through the control plane's core on a nearly full cluster.
struct CreatesBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "creates",
        abstract: "N concurrent VM creates on a cluster with room for about one each per node; checks none overcommits."
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "Nodes.")
    var nodes = 1000
    @Option(help: "VMs already placed on each node.")
    var vmsPerNode = 10
    @Option(help: "Concurrent creates.")
    var creates = 1000

    func run() async throws {
        try await storeOptions.withStore { store, kind in
            var logger = Logger(label: "bench")
            logger.logLevel = .critical
            let (seeded, seedTime) = try await timed { try await seed(store) }
            say("seeded \(nodes) nodes and \(seeded) VMs in \(String(format: "%.1f", seedTime.seconds)) s")
            let cluster = Cluster(store: store, logger: logger)
            try await cluster.bootstrap()
            let size = (cpus: 8, memoryMiB: 16384)
            let (latencies, wall) = try await timed {
                try await withThrowingTaskGroup(of: Double.self) { group in
                    for index in 0..<creates {
                        group.addTask {
                            let (_, time) = try await timed {
                                try await cluster.createVM(
                                    CreateVM(name: "new-\(index)", spec: Fixture.spec("new-\(index)", size: size)),
                                    by: .system)
                            }
                            return time.seconds
                        }
                    }
                    var samples = Samples()
                    for try await seconds in group { samples.add(seconds) }
                    return samples
                }
            }
            // Read back from the store itself, not through the control plane's cache.
            let check = Repository(store: store)
            let allNodes = try await check.nodes()
            let vms = try await check.vms()
            var used: [String: Node.Resources] = [:]
            for vm in vms where !vm.status.nodeID.isEmpty {
                used[vm.status.nodeID, default: Node.Resources()].cpus += vm.spec.machine.vcpus
                used[vm.status.nodeID, default: Node.Resources()].memoryMiB += vm.spec.machine.memoryMiB
            }
            let over = allNodes.filter { node in
                let room = node.allocatable
                let taken = used[node.meta.id] ?? Node.Resources()
                return taken.cpus > room.cpus || taken.memoryMiB > room.memoryMiB
            }
            let new = vms.filter { $0.meta.name.hasPrefix("new-") }
            let placed = new.filter { !$0.status.nodeID.isEmpty }.count
            let fits = allNodes.filter { $0.spec.schedulable && $0.spec.taints.isEmpty }.count
            say(
                "| \(kind) | \(nodes) | \(seeded) | \(creates) | \(String(format: "%.2f", wall.seconds)) s "
                    + "| \(String(format: "%.0f", Double(creates) / wall.seconds))/s | \(latencies.summary) "
                    + "| \(placed) placed (\(fits) nodes take one), \(new.count - placed) pending | \(over.count) |")
            if !over.isEmpty { throw ValidationError("\(over.count) nodes are over capacity") }
            if new.count != creates { throw ValidationError("\(creates - new.count) creates were lost") }
        }
    }

    /// Nodes with room for about one more 8-vCPU/16 GiB VM each after their seeded VMs.
    private func seed(_ store: any Store) async throws -> Int {
        var random = SplitMix64(seed: 7)
        var writes: [StoreWrite] = []
        var seeded = 0
        for index in 0..<nodes {
            var node = Fixture.node(index, random: &random, now: Cluster.wallClock())
            var memory = 0
            for slot in 0..<vmsPerNode {
                let vm = Fixture.vm(
                    index * vmsPerNode + slot, project: Cluster.defaultProject, node: node.meta.id, random: &random,
                    now: Cluster.wallClock())
                memory += vm.spec.machine.memoryMiB
                writes.append(.create(try Repository.stored(vm)))
                seeded += 1
            }
            node.status.capacity.memoryMiB = memory + 16384 + 8192
            writes.append(.create(try Repository.stored(node)))
            if writes.count >= 500 {
                try await store.commit(writes)
                writes.removeAll()
            }
        }
        if !writes.isEmpty { try await store.commit(writes) }
        return seeded
    }
}

/// Create, get and list throughput through the real API: an `lqx-controlplane` process on
/// SQLite or PostgreSQL, clients over TLS with a bearer token, one connection each.
struct APIBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api",
        abstract: "VMService create/get/list throughput and latency against an lqx-controlplane process.")

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "The lqx-controlplane binary (default: next to this one).")
    var controlplane: String?
    @Option(help: "Concurrent clients (one connection each).")
    var clients = 16
    @Option(help: "VMs created in all.")
    var creates = 2000
    @Option(help: "Get calls in all.")
    var gets = 4000
    @Option(help: "List calls in all (each returns every VM).")
    var lists = 200

    func run() async throws {
        try await storeOptions.withLocation { db, kind in
            let directory = try TempDir()
            defer { directory.remove() }
            let (daemon, api) = try await ControlPlaneProcess.start(controlplane, db: db, in: directory)
            defer { _ = daemon.kill() }
            let perClient = creates / clients
            let (created, createWall) = try await timed {
                try await api.concurrently(clients) { client, worker in
                    var samples = Samples()
                    for index in 0..<perClient {
                        let name = String(format: "vm-%03d-%05d", worker, index)
                        let (_, time) = try await timed {
                            try await client.createVM(
                                .with {
                                    $0.name = name
                                    $0.spec.machine = .with {
                                        $0.vcpus = 1
                                        $0.memoryMib = 512
                                        $0.kernel = .with { $0.kernel = "/var/lib/limiquantix/vmlinuz" }
                                    }
                                }, metadata: api.metadata)
                        }
                        samples.add(time)
                    }
                    return samples
                }
            }
            let total = perClient * clients
            let (got, getWall) = try await timed {
                try await api.concurrently(clients) { client, worker in
                    var samples = Samples()
                    for index in 0..<(gets / clients) {
                        let name = String(format: "vm-%03d-%05d", (worker + index) % clients, index % perClient)
                        let (_, time) = try await timed {
                            try await client.getVM(.with { $0.name = name }, metadata: api.metadata)
                        }
                        samples.add(time)
                    }
                    return samples
                }
            }
            let (listed, listWall) = try await timed {
                try await api.concurrently(min(clients, 4)) { client, _ in
                    var samples = Samples()
                    for _ in 0..<(lists / min(clients, 4)) {
                        let (count, time) = try await timed {
                            try await everyPage(Limiquantix_Compute_V1_ListVMsRequest.with { $0.pageSize = 1000 }) {
                                try await client.listVMs($0, metadata: api.metadata)
                            }.count
                        }
                        guard count == total else {
                            throw ValidationError("the list returned \(count) VMs, \(total) were created")
                        }
                        samples.add(time)
                    }
                    return samples
                }
            }
            func rate(_ samples: Samples, _ wall: Duration) -> String {
                String(format: "%.0f/s", Double(samples.count) / wall.seconds)
            }
            say(
                "| \(kind) | \(clients) | create | \(total) | \(rate(created, createWall)) | \(created.summary) |")
            say("| \(kind) | \(clients) | get | \(got.count) | \(rate(got, getWall)) | \(got.summary) |")
            say(
                "| \(kind) | \(min(clients, 4)) | list of all \(total) VMs (pages of 1,000) | \(listed.count) "
                    + "| \(rate(listed, listWall)) | \(listed.summary) |")
        }
    }
}

/// An `lqx-controlplane` process for a benchmark, on a loopback port, and its API.
enum ControlPlaneProcess {
    /// Starts `binary` (default: next to this one) on `db` with its state in `directory`.
    static func start(_ binary: String?, db: String, in directory: TempDir, extra: [String] = []) async throws
        -> (Daemon, API)
    {
        let path =
            binary
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("lqx-controlplane").path
        let daemon = try Daemon(
            path,
            [
                "--listen", "127.0.0.1:0", "--node-listen", "127.0.0.1:0", "--http-listen", "off", "--db", db,
                "--state-dir", directory.file("state"),
            ] + extra, logPath: directory.file("controlplane.log"))
        guard let first = await daemon.line(), let grpc = Daemon.field("grpc", in: first) else {
            _ = daemon.kill()
            throw ValidationError("lqx-controlplane did not start: \(daemon.log)")
        }
        let token = try String(contentsOfFile: directory.file("state/admin.token"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let api = API(
            address: try HostPort(parsing: grpc, for: .connect, field: "grpc"),
            caFile: directory.file("state/pki/ca.crt"),
            token: token)
        return (daemon, api)
    }
}

/// The control plane's VMService over TLS trusting the cluster CA.
struct API: Sendable {
    let address: HostPort
    let caFile: String
    let token: String
    var metadata: Metadata { ["authorization": "Bearer \(token)"] }

    typealias VMClient = Limiquantix_Compute_V1_VMService.Client<HTTP2ClientTransport.Posix>
    typealias NodeClient = Limiquantix_Compute_V1_NodeService.Client<HTTP2ClientTransport.Posix>

    /// Runs `body` with a VMService client on a connection of its own.
    func vms<T: Sendable>(_ body: @Sendable @escaping (VMClient) async throws -> T) async throws -> T {
        try await ClientTransport.with(address, security: .tls(caFile: caFile)) {
            try await body(VMClient(wrapping: $0))
        }
    }

    /// Runs `body` with a NodeService client on a connection of its own.
    func nodes<T: Sendable>(_ body: @Sendable @escaping (NodeClient) async throws -> T) async throws -> T {
        try await ClientTransport.with(address, security: .tls(caFile: caFile)) {
            try await body(NodeClient(wrapping: $0))
        }
    }

    /// Runs `body` on `count` clients at once, each with its own connection; the samples merged.
    func concurrently(_ count: Int, _ body: @Sendable @escaping (VMClient, Int) async throws -> Samples)
        async throws -> Samples
    {
        try await withThrowingTaskGroup(of: Samples.self) { group in
            for worker in 0..<count {
                group.addTask {
                    try await ClientTransport.with(address, security: .tls(caFile: caFile)) { client in
                        try await body(VMClient(wrapping: client), worker)
                    }
                }
            }
            var all = Samples()
            for try await samples in group { all.merge(samples) }
            return all
        }
    }
}

/// The control plane under a cluster's steady load: simulated nodes (`SimulatedNode`) joined with
/// tokens, heartbeating, and streaming every running VM's in-guest telemetry; then the control
/// plane's CPU and RSS over a quiet window while `vm get` and `vm list` are timed.
struct ScaleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale",
        abstract: "N simulated nodes and M VMs streaming telemetry against an lqx-controlplane process.")

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "The lqx-controlplane binary (default: next to this one).")
    var controlplane: String?
    @Option(help: "Simulated nodes.")
    var nodes = 1000
    @Option(help: "VMs (spread over the nodes by the scheduler).")
    var vms = 10000
    @Option(help: "Seconds between heartbeats and between telemetry samples of each VM.")
    var interval = 5
    @Option(help: "Seconds of the measuring window.")
    var window = 60
    @Option(help: "The simulated nodes listen on 127.0.0.1 from this port up (below Linux's ephemeral range).")
    var basePort = 20000
    @Option(help: "Seconds the VMs may take to run with telemetry once created.")
    var rampTimeout = 900

    func run() async throws {
        raiseFileLimit()
        let clock = ContinuousClock()
        let started = clock.now
        func elapsed() -> String { String(format: "%6.1f s", (clock.now - started).seconds) }
        try await storeOptions.withLocation { db, kind in
            let directory = try TempDir()
            defer { directory.remove() }
            let (daemon, api) = try await ControlPlaneProcess.start(
                controlplane, db: db, in: directory,
                extra: ["--heartbeat-interval", "\(interval)", "--heartbeat-grace", "\(interval * 3)"])
            defer { _ = daemon.kill() }
            let address = api.address, caFile = api.caFile
            let metadata = api.metadata
            say("[\(elapsed())] control plane up (pid \(daemon.child.pid), \(kind)); joining \(nodes) nodes")

            try await withThrowingTaskGroup(of: Void.self) { simulated in
                // Join in batches of 25 at once; each node then serves and heartbeats until the end.
                for batch in stride(from: 0, to: nodes, by: 25) {
                    let joined = try await withThrowingTaskGroup(of: SimulatedNode.self) { group in
                        for index in batch..<min(batch + 25, nodes) {
                            let name = String(format: "sim-%04d", index)
                            group.addTask {
                                let joinToken = try await api.nodes {
                                    try await $0.createJoinToken(.init(), metadata: metadata).token
                                }
                                return try await SimulatedNode(
                                    name: name, address: HostPort(host: "127.0.0.1", port: basePort + index),
                                    controlPlane: address, token: joinToken, caFile: caFile,
                                    directory: directory.file(name), telemetryInterval: .seconds(interval))
                            }
                        }
                        var joined: [SimulatedNode] = []
                        for try await node in group { joined.append(node) }
                        return joined
                    }
                    for node in joined {
                        simulated.addTask {
                            do {
                                try await node.run()
                            } catch  where !Task.isCancelled {
                                say("simulated node \(node.name) (\(node.address)) stopped: \(error)")
                                throw error
                            }
                        }
                    }
                }
                for attempt in 1... {
                    let notReady = try await api.nodes { client in
                        try await everyPage(Limiquantix_Compute_V1_ListNodesRequest.with { $0.pageSize = 1000 }) {
                            try await client.listNodes($0, metadata: metadata)
                        }.filter { $0.status.phase != .ready }.map(\.metadata.name)
                    }
                    if notReady.isEmpty { break }
                    if attempt % 10 == 0 { say("[\(elapsed())] not READY yet: \(notReady.prefix(10))") }
                    if attempt > 120 { throw ValidationError("nodes never became READY: \(notReady.prefix(20))") }
                    try await Task.sleep(for: .seconds(1))
                }
                say("[\(elapsed())] \(nodes) nodes READY; creating \(vms) VMs")
                let perClient = vms / 16
                let (created, createWall) = try await timed {
                    try await api.concurrently(16) { client, worker in
                        var samples = Samples()
                        for index in 0..<perClient {
                            let (_, time) = try await timed {
                                try await client.createVM(
                                    .with {
                                        $0.name = String(format: "vm-%02d-%05d", worker, index)
                                        $0.spec.machine = .with {
                                            $0.vcpus = 1
                                            $0.memoryMib = 512
                                            $0.kernel = .with { $0.kernel = "/var/lib/limiquantix/vmlinuz" }
                                        }
                                    }, metadata: metadata)
                            }
                            samples.add(time)
                        }
                        return samples
                    }
                }
                let total = perClient * 16
                say(
                    "[\(elapsed())] \(total) VMs created (\(String(format: "%.0f", Double(total) / createWall.seconds))/s, "
                        + "\(created.summary)); waiting until every one runs with telemetry")
                let waiting = clock.now
                while true {
                    let running = try await api.vms { client in
                        let request = Limiquantix_Compute_V1_ListVMsRequest.with {
                            $0.pageSize = 1000
                            $0.filterPhase = true
                            $0.phase = .running
                        }
                        return try await everyPage(request) { try await client.listVMs($0, metadata: metadata) }
                            .count { $0.status.usage.sampledUnixMs > 0 }
                    }
                    say("[\(elapsed())] \(running)/\(total) running with telemetry")
                    if running < total && clock.now - waiting > .seconds(rampTimeout) {
                        throw ValidationError(
                            "only \(running) of \(total) VMs run with telemetry after \(rampTimeout) s")
                    }
                    if running == total { break }
                    try await Task.sleep(for: .seconds(10))
                }
                // Settle one interval, then measure.
                try await Task.sleep(for: .seconds(interval))
                say("[\(elapsed())] steady; measuring \(window) s")
                let before = try ProcessSample(pid: daemon.child.pid)
                let measuring = clock.now
                async let gets = api.concurrently(2) { client, worker in
                    var samples = Samples()
                    var index = worker
                    while clock.now - measuring < .seconds(window) {
                        let name = String(format: "vm-%02d-%05d", index % 16, (index * 7919) % perClient)
                        let (_, time) = try await timed {
                            try await client.getVM(.with { $0.name = name }, metadata: metadata)
                        }
                        samples.add(time)
                        index += 2
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    return samples
                }
                async let lists = api.concurrently(1) { client, _ in
                    var samples = Samples()
                    while clock.now - measuring < .seconds(window) {
                        let (_, time) = try await timed {
                            try await client.listVMs(.init(), metadata: metadata)
                        }
                        samples.add(time)
                        try await Task.sleep(for: .milliseconds(500))
                    }
                    return samples
                }
                async let fullLists = api.concurrently(1) { client, _ in
                    var samples = Samples()
                    while clock.now - measuring < .seconds(window) {
                        let (_, time) = try await timed {
                            try await everyPage(Limiquantix_Compute_V1_ListVMsRequest.with { $0.pageSize = 1000 }) {
                                try await client.listVMs($0, metadata: metadata)
                            }
                        }
                        samples.add(time)
                        try await Task.sleep(for: .seconds(5))
                    }
                    return samples
                }
                var peak = 0
                while clock.now - measuring < .seconds(window) {
                    peak = max(peak, try ProcessSample(pid: daemon.child.pid).rssKiB)
                    try await Task.sleep(for: .seconds(1))
                }
                let (got, listed, full) = try await (gets, lists, fullLists)
                let after = try ProcessSample(pid: daemon.child.pid)
                let seconds = (clock.now - measuring).seconds
                let cores = Double(after.cpuTicks - before.cpuTicks) / Double(sysconf(Int32(_SC_CLK_TCK))) / seconds
                say("")
                say(
                    "| store | nodes | VMs | telemetry | control-plane CPU | RSS (end / peak) | vm get | vm list (first 500) | every VM (10 pages of 1,000) |"
                )
                say("|---|---:|---:|---|---:|---:|---|---|---|")
                say(
                    "| \(kind) | \(nodes) | \(total) | every \(interval) s per VM (\(total / interval)/s) "
                        + "| \(String(format: "%.2f", cores)) cores "
                        + "| \(after.rssKiB / 1024) / \(peak / 1024) MiB | \(got.summary) | \(listed.summary) | \(full.summary) |"
                )
                simulated.cancelAll()
            }
        }
    }

    /// Enough descriptors for a connection or listener per simulated node, on both sides.
    private func raiseFileLimit() {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = limit.rlim_max
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}

/// CPU time and resident memory of a process, from /proc.
struct ProcessSample {
    var cpuTicks: Int
    var rssKiB: Int

    init(pid: Int32) throws {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // Fields after the command name (which is in parentheses and may hold spaces).
        guard let close = stat.lastIndex(of: ")") else { throw ValidationError("unreadable /proc/\(pid)/stat") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // utime and stime are fields 14 and 15 of stat; here 12 and 13 (state is the first).
        cpuTicks = (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        rssKiB = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
}
