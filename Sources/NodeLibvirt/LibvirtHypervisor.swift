import Foundation
import LQXModel
import Logging
import NIOPosix
import NodeCore
import POSIXSupport

/// `Hypervisor` over libvirt.
public final class LibvirtHypervisor: Hypervisor {
    /// The libvirt connection every call goes through.
    public let connection: LibvirtConnection
    /// Where the VMs' state and run files are kept.
    public let layout: NodeLayout
    /// What the host offers the VMs (KVM, vsock, OVMF, the QEMU user).
    public let facts: HostFacts
    let logger: Logger
    let pool: NIOThreadPool

    /// Connects to libvirt at `uri`; `facts` are this host's unless given.
    public init(
        uri: String = "qemu:///system", layout: NodeLayout, facts: HostFacts = .detect(),
        logger: Logger = Logger(label: "lqx-node"), pool: NIOThreadPool = .singleton
    ) throws(LQXError) {
        self.connection = try LibvirtConnection(uri: uri)
        self.layout = layout
        self.facts = facts
        self.logger = logger
        self.pool = pool
    }

    /// Whether the libvirt connection is alive.
    public var isAlive: Bool { connection.isAlive }

    /// Lifecycle events of every domain (registered now, removed when the consumer stops).
    public func events() throws(LQXError) -> AsyncStream<DomainEvent> {
        let (stream, input) = AsyncStream.makeStream(of: DomainEvent.self, bufferingPolicy: .unbounded)
        let id = try connection.addEventHandler { event in input.yield(event) }
        let connection = self.connection
        input.onTermination = { _ in connection.removeEventHandler(id) }
        return stream
    }

    /// Runs blocking libvirt and file work on the thread pool.
    func blocking<T: Sendable>(_ body: @escaping @Sendable () throws(LQXError) -> T) async throws(LQXError)
        -> T
    {
        do {
            return try await pool.runIfActive {
                do throws(LQXError) { return Result<T, LQXError>.success(try body()) } catch {
                    return .failure(error)
                }
            }.get()
        } catch let error as LQXError {
            throw error
        } catch {
            throw LQXError(.hypervisor, "\(error)")
        }
    }

    func domain(_ name: String) throws(LQXError) -> LibvirtDomain {
        guard let domain = try connection.domain(named: name) else {
            throw LQXError(.notFound, "no VM named \(name)")
        }
        guard isOwn(domain, name: name) else {
            throw LQXError(
                .notFound,
                "no VM named \(name) on this node (libvirt has a domain of that name, managed by another node or tool)")
        }
        return domain
    }

    /// Whether this node created the domain: its metadata names this node's state directory.
    /// Two nodes sharing a libvirtd (distinct state directories) never see each other's VMs, and
    /// a VM migrated between hosts with the same state directory is adopted by the destination.
    func isOwn(_ domain: LibvirtDomain, name: String) -> Bool {
        guard let xml = try? domain.xml(inactive: true) else { return false }
        return xml.contains(DomainPlan.metadataNamespace)
            && XMLText.element("lqx:console-log", in: xml) == "\(layout.vmState(name))/console.log"
    }

    /// Validates the spec, checks what it refers to, creates the VM's directories and disks and
    /// defines the domain (stopped); the directories are removed again when a step fails.
    public func create(_ spec: VMSpec) async throws(LQXError) -> VMStatus {
        try spec.validate()
        return try await blocking { [self] () throws(LQXError) in try createBlocking(spec) }
    }

    private func createBlocking(_ spec: VMSpec) throws(LQXError) -> VMStatus {
        if try connection.domain(named: spec.name) != nil {
            throw LQXError(.alreadyExists, "a VM named \(spec.name) exists already")
        }
        // Everything the spec refers to must exist before anything is created.
        for (index, nic) in spec.nics.enumerated() {
            switch nic.attachment {
            case .network(let name):
                let state = connection.networkState(name)
                guard state.exists else {
                    throw LQXError(.notFound, "nics[\(index)]: libvirt network \(name) does not exist")
                }
            case .bridge(let name):
                guard FileManager.default.fileExists(atPath: "/sys/class/net/\(name)/bridge") else {
                    throw LQXError(.notFound, "nics[\(index)]: bridge \(name) does not exist on this host")
                }
            }
        }
        if case .kernel(let kernel, let initrd, _) = spec.boot {
            try requireFile(kernel, field: "kernel")
            if let initrd { try requireFile(initrd, field: "initrd") }
        }
        for (index, disk) in spec.disks.enumerated() {
            switch disk.source {
            case .path(let path): try requireFile(path, field: "disks[\(index)].path")
            case .clone(let backing): try requireFile(backing, field: "disks[\(index)].backing")
            case .new: break
            }
        }
        if spec.firmware == .uefi && facts.ovmf == nil {
            throw LQXError(.invalidSpec, "firmware uefi: OVMF is not installed on this host (apt install ovmf)")
        }

        let stateDir = layout.vmState(spec.name), runDir = layout.vmRun(spec.name)
        let created = try makeVMDirectories(spec.name)
        do throws(LQXError) {
            let uuid = VMID.random().rawValue
            var disks: [DomainPlan.PlannedDisk] = []
            for (index, disk) in spec.disks.enumerated() {
                switch disk.source {
                case .path(let path):
                    disks.append(
                        .init(path: path, format: try imageFormat(path), bus: disk.bus, readOnly: disk.readOnly))
                case .new(let size):
                    let path = "\(stateDir)/disk\(index).qcow2"
                    try qemuImg(["create", "-q", "-f", "qcow2", path, "\(size)G"])
                    disks.append(.init(path: path, format: "qcow2", bus: disk.bus, readOnly: disk.readOnly))
                case .clone(let backing):
                    let path = "\(stateDir)/disk\(index).qcow2"
                    try qemuImg([
                        "create", "-q", "-f", "qcow2", "-F", try imageFormat(backing), "-b", backing, path,
                    ])
                    disks.append(.init(path: path, format: "qcow2", bus: disk.bus, readOnly: disk.readOnly))
                }
            }
            let plan = DomainPlan(
                spec: spec, uuid: uuid, domainType: facts.kvmUsable ? .kvm : .qemu, emulator: facts.emulator,
                disks: disks,
                macs: spec.nics.enumerated().map {
                    $1.mac?.lowercased() ?? DomainPlan.generatedMAC(uuid: uuid, index: $0)
                },
                agentSocket: "\(runDir)/agent.sock", consoleLog: "\(stateDir)/console.log",
                vsockCID: facts.vhostVsock ? try nextFreeCID() : nil,
                uefi: spec.firmware == .uefi
                    ? facts.ovmf.map {
                        .init(code: $0.code, varsTemplate: $0.varsTemplate, nvram: "\(stateDir)/VARS.fd")
                    }
                    : nil)
            try saveSpec(spec)
            let domain = try connection.define(xml: plan.domainXML())
            logger.info("VM created", metadata: ["vm": "\(spec.name)", "vm.uuid": "\(uuid)"])
            return VMStatus(
                name: spec.name, uuid: domain.uuid, state: try domain.state(), agentSocket: plan.agentSocket,
                consoleLog: plan.consoleLog, spec: spec)
        } catch {
            for dir in created.reversed() { try? FileManager.default.removeItem(atPath: dir) }
            throw error
        }
    }

    /// Makes the VM's state and run directories (owned by libvirt's QEMU user, which opens the
    /// disks there and creates the agent socket) and returns them. What an earlier definition
    /// left there without a disk image (a console log, a spec, an empty directory) is cleared;
    /// kept disk images refuse the name, so they are never overwritten.
    func makeVMDirectories(_ name: String) throws(LQXError) -> [String] {
        var created: [String] = []
        do throws(LQXError) {
            // The parents are traversable.
            for parent in ["\(layout.stateDirectory)/vms", "\(layout.runDirectory)/vms"] {
                try makeDirectory(parent, mode: 0o755)
            }
            for dir in [layout.vmState(name), layout.vmRun(name)] {
                if let entries = try? FileManager.default.contentsOfDirectory(atPath: dir),
                    !entries.contains(where: { $0.hasSuffix(".qcow2") })
                {
                    try? FileManager.default.removeItem(atPath: dir)
                }
                guard !FileManager.default.fileExists(atPath: dir) else {
                    throw LQXError(
                        .alreadyExists, "\(dir) holds disk images; a VM named \(name) was not cleaned up")
                }
                try makeDirectory(dir, mode: 0o750)
                created.append(dir)
                if let user = facts.qemuUser { chown(dir, user.uid, user.gid) }
            }
        } catch {
            for dir in created.reversed() { try? FileManager.default.removeItem(atPath: dir) }
            throw error
        }
        return created
    }

    /// Makes this node ready to receive a live migration of `spec`'s VM: checks the files it
    /// refers to exist here, creates its directories and keeps its spec (no domain: the
    /// migration defines it). Only disks given by path can follow a VM.
    public func prepareIncoming(_ spec: VMSpec) async throws(LQXError) {
        try spec.validate()
        try await blocking { [self] () throws(LQXError) in
            if try connection.domain(named: spec.name) != nil {
                throw LQXError(.alreadyExists, "a VM named \(spec.name) exists already")
            }
            if case .kernel(let kernel, let initrd, _) = spec.boot {
                try requireFile(kernel, field: "kernel")
                if let initrd { try requireFile(initrd, field: "initrd") }
            }
            for (index, disk) in spec.disks.enumerated() {
                guard case .path(let path) = disk.source else {
                    throw LQXError(
                        .invalidSpec, "disks[\(index)]: only a disk given by path can follow a live migration")
                }
                try requireFile(path, field: "disks[\(index)].path")
            }
            let created = try makeVMDirectories(spec.name)
            do throws(LQXError) {
                try saveSpec(spec)
            } catch {
                for dir in created.reversed() { try? FileManager.default.removeItem(atPath: dir) }
                throw error
            }
            logger.info("ready for an incoming migration", metadata: ["vm": "\(spec.name)"])
        }
    }

    /// Removes what a VM that left this node (a migration) had here: its run directory and its
    /// state apart from disk images.
    func removeLeftovers(_ name: String) {
        try? FileManager.default.removeItem(atPath: layout.vmRun(name))
        let stateDir = layout.vmState(name)
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: stateDir)) ?? []
        where !entry.hasSuffix(".qcow2") {
            try? FileManager.default.removeItem(atPath: "\(stateDir)/\(entry)")
        }
        rmdir(stateDir)
    }

    func requireFile(_ path: String, field: String) throws(LQXError) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw LQXError(.notFound, "\(field): \(path) does not exist or is not a file")
        }
    }

    private func makeDirectory(_ path: String, mode: Int) throws(LQXError) {
        do {
            try FileManager.default.createDirectory(
                atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: mode])
        } catch {
            throw LQXError(.io, "cannot create \(path): \(error.localizedDescription)")
        }
    }

    /// `qcow2` or `raw`, from the image's first bytes (never trusting a guest-writable header
    /// for anything but this choice; backing files of qcow2 images are not followed by libvirt
    /// unless declared).
    func imageFormat(_ path: String) throws(LQXError) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw LQXError(.notFound, "cannot read \(path)")
        }
        defer { try? handle.close() }
        let magic = (try? handle.read(upToCount: 4)) ?? nil
        return magic == Data([0x51, 0x46, 0x49, 0xFB]) ? "qcow2" : "raw"
    }

    func qemuImg(_ arguments: [String]) throws(LQXError) {
        let output: ChildOutput
        do { output = try Child.run("/usr/bin/qemu-img", arguments, outputLimit: 64 << 10) } catch {
            throw LQXError(.io, "cannot run qemu-img (apt install qemu-utils): \(error)")
        }
        guard output.status == 0 else {
            throw LQXError(
                .io,
                "qemu-img \(arguments.first ?? "") failed: "
                    + output.stderrText.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    /// The lowest guest CID from 3 up that no defined domain uses.
    private func nextFreeCID() throws(LQXError) -> UInt32 {
        var used = Set<UInt32>()
        for domain in try connection.domains() {
            guard let xml = try? domain.xml(inactive: true), let range = xml.range(of: "<cid auto='no' address='")
            else {
                continue
            }
            if let cid = UInt32(xml[range.upperBound...].prefix { $0.isNumber }) { used.insert(cid) }
        }
        var cid: UInt32 = 3
        while used.contains(cid) { cid += 1 }
        return cid
    }

    /// Starts a defined VM (`failed_precondition` when it runs already).
    public func start(_ name: String) async throws(LQXError) {
        try await blocking { [self] () throws(LQXError) in
            let domain = try domain(name)
            guard try !domain.state().isActive else {
                throw LQXError(.failedPrecondition, "VM \(name) is already running")
            }
            try domain.start()
        }
    }

    /// Presses the VM's ACPI power button; the guest decides whether and when to power off.
    public func requestShutdown(_ name: String) async throws(LQXError) {
        try await blocking { [self] () throws(LQXError) in try domain(name).shutdown() }
    }

    /// Stops the VM at once (destroys its QEMU process); nothing happens when it is not running.
    public func forceStop(_ name: String) async throws(LQXError) {
        try await blocking { [self] () throws(LQXError) in
            let domain = try domain(name)
            guard try domain.state().isActive else { return }
            try domain.destroy()
        }
    }

    /// Asks the guest to reboot through ACPI.
    public func reboot(_ name: String) async throws(LQXError) {
        try await blocking { [self] () throws(LQXError) in try domain(name).reboot() }
    }

    /// Pauses the VM's vCPUs.
    public func pause(_ name: String) async throws(LQXError) {
        try await blocking { [self] () throws(LQXError) in try domain(name).suspend() }
    }

    /// Resumes a paused VM.
    public func resume(_ name: String) async throws(LQXError) {
        try await blocking { [self] () throws(LQXError) in try domain(name).resume() }
    }

    /// Undefines the VM (a running one only with `force`, which stops it first) and removes its
    /// run directory, and its state directory with `deleteDisks` (else all but the qcow2 images).
    public func delete(_ name: String, force: Bool, deleteDisks: Bool) async throws(LQXError) {
        try await blocking { [self] () throws(LQXError) in
            let domain = try domain(name)
            if try domain.state().isActive {
                guard force else {
                    throw LQXError(.failedPrecondition, "VM \(name) is running; stop it first or delete with --force")
                }
                try domain.destroy()
            }
            try domain.undefine()
            if deleteDisks {
                try? FileManager.default.removeItem(atPath: layout.vmRun(name))
                try? FileManager.default.removeItem(atPath: layout.vmState(name))
            } else {
                // Keep the node-created disk images; drop the rest (console log, NVRAM). With no
                // disk to keep nothing is left, and the name is free again.
                removeLeftovers(name)
            }
            logger.info("VM deleted", metadata: ["vm": "\(name)", "disks.deleted": "\(deleteDisks)"])
        }
    }

    /// The status of a VM of this node (`not_found` otherwise).
    public func status(_ name: String) async throws(LQXError) -> VMStatus {
        try await blocking { [self] () throws(LQXError) in try status(of: domain(name)) }
    }

    /// The status of a VM this node manages (its domain carries the node's metadata), or nil for
    /// an unknown name or another tool's domain.
    public func managedStatus(_ name: String) async throws(LQXError) -> VMStatus? {
        try await blocking { [self] () throws(LQXError) -> VMStatus? in
            guard let domain = try connection.domain(named: name), isOwn(domain, name: name) else { return nil }
            return try status(of: domain)
        }
    }

    /// Every VM of this node (domains of other nodes or tools are left out), by name.
    public func list() async throws(LQXError) -> [VMStatus] {
        try await blocking { [self] () throws(LQXError) in
            // Only the node's own VMs: other domains on the same libvirtd are not ours to report.
            try connection.domains().filter { isOwn($0, name: $0.name) }
                .map { domain throws(LQXError) in try status(of: domain) }.sorted { $0.name < $1.name }
        }
    }

    private func status(of domain: LibvirtDomain) throws(LQXError) -> VMStatus {
        let name = domain.name
        return VMStatus(
            name: name, uuid: domain.uuid, state: try domain.state(), agentSocket: "\(layout.vmRun(name))/agent.sock",
            consoleLog: "\(layout.vmState(name))/console.log", spec: loadSpec(name))
    }
}
