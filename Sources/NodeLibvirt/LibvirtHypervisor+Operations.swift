import Foundation
import LQXModel
import NodeCore

extension LibvirtHypervisor {
    // MARK: spec file

    func specPath(_ name: String) -> String { "\(layout.vmState(name))/spec.json" }

    /// Writes the spec atomically (temp file, fsync, rename).
    func saveSpec(_ spec: VMSpec) throws(LQXError) {
        let path = specPath(spec.name)
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let data = try encoder.encode(spec)
            let temp = path + ".tmp"
            guard FileManager.default.createFile(atPath: temp, contents: data, attributes: [.posixPermissions: 0o640])
            else { throw LQXError(.io, "cannot write \(temp)") }
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: temp))
            try handle.synchronize()
            try handle.close()
            guard rename(temp, path) == 0 else {
                throw LQXError(.io, "cannot write \(path): \(String(cString: strerror(errno)))")
            }
        } catch let error as LQXError {
            throw error
        } catch {
            throw LQXError(.io, "cannot write \(path): \(error.localizedDescription)")
        }
    }

    func loadSpec(_ name: String) -> VMSpec? {
        guard let data = FileManager.default.contents(atPath: specPath(name)) else { return nil }
        return try? JSONDecoder().decode(VMSpec.self, from: data)
    }

    // MARK: snapshots

    /// Takes an internal snapshot: the disks (all must be qcow2) and, while the VM runs, its memory.
    public func createSnapshot(_ vm: String, name: String?, description: String = "") async throws(LQXError)
        -> SnapshotInfo
    {
        let snapshot = name.flatMap { $0.isEmpty ? nil : $0 } ?? "snap-\(Int(Date().timeIntervalSince1970))"
        do { try VMSpec.validate(name: snapshot) } catch {
            throw LQXError(.invalidSpec, "snapshot \(error.message)")
        }
        return try await blocking { [self] () throws(LQXError) in
            let domain = try domain(vm)
            let spec = loadSpec(vm)
            if let spec, spec.disks.isEmpty {
                throw LQXError(
                    .failedPrecondition,
                    "VM \(vm) has no disk: a snapshot is stored in the VM's qcow2 disks, so it needs at least one")
            }
            try domain.createSnapshot(name: snapshot, description: description)
            logger.info("snapshot created", metadata: ["vm": "\(vm)", "snapshot": "\(snapshot)"])
            guard let info = try domain.snapshots().first(where: { $0.name == snapshot }) else {
                throw LQXError(.hypervisor, "snapshot \(snapshot) of \(vm) was created but is not listed")
            }
            return info
        }
    }

    /// Reverts the VM to a snapshot: its disks, and its running state when the snapshot has memory.
    public func revertSnapshot(_ vm: String, name: String) async throws(LQXError) {
        try await blocking { [self] () throws(LQXError) in
            try domain(vm).revert(toSnapshot: name)
            logger.info("reverted to snapshot", metadata: ["vm": "\(vm)", "snapshot": "\(name)"])
        }
    }

    /// Deletes one of the VM's snapshots.
    public func deleteSnapshot(_ vm: String, name: String) async throws(LQXError) {
        try await blocking { [self] () throws(LQXError) in try domain(vm).deleteSnapshot(name) }
    }

    /// The VM's snapshots.
    public func snapshots(_ vm: String) async throws(LQXError) -> [SnapshotInfo] {
        try await blocking { [self] () throws(LQXError) in try domain(vm).snapshots() }
    }

    // MARK: disks

    /// Disk target names (vda, sdb, …) in the domain XML, with each disk's source file.
    static func diskTargets(in xml: String) -> [(target: String, source: String?, element: String)] {
        XMLText.elements("disk", in: xml).compactMap { element in
            guard let target = XMLText.attributes("dev", of: "target", in: element).first else { return nil }
            return (target, XMLText.attributes("file", of: "source", in: element).first, element)
        }
    }

    /// Adds a disk to the VM (to the running VM too, when it runs) and returns its target name.
    public func attachDisk(_ vm: String, _ disk: DiskSpec) async throws(LQXError) -> String {
        try disk.validate(field: "disk")
        return try await blocking { [self] () throws(LQXError) in
            let domain = try domain(vm)
            let live = try domain.state().isActive
            var used = Set(Self.diskTargets(in: try domain.xml(inactive: true)).map(\.target))
            if live { used.formUnion(Self.diskTargets(in: try domain.xml()).map(\.target)) }
            let prefix = DomainPlan.targetPrefix(disk.bus)
            guard
                let target = (0..<26).map({ DomainPlan.target(prefix: prefix, index: $0) }).first(where: {
                    !used.contains($0)
                })
            else { throw LQXError(.failedPrecondition, "VM \(vm) has no free \(prefix)* disk name left") }
            if disk.bus == .scsi, !used.contains(where: { $0.hasPrefix("sd") }), live {
                // A virtio-scsi controller is only present when the VM was defined with a SCSI disk.
                let xml = try domain.xml()
                guard xml.contains("model='virtio-scsi'") else {
                    throw LQXError(.failedPrecondition, "VM \(vm) has no SCSI controller; attach with bus virtio")
                }
            }
            let stateDir = layout.vmState(vm)
            var createdImage: String?
            let planned: DomainPlan.PlannedDisk
            switch disk.source {
            case .path(let path):
                try requireFile(path, field: "disk.path")
                planned = .init(path: path, format: try imageFormat(path), bus: disk.bus, readOnly: disk.readOnly)
            case .new(let size):
                let path = "\(stateDir)/\(target).qcow2"
                try qemuImg(["create", "-q", "-f", "qcow2", path, "\(size)G"])
                createdImage = path
                planned = .init(path: path, format: "qcow2", bus: disk.bus, readOnly: disk.readOnly)
            case .clone(let backing):
                try requireFile(backing, field: "disk.backing")
                let path = "\(stateDir)/\(target).qcow2"
                try qemuImg(["create", "-q", "-f", "qcow2", "-F", try imageFormat(backing), "-b", backing, path])
                createdImage = path
                planned = .init(path: path, format: "qcow2", bus: disk.bus, readOnly: disk.readOnly)
            }
            do throws(LQXError) {
                try domain.attachDevice(xml: DomainPlan.diskXML(planned, target: target), live: live)
            } catch {
                if let createdImage { unlink(createdImage) }
                throw error
            }
            if var spec = loadSpec(vm) {
                spec.disks.append(disk)
                try? saveSpec(spec)
            }
            logger.info("disk attached", metadata: ["vm": "\(vm)", "target": "\(target)", "live": "\(live)"])
            return target
        }
    }

    /// Removes a disk from the VM; with `deleteImage`, deletes its image when the node created it.
    /// A running guest must release the device: waits up to `timeout` for that.
    public func detachDisk(_ vm: String, target: String, deleteImage: Bool, timeout: Duration = .seconds(20))
        async throws(LQXError)
    {
        let (source, live) = try await blocking { [self] () throws(LQXError) -> (String?, Bool) in
            let domain = try domain(vm)
            let live = try domain.state().isActive
            let xml = live ? try domain.xml() : try domain.xml(inactive: true)
            guard let disk = Self.diskTargets(in: xml).first(where: { $0.target == target }) else {
                throw LQXError(.notFound, "VM \(vm) has no disk \(target)")
            }
            try domain.detachDevice(xml: disk.element, live: live)
            return (disk.source, live)
        }
        if live {
            let deadline = ContinuousClock.now + timeout
            while true {
                let gone = try await blocking { [self] () throws(LQXError) in
                    !Self.diskTargets(in: try domain(vm).xml()).contains { $0.target == target }
                }
                if gone { break }
                guard ContinuousClock.now < deadline else {
                    throw LQXError(
                        .timeout,
                        "the guest in \(vm) has not released \(target) within \(timeout); it is gone from the definition and disappears at the next power-off"
                    )
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        if var spec = loadSpec(vm), let index = Self.specIndex(of: target, in: spec) {
            spec.disks.remove(at: index)
            try? saveSpec(spec)
        }
        if deleteImage, let source, source.hasPrefix(layout.vmState(vm) + "/"), source.hasSuffix(".qcow2") {
            unlink(source)
        }
        logger.info("disk detached", metadata: ["vm": "\(vm)", "target": "\(target)"])
    }

    /// The position in the spec of the disk with this target name (targets count per prefix).
    static func specIndex(of target: String, in spec: VMSpec) -> Int? {
        var perPrefix: [String: Int] = [:]
        for (index, disk) in spec.disks.enumerated() {
            let prefix = DomainPlan.targetPrefix(disk.bus)
            let n = perPrefix[prefix, default: 0]
            perPrefix[prefix] = n + 1
            if DomainPlan.target(prefix: prefix, index: n) == target { return index }
        }
        return nil
    }

    // MARK: console, migration, capabilities

    /// Where the VM's console can be read: the serial log, and a pty or VNC display if it has one.
    public func console(_ vm: String) async throws(LQXError) -> ConsoleInfo {
        try await blocking { [self] () throws(LQXError) in
            let domain = try domain(vm)
            let xml = try domain.xml()
            let serial = XMLText.elements("serial", in: xml).first ?? ""
            let pty = serial.contains("type='pty'") ? XMLText.attributes("path", of: "source", in: serial).first : nil
            var vnc: String?
            if let graphics = XMLText.attributes("port", of: "graphics", in: xml).first, graphics != "-1" {
                let listen = XMLText.attributes("listen", of: "graphics", in: xml).first ?? "127.0.0.1"
                vnc = "\(listen):\(graphics)"
            }
            return ConsoleInfo(serialLog: "\(layout.vmState(vm))/console.log", pty: pty, vnc: vnc)
        }
    }

    /// Live-migrates the VM to another libvirt, reporting progress about once a second. When the
    /// calling task is cancelled, the libvirt job is aborted and the VM keeps running here.
    public func migrate(
        _ vm: String, _ request: MigrationRequest, progress: @escaping @Sendable (JobProgress) -> Void
    ) async throws(LQXError) {
        let domain = try await blocking { [self] () throws(LQXError) in
            let found = try self.domain(vm)
            guard try found.state() == .running else {
                throw LQXError(.failedPrecondition, "VM \(vm) is not running; only a running VM migrates live")
            }
            return found
        }
        let pool = self.pool
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                // The migration blocks a pool thread; the reporter reads the job's progress beside it
                // and ends when the migration does (the group cancels it).
                group.addTask {
                    try await withTaskCancellationHandler {
                        try await pool.runIfActive {
                            try domain.migrate(
                                to: request.destinationURI, migrationURI: request.migrationURI,
                                maxDowntimeMilliseconds: request.maxDowntimeMilliseconds,
                                bandwidthMiBps: request.bandwidthMiBps, disksShared: request.disksShared)
                        }
                    } onCancel: {
                        domain.abortJob()
                    }
                }
                group.addTask {
                    while true {
                        try await Task.sleep(for: .seconds(1))
                        if let job = domain.jobProgress() { progress(job) }
                    }
                }
                try await group.next()
                group.cancelAll()
            }
        } catch let error as LQXError {
            if Task.isCancelled {
                throw LQXError(.cancelled, "migration of \(vm) cancelled; the VM keeps running here", cause: error)
            }
            throw error
        } catch {
            if Task.isCancelled {
                throw LQXError(.cancelled, "migration of \(vm) cancelled; the VM keeps running here")
            }
            throw LQXError(.hypervisor, "migration of \(vm)", cause: error)
        }
        try? await blocking { [self] () throws(LQXError) in removeLeftovers(vm) }
        logger.info("VM migrated", metadata: ["vm": "\(vm)", "destination": "\(request.destinationURI)"])
    }

    /// What the hypervisor is and can do: versions, domain type, UEFI, vsock and machine types.
    public func hypervisorInfo() async throws(LQXError) -> HypervisorInfo {
        try await blocking { [self] () throws(LQXError) in
            let capabilities = try connection.capabilities()
            let versions = connection.versions()
            var machines = XMLText.elements("machine", in: capabilities).compactMap { element -> String? in
                guard let start = element.firstIndex(of: ">"), let end = element.range(of: "</machine>") else {
                    return nil
                }
                return String(element[element.index(after: start)..<end.lowerBound])
            }
            machines = Array(Set(machines)).sorted()
            return HypervisorInfo(
                uri: connection.uri, libvirtVersion: versions.libvirt, hypervisorVersion: versions.hypervisor,
                domainType: facts.kvmUsable ? "kvm" : "qemu", uefi: facts.ovmf != nil, vhostVsock: facts.vhostVsock,
                machineTypes: machines, capabilitiesXML: capabilities)
        }
    }
}
