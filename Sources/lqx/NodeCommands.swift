#if NodeClient
    import AgentProtocol
    import ArgumentParser
    import Foundation
    import GRPCCore
    import LQXTypes
    import NodeAPI

    extension AgentOptions {
        /// Calls the node named by --node (or $LQX_NODE).
        func callNode<T: Sendable>(_ body: @Sendable @escaping (NodeStub) async throws -> T) async throws -> T {
            guard let address = nodeAddress else {
                throw CLIError(
                    agent != nil
                        ? "this command goes through a node daemon: use --node HOST:PORT instead of --agent"
                        : "--node HOST:PORT is required (or set LQX_NODE)")
            }
            return try await NodeConnection.with(
                try NodeTarget(address: address, credentials: nodeCredentialsDirectory), body)
        }
    }

    struct VMCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "vm", abstract: "Create, run and remove VMs on a node (lqx --node HOST:PORT vm …).",
            subcommands: [
                VMCreate.self, VMStart.self, VMStop.self, VMReboot.self, VMPause.self, VMResume.self, VMDelete.self,
                VMGet.self, VMList.self, VMSnapshot.self, VMAttachDisk.self, VMDetachDisk.self, VMConsole.self,
                VMMigrate.self,
            ])
    }

    struct VMCreate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create", abstract: "Define a VM (stopped; `vm start` runs it).",
            discussion: """
                Boot either a kernel and initramfs directly (--kernel, --initrd, --cmdline) or the first
                disk (--disk, --clone or --new-disk). Disks are virtio; --new-disk and --clone create
                qcow2 images in the node's storage, deleted with the VM unless `vm delete --keep-disks`.
                """)
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name (letters, digits, - _ .; unique on the node).") var name: String
        @Option(help: "Kernel to boot directly (path on the node).") var kernel: String?
        @Option(help: "Initramfs for --kernel.") var initrd: String?
        @Option(help: "Kernel command line for --kernel.") var cmdline: String = "console=ttyS0"
        @Option(help: "Existing disk image on the node, used as is (repeatable).") var disk: [String] = []
        @Option(help: "New qcow2 image backed by this image (linked clone; repeatable).") var clone: [String] = []
        @Option(name: .customLong("new-disk"), help: "New empty qcow2 disk of this many GiB (repeatable).")
        var newDisk: [UInt64] = []
        @Option(help: "Attach a NIC to this libvirt network (repeatable).") var network: [String] = []
        @Option(help: "Attach a NIC to this host bridge (repeatable).") var bridge: [String] = []
        @Option(help: "vCPUs.") var cpus: UInt32 = 1
        @Option(help: "Memory in MiB.") var memory: UInt64 = 512
        @Flag(help: "UEFI firmware (OVMF) instead of BIOS.") var uefi = false
        @Flag(help: "Start the VM after creating it.") var start = false
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

        func validate() throws {
            if kernel == nil && initrd != nil { throw ValidationError("--initrd needs --kernel") }
            if kernel == nil && disk.isEmpty && clone.isEmpty && newDisk.isEmpty {
                throw ValidationError(
                    "give --kernel PATH (with --initrd) or a disk to boot (--disk, --clone, --new-disk)")
            }
        }

        func run() async throws {
            try await runReportingErrors {
                let spec = Limiquantix_Types_V1_VMSpec.with {
                    $0.name = name
                    $0.vcpus = cpus
                    $0.memoryMib = memory
                    $0.firmware = uefi ? .uefi : .bios
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
                        + newDisk.map { size in .with { $0.newSizeGib = size } }
                    $0.nics =
                        network.map { name in .with { $0.network = name } }
                        + bridge.map { name in .with { $0.bridge = name } }
                }
                let start = self.start
                let vm = try await options.callNode { stub in
                    var vm = try await stub.createVM(.with { $0.spec = spec }, options: NodeConnection.callOptions)
                    if start {
                        vm = try await stub.startVM(.with { $0.name = spec.name }, options: NodeConnection.callOptions)
                    }
                    return vm
                }
                print(output == .json ? try nodeJSON(vm) : "created \(vm.name) (\(vm.uuid)), \(stateName(vm.state))")
            }
        }
    }

    /// One name, one unary call, one line of output.
    protocol SimpleVMCommand: AsyncParsableCommand, Sendable {
        var options: AgentOptions { get }
        var name: String { get }
        var output: OutputFormat { get }
        func call(_ stub: NodeStub, _ name: String) async throws -> Limiquantix_Node_V1_VM
        var verb: String { get }
    }

    extension SimpleVMCommand {
        func run() async throws {
            try await runReportingErrors {
                let name = self.name
                let vm = try await options.callNode { try await self.call($0, name) }
                print(output == .json ? try nodeJSON(vm) : "\(vm.name): \(verb), \(stateName(vm.state))")
            }
        }
    }

    struct VMStart: SimpleVMCommand {
        static let configuration = CommandConfiguration(commandName: "start", abstract: "Start a VM.")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var name: String
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
        var verb: String { "started" }
        func call(_ stub: NodeStub, _ name: String) async throws -> Limiquantix_Node_V1_VM {
            try await stub.startVM(.with { $0.name = name }, options: NodeConnection.callOptions)
        }
    }

    struct VMReboot: SimpleVMCommand {
        static let configuration = CommandConfiguration(
            commandName: "reboot",
            abstract: "Reboot a VM (through its agent when connected, else the ACPI reset request).")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var name: String
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
        var verb: String { "reboot requested" }
        func call(_ stub: NodeStub, _ name: String) async throws -> Limiquantix_Node_V1_VM {
            try await stub.rebootVM(.with { $0.name = name }, options: NodeConnection.callOptions)
        }
    }

    struct VMPause: SimpleVMCommand {
        static let configuration = CommandConfiguration(commandName: "pause", abstract: "Pause a VM's vCPUs.")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var name: String
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
        var verb: String { "paused" }
        func call(_ stub: NodeStub, _ name: String) async throws -> Limiquantix_Node_V1_VM {
            try await stub.pauseVM(.with { $0.name = name }, options: NodeConnection.callOptions)
        }
    }

    struct VMResume: SimpleVMCommand {
        static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume a paused VM.")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var name: String
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
        var verb: String { "resumed" }
        func call(_ stub: NodeStub, _ name: String) async throws -> Limiquantix_Node_V1_VM {
            try await stub.resumeVM(.with { $0.name = name }, options: NodeConnection.callOptions)
        }
    }

    struct VMGet: SimpleVMCommand {
        static let configuration = CommandConfiguration(commandName: "get", abstract: "Show a VM.")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var name: String
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
        var verb: String { "" }
        func call(_ stub: NodeStub, _ name: String) async throws -> Limiquantix_Node_V1_VM {
            try await stub.getVM(.with { $0.name = name }, options: NodeConnection.callOptions)
        }

        func run() async throws {
            try await runReportingErrors {
                let name = self.name
                let vm = try await options.callNode { try await self.call($0, name) }
                print(output == .json ? try nodeJSON(vm) : describe(vm))
            }
        }
    }

    func describe(_ vm: Limiquantix_Node_V1_VM) -> String {
        var lines = [
            "name:      \(vm.name)", "uuid:      \(vm.uuid)", "state:     \(stateName(vm.state))",
            "vcpus:     \(vm.spec.vcpus)", "memory:    \(vm.spec.memoryMib) MiB",
        ]
        if vm.spec.hasKernel { lines.append("boot:      kernel \(vm.spec.kernel.kernel)") }
        for (index, disk) in vm.spec.disks.enumerated() {
            let source: String =
                switch disk.source {
                case .newSizeGib(let size): "new \(size) GiB"
                case .cloneOf(let image): "clone of \(image)"
                case .path(let path): path
                case nil: "?"
                }
            lines.append("disk \(index):    \(source)\(disk.readOnly ? " (read-only)" : "")")
        }
        let agent = vm.agent
        lines.append(
            "agent:     "
                + (agent.connected
                    ? "connected, lqx-agent \(TerminalText.safe(agent.agentVersion)), \(TerminalText.safe(agent.osPrettyName)), host \(TerminalText.safe(agent.hostname))"
                    : "not connected"))
        lines.append("console:   \(vm.consoleLog)")
        return lines.joined(separator: "\n")
    }

    func stateName(_ state: Limiquantix_Node_V1_VMState) -> String {
        switch state {
        case .running: "running"
        case .paused: "paused"
        case .shuttingDown: "shutting down"
        case .shutOff: "shut off"
        case .crashed: "crashed"
        case .suspended: "suspended"
        case .blocked: "blocked"
        default: "unknown"
        }
    }

    struct VMStop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "stop", abstract: "Stop a VM: through its agent, else ACPI; --force pulls the plug.",
            discussion: "After --timeout seconds without the guest powering off, the VM is stopped at once.")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var name: String
        @Flag(help: "Stop at once, without asking the guest.") var force = false
        @Option(help: "Seconds to wait for the guest before forcing.") var timeout: UInt32 = 60
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await runReportingErrors {
                let request = Limiquantix_Node_V1_StopVMRequest.with {
                    $0.name = name
                    $0.force = force
                    $0.timeoutSeconds = timeout
                }
                let response = try await options.callNode {
                    try await $0.stopVM(request, options: NodeConnection.callOptions)
                }
                if output == .json {
                    print(try nodeJSON(response))
                    return
                }
                let how: String =
                    switch response.method {
                    case .agent: "powered off by its agent"
                    case .acpi: "powered off by ACPI"
                    case .forced: "stopped at once"
                    case .alreadyStopped: "was not running"
                    default: "stopped"
                    }
                print("\(name): \(how), \(stateName(response.vm.state))")
            }
        }
    }

    struct VMDelete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "delete", abstract: "Delete a stopped VM and the disks the node created for it.")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var name: String
        @Flag(help: "Delete a running VM too (it is stopped at once).") var force = false
        @Flag(name: .customLong("keep-disks"), help: "Keep the disk images the node created.") var keepDisks = false

        func run() async throws {
            try await runReportingErrors {
                let request = Limiquantix_Node_V1_DeleteVMRequest.with {
                    $0.name = name
                    $0.force = force
                    $0.keepDisks = keepDisks
                }
                _ = try await options.callNode { try await $0.deleteVM(request, options: NodeConnection.callOptions) }
                print("deleted \(name)")
            }
        }
    }

    struct VMList: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List the node's VMs.")
        @OptionGroup var options: AgentOptions
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await runReportingErrors {
                let list = try await options.callNode {
                    try await $0.listVMs(Limiquantix_Node_V1_ListVMsRequest(), options: NodeConnection.callOptions)
                }
                if output == .json {
                    print(try nodeJSON(list))
                    return
                }
                let width = max(4, list.vms.map(\.name.count).max() ?? 0)
                print(
                    "NAME".padding(toLength: width, withPad: " ", startingAt: 0)
                        + "  STATE          VCPUS  MEMORY    AGENT")
                func column(_ text: String, _ width: Int) -> String {
                    text.padding(toLength: max(width, text.count), withPad: " ", startingAt: 0)
                }
                for vm in list.vms {
                    let columns: [String] = [
                        column(vm.name, width), column(stateName(vm.state), 13), column(String(vm.spec.vcpus), 5),
                        column("\(vm.spec.memoryMib) MiB", 8), vm.agent.connected ? "connected" : "-",
                    ]
                    print(columns.joined(separator: "  "))
                }
            }
        }
    }

    struct VMSnapshot: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "snapshot", abstract: "Snapshots stored in the VM's qcow2 disks.",
            subcommands: [Create.self, Revert.self, Delete.self, List.self])

        struct Create: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Take a snapshot (disks; memory too while the VM runs).")
            @OptionGroup var options: AgentOptions
            @Argument(help: "VM name.") var vm: String
            @Argument(help: "Snapshot name (default: snap-UNIXTIME).") var name: String?
            @Option(help: "Free text kept with the snapshot.") var description: String = ""
            func run() async throws {
                try await runReportingErrors {
                    let request = Limiquantix_Node_V1_CreateSnapshotRequest.with {
                        $0.vm = vm
                        $0.name = name ?? ""
                        $0.description_p = description
                    }
                    let snapshot = try await options.callNode {
                        try await $0.createSnapshot(request, options: NodeConnection.callOptions)
                    }
                    print("snapshot \(snapshot.name) of \(vm) created (\(stateName(snapshot.state)))")
                }
            }
        }

        struct Revert: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Return the VM to a snapshot.")
            @OptionGroup var options: AgentOptions
            @Argument(help: "VM name.") var vm: String
            @Argument(help: "Snapshot name.") var name: String
            func run() async throws {
                try await runReportingErrors {
                    let request = Limiquantix_Node_V1_SnapshotRef.with {
                        $0.vm = vm
                        $0.name = name
                    }
                    let result = try await options.callNode {
                        try await $0.revertSnapshot(request, options: NodeConnection.callOptions)
                    }
                    print("\(vm) reverted to \(name), \(stateName(result.state))")
                }
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a snapshot.")
            @OptionGroup var options: AgentOptions
            @Argument(help: "VM name.") var vm: String
            @Argument(help: "Snapshot name.") var name: String
            func run() async throws {
                try await runReportingErrors {
                    let request = Limiquantix_Node_V1_SnapshotRef.with {
                        $0.vm = vm
                        $0.name = name
                    }
                    _ = try await options.callNode {
                        try await $0.deleteSnapshot(request, options: NodeConnection.callOptions)
                    }
                    print("snapshot \(name) of \(vm) deleted")
                }
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List a VM's snapshots.")
            @OptionGroup var options: AgentOptions
            @Argument(help: "VM name.") var vm: String
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text
            func run() async throws {
                try await runReportingErrors {
                    let vm = self.vm
                    let list = try await options.callNode {
                        try await $0.listSnapshots(.with { $0.name = vm }, options: NodeConnection.callOptions)
                    }
                    if output == .json {
                        print(try nodeJSON(list))
                        return
                    }
                    for s in list.snapshots {
                        let date = Date(timeIntervalSince1970: TimeInterval(s.createdUnix))
                        print(
                            "\(s.current ? "*" : " ") \(s.name)  \(date)  \(stateName(s.state))"
                                + (s.description_p.isEmpty ? "" : "  \(s.description_p)"))
                    }
                }
            }
        }
    }

    struct VMAttachDisk: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "attach-disk", abstract: "Add a disk to a VM (hot-plugged while it runs).")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var vm: String
        @Option(name: .customLong("new"), help: "New empty qcow2 disk of this many GiB.") var newSize: UInt64?
        @Option(help: "Existing image on the node.") var path: String?
        @Option(help: "New qcow2 image backed by this image.") var clone: String?
        @Flag(name: .customLong("read-only"), help: "Attach read-only.") var readOnly = false

        func validate() throws {
            if [newSize != nil, path != nil, clone != nil].filter({ $0 }).count != 1 {
                throw ValidationError("give exactly one of --new GIB, --path IMAGE, --clone IMAGE")
            }
        }

        func run() async throws {
            try await runReportingErrors {
                let request = Limiquantix_Node_V1_AttachDiskRequest.with {
                    $0.vm = vm
                    $0.disk = .with {
                        if let newSize { $0.newSizeGib = newSize }
                        if let path { $0.path = path }
                        if let clone { $0.cloneOf = clone }
                        $0.readOnly = readOnly
                    }
                }
                let result = try await options.callNode {
                    try await $0.attachDisk(request, options: NodeConnection.callOptions)
                }
                print("disk attached to \(vm); it now has \(result.spec.disks.count) disk(s)")
            }
        }
    }

    struct VMDetachDisk: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "detach-disk", abstract: "Remove a disk (by target, e.g. vdb) from a VM.")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var vm: String
        @Argument(help: "Target name, e.g. vdb.") var target: String
        @Flag(name: .customLong("delete-image"), help: "Delete the image when the node created it.") var deleteImage =
            false

        func run() async throws {
            try await runReportingErrors {
                let request = Limiquantix_Node_V1_DetachDiskRequest.with {
                    $0.vm = vm
                    $0.target = target
                    $0.deleteImage = deleteImage
                }
                _ = try await options.callNode { try await $0.detachDisk(request, options: NodeConnection.callOptions) }
                print("\(target) detached from \(vm)")
            }
        }
    }

    struct VMConsole: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "console", abstract: "Where a VM's console is (serial log on the node, PTY, VNC).")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var vm: String
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await runReportingErrors {
                let vm = self.vm
                let info = try await options.callNode {
                    try await $0.getConsole(.with { $0.name = vm }, options: NodeConnection.callOptions)
                }
                if output == .json {
                    print(try nodeJSON(info))
                    return
                }
                print("serial log: \(info.serialLog)")
                if !info.pty.isEmpty { print("pty:        \(info.pty)") }
                if !info.vnc.isEmpty { print("vnc:        \(info.vnc)") }
            }
        }
    }

    struct VMMigrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "migrate",
            abstract: "Live-migrate a running VM to another libvirt (e.g. qemu+ssh://host/system).")
        @OptionGroup var options: AgentOptions
        @Argument(help: "VM name.") var vm: String
        @Argument(help: "Destination libvirt URI.") var destination: String
        @Option(name: .customLong("max-downtime"), help: "Longest pause at switch-over, milliseconds.") var maxDowntime:
            UInt32 = 0
        @Option(help: "Bandwidth limit, MiB/s (0: none).") var bandwidth: UInt32 = 0
        @Option(
            name: .customLong("migration-address"),
            help: "Host or IP where the destination takes the migration stream (default: its host name).")
        var migrationAddress: String?

        func run() async throws {
            try await runReportingErrors {
                let request = Limiquantix_Node_V1_MigrateVMRequest.with {
                    $0.name = vm
                    $0.destinationUri = destination
                    $0.maxDowntimeMs = maxDowntime
                    $0.bandwidthMibps = bandwidth
                    if let migrationAddress { $0.migrationAddress = migrationAddress }
                }
                try await options.callNode { stub in
                    try await stub.migrateVM(request, options: NodeConnection.callOptions) { response in
                        for try await progress in response.messages {
                            if progress.done {
                                FileHandle.standardError.write(Data("\n".utf8))
                            } else if progress.dataTotalBytes > 0 {
                                let percent =
                                    Double(progress.dataProcessedBytes) / Double(progress.dataTotalBytes) * 100
                                FileHandle.standardError.write(
                                    Data(
                                        String(
                                            format: "\rmigrating: %3.0f%% (%@ remaining)", percent,
                                            formatBytes(progress.dataRemainingBytes)
                                        ).utf8))
                            }
                        }
                    }
                }
                print("\(vm) migrated to \(destination)")
            }
        }
    }

    struct NodeCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "node", abstract: "The node daemon's host.", subcommands: [Info.self])

        struct Info: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Hardware, hypervisor and VM counts of the node.")
            @OptionGroup var options: AgentOptions
            @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

            func run() async throws {
                try await runReportingErrors {
                    let info = try await options.callNode {
                        try await $0.getNodeInfo(
                            Limiquantix_Node_V1_NodeInfoRequest(), options: NodeConnection.callOptions)
                    }
                    if output == .json {
                        print(try nodeJSON(info))
                        return
                    }
                    let c = info.cpu, h = info.hypervisor
                    print("node:       \(info.hostname) (lqx-node \(info.version))")
                    print(
                        "cpu:        \(c.model), \(c.logical) logical (\(c.sockets) socket(s) × \(c.coresPerSocket) cores × \(c.threadsPerCore) threads)"
                    )
                    print("numa:       \(info.numa.count) node(s)")
                    print(
                        "memory:     \(formatBytes(info.memoryBytes))"
                            + (info.hugePagesTotal > 0
                                ? ", \(info.hugePagesTotal) huge pages of \(formatBytes(info.hugePageSizeBytes))" : ""))
                    for d in info.disks {
                        print("disk:       \(d.name) \(d.kind) \(formatBytes(d.sizeBytes)) \(d.model)")
                    }
                    for n in info.nics {
                        print(
                            "nic:        \(n.name) \(n.driver) \(n.speedMbps >= 0 ? "\(n.speedMbps) Mb/s" : "")"
                                + (n.sriovTotalVfs > 0 ? " SR-IOV \(n.sriovTotalVfs) VFs" : ""))
                    }
                    for g in info.gpus { print("gpu:        \(g.address) \(g.vendorID):\(g.deviceID)") }
                    print(
                        "hypervisor: libvirt \(h.libvirtVersion), QEMU \(h.hypervisorVersion), domain type \(h.domainType)"
                            + (h.uefi ? ", UEFI" : "") + (h.vhostVsock ? ", vhost-vsock" : ""))
                    print(
                        "vms:        \(info.vms) (\(info.vmsRunning) running, \(info.agentsConnected) agents connected)"
                    )
                }
            }
        }
    }
#endif
