import CLibvirt
import Foundation
import Glibc
import LQXModel
import NodeCore

extension LibvirtConnection {
    /// `virConnectGetCapabilities`: host CPU, NUMA, guest architectures and machine types.
    public func capabilities() throws(LQXError) -> String {
        guard let text = virConnectGetCapabilities(pointer) else {
            throw Self.lastError("reading libvirt capabilities", notFound: .hypervisor)
        }
        defer { free(text) }
        return String(cString: text)
    }

    /// libvirt's own version and the hypervisor's (QEMU) as "major.minor.release".
    public func versions() -> (libvirt: String, hypervisor: String) {
        var library: UInt = 0, hypervisor: UInt = 0
        if virConnectGetLibVersion(pointer, &library) != 0 { virResetLastError() }
        if virConnectGetVersion(pointer, &hypervisor) != 0 { virResetLastError() }
        func format(_ v: UInt) -> String { v == 0 ? "" : "\(v / 1_000_000).\(v / 1000 % 1000).\(v % 1000)" }
        return (format(library), format(hypervisor))
    }
}

extension LibvirtDomain {
    private func check(_ rc: Int32, _ what: String) throws(LQXError) {
        if rc != 0 { throw LibvirtConnection.lastError("\(what) \(name)", notFound: .notFound) }
    }

    // MARK: snapshots

    /// Creates an internal snapshot (qcow2): disks, and memory when the domain runs.
    public func createSnapshot(name snapshot: String, description: String) throws(LQXError) {
        var x = XMLWriter()
        x.open("domainsnapshot")
        x.leaf("name", snapshot)
        if !description.isEmpty { x.leaf("description", description) }
        x.close("domainsnapshot")
        guard let pointer = virDomainSnapshotCreateXML(self.pointer, x.text, 0) else {
            throw LibvirtConnection.lastError("snapshot \(snapshot) of \(name)", notFound: .notFound)
        }
        virDomainSnapshotFree(pointer)
    }

    private func withSnapshot<T>(_ snapshot: String, _ body: (virDomainSnapshotPtr) throws(LQXError) -> T)
        throws(LQXError) -> T
    {
        guard let pointer = virDomainSnapshotLookupByName(self.pointer, snapshot, 0) else {
            throw LibvirtConnection.lastError("snapshot \(snapshot) of \(name)", notFound: .notFound)
        }
        defer { virDomainSnapshotFree(pointer) }
        return try body(pointer)
    }

    /// Returns the domain to the snapshot's disks (and its running state, when it had memory).
    public func revert(toSnapshot snapshot: String) throws(LQXError) {
        try withSnapshot(snapshot) { pointer throws(LQXError) in
            try check(virDomainRevertToSnapshot(pointer, 0), "reverting to \(snapshot):")
        }
    }

    /// Deletes the snapshot of that name.
    public func deleteSnapshot(_ snapshot: String) throws(LQXError) {
        try withSnapshot(snapshot) { pointer throws(LQXError) in
            try check(virDomainSnapshotDelete(pointer, 0), "deleting snapshot \(snapshot) of")
        }
    }

    /// The domain's snapshots, each read from its XML.
    public func snapshots() throws(LQXError) -> [SnapshotInfo] {
        var list: UnsafeMutablePointer<virDomainSnapshotPtr?>?
        let count = virDomainListAllSnapshots(pointer, &list, 0)
        guard count >= 0, let list else { throw LibvirtConnection.lastError("listing snapshots of \(name)") }
        defer {
            for index in 0..<Int(count) { if let s = list[index] { virDomainSnapshotFree(s) } }
            free(list)
        }
        var result: [SnapshotInfo] = []
        for index in 0..<Int(count) {
            guard let snapshot = list[index], let text = virDomainSnapshotGetXMLDesc(snapshot, 0) else { continue }
            let xml = String(cString: text)
            free(text)
            let name = virDomainSnapshotGetName(snapshot).map { String(cString: $0) } ?? ""
            result.append(
                SnapshotInfo(
                    name: name, description: XMLText.element("description", in: xml) ?? "",
                    createdUnix: Int64(XMLText.element("creationTime", in: xml) ?? "") ?? 0,
                    state: XMLText.element("state", in: xml) ?? "",
                    current: virDomainSnapshotIsCurrent(snapshot, 0) == 1,
                    parent: XMLText.element("parent", in: xml).flatMap { XMLText.element("name", in: $0) }))
        }
        return result.sorted { ($0.createdUnix, $0.name) < ($1.createdUnix, $1.name) }
    }

    // MARK: devices

    /// Adds a device to the stored definition and, when the domain runs, to the running VM.
    public func attachDevice(xml: String, live: Bool) throws(LQXError) {
        var flags = UInt32(VIR_DOMAIN_AFFECT_CONFIG.rawValue)
        if live { flags |= UInt32(VIR_DOMAIN_AFFECT_LIVE.rawValue) }
        try check(virDomainAttachDeviceFlags(pointer, xml, flags), "attaching a device to")
    }

    /// Removes a device from the stored definition and, when the domain runs, asks the guest to
    /// release it (completion is reported by a DEVICE_REMOVED event / the live XML).
    public func detachDevice(xml: String, live: Bool) throws(LQXError) {
        var flags = UInt32(VIR_DOMAIN_AFFECT_CONFIG.rawValue)
        if live { flags |= UInt32(VIR_DOMAIN_AFFECT_LIVE.rawValue) }
        try check(virDomainDetachDeviceFlags(pointer, xml, flags), "detaching a device from")
    }

    // MARK: migration

    /// Live-migrates to `uri` (peer to peer through libvirtd, definition persisted there and
    /// removed here). Blocks until the migration ends; `jobProgress()` reports while it runs.
    /// `migrationURI` (e.g. tcp://10.0.0.2) is where the destination QEMU listens.
    /// `disksShared`: the writable disks are on storage declared shared, which libvirt's own
    /// check (it recognizes network and cluster file systems) is told to accept (`VIR_MIGRATE_UNSAFE`).
    public func migrate(
        to uri: String, migrationURI: String?, maxDowntimeMilliseconds: UInt32, bandwidthMiBps: UInt32,
        disksShared: Bool = false
    ) throws(LQXError) {
        var flags =
            UInt32(VIR_MIGRATE_LIVE.rawValue) | UInt32(VIR_MIGRATE_PEER2PEER.rawValue)
            | UInt32(VIR_MIGRATE_PERSIST_DEST.rawValue) | UInt32(VIR_MIGRATE_UNDEFINE_SOURCE.rawValue)
            | UInt32(VIR_MIGRATE_ABORT_ON_ERROR.rawValue)
        if disksShared { flags |= UInt32(VIR_MIGRATE_UNSAFE.rawValue) }
        if maxDowntimeMilliseconds > 0 {
            _ = virDomainMigrateSetMaxDowntime(pointer, UInt64(maxDowntimeMilliseconds), 0)
        }
        var params: virTypedParameterPtr?
        var count: Int32 = 0, capacity: Int32 = 0
        defer { virTypedParamsFree(params, count) }
        if let migrationURI {
            virTypedParamsAddString(&params, &count, &capacity, VIR_MIGRATE_PARAM_URI, migrationURI)
        }
        if bandwidthMiBps > 0 {
            virTypedParamsAddULLong(&params, &count, &capacity, VIR_MIGRATE_PARAM_BANDWIDTH, UInt64(bandwidthMiBps))
        }
        if virDomainMigrateToURI3(pointer, uri, params, UInt32(count), flags) != 0 {
            throw LibvirtConnection.lastError("migrating \(name) to \(uri)", notFound: .notFound)
        }
    }

    /// Aborts the domain's running job (a migration); the migration call then fails.
    public func abortJob() {
        if virDomainAbortJob(pointer) != 0 { virResetLastError() }
    }

    /// The running job's progress, or nil when none runs.
    public func jobProgress() -> JobProgress? {
        var info = virDomainJobInfo()
        guard virDomainGetJobInfo(pointer, &info) == 0 else {
            virResetLastError()
            return nil
        }
        guard info.type != Int32(VIR_DOMAIN_JOB_NONE.rawValue) else { return nil }
        return JobProgress(
            dataTotal: info.dataTotal, dataProcessed: info.dataProcessed, dataRemaining: info.dataRemaining,
            elapsedMilliseconds: info.timeElapsed)
    }
}

/// Just enough XML reading for libvirt's own, well-formed output: the text of the first element
/// of a name (no attributes on it), unescaped.
enum XMLText {
    static func element(_ name: String, in xml: String) -> String? {
        guard let start = xml.range(of: "<\(name)>"),
            let end = xml.range(of: "</\(name)>", range: start.upperBound..<xml.endIndex)
        else { return nil }
        return unescape(String(xml[start.upperBound..<end.lowerBound]))
    }

    /// Values of `attribute` on every element named `element` (e.g. every `<target dev=…>`).
    static func attributes(_ attribute: String, of element: String, in xml: String) -> [String] {
        var result: [String] = []
        var rest = xml[...]
        while let open = rest.range(of: "<\(element) ") {
            let tagEnd = rest.range(of: ">", range: open.upperBound..<rest.endIndex)?.lowerBound ?? rest.endIndex
            let tag = rest[open.upperBound..<tagEnd]
            for quote in ["'", "\""] {
                if let a = tag.range(of: "\(attribute)=\(quote)"),
                    let b = tag.range(of: quote, range: a.upperBound..<tag.endIndex)
                {
                    result.append(unescape(String(tag[a.upperBound..<b.lowerBound])))
                    break
                }
            }
            rest = rest[tagEnd...]
        }
        return result
    }

    /// The complete elements named `element` (from `<element` to its matching close or `/>`),
    /// for elements that do not nest.
    static func elements(_ element: String, in xml: String) -> [String] {
        var result: [String] = []
        var rest = xml[...]
        while let open = rest.range(of: "<\(element) ") ?? rest.range(of: "<\(element)>") {
            guard let close = rest.range(of: "</\(element)>", range: open.upperBound..<rest.endIndex) else { break }
            result.append(String(rest[open.lowerBound..<close.upperBound]))
            rest = rest[close.upperBound...]
        }
        return result
    }

    static func unescape(_ s: String) -> String {
        guard s.contains("&") else { return s }
        return s.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&amp;", with: "&")
    }
}
