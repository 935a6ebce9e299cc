import CLibvirt
import Glibc
import LQXModel
import NodeCore

/// A connection to libvirtd (`qemu:///system` by default).
///
/// libvirt connections may be used from several threads; an error is reported per thread
/// (`virGetLastError`), so every call reads it right after failing, on the same thread. Calls block:
/// `LibvirtHypervisor` runs them on a thread pool, never on the cooperative pool.
public final class LibvirtConnection: @unchecked Sendable {
    let pointer: virConnectPtr
    /// The URI the connection was opened with.
    public let uri: String

    /// Connects to libvirtd at `uri` (starting libvirt's event loop first, so events work).
    public init(uri: String) throws(LQXError) {
        Self.installQuietErrorHandler()
        // Events need libvirt's event loop, registered before the first connection opens; it
        // runs while any connection is open.
        let events = LibvirtEventLoop.retain()
        guard let pointer = virConnectOpen(uri) else {
            let error = Self.lastError("cannot connect to libvirt at \(uri)", notFound: .hypervisor)
            if events { LibvirtEventLoop.release() }
            throw error
        }
        self.pointer = pointer
        self.uri = uri
        // A libvirtd that stops answering is noticed within 15 s (needs the event loop).
        self.events = events
        if events { virConnectSetKeepAlive(pointer, 5, 3) }
    }

    /// Whether this connection holds libvirt's event loop (released when it closes).
    private let events: Bool

    deinit {
        virConnectClose(pointer)
        if events { LibvirtEventLoop.release() }
    }

    /// libvirt prints every error to stderr unless a handler is set; errors are reported through
    /// `LQXError` instead.
    private static let quietHandler: Void = {
        virSetErrorFunc(nil) { _, _ in }
    }()

    static func installQuietErrorHandler() { _ = quietHandler }

    /// The calling thread's last libvirt error as a LQXError.
    /// `context` is evaluated after the error was read: it may call libvirt (a domain's name),
    /// and every libvirt call resets the thread's error.
    static func lastError(_ context: @autoclosure () -> String, notFound: LQXError.Code = .notFound) -> LQXError {
        guard let error = virGetLastError() else {
            return LQXError(.hypervisor, "\(context()): unknown libvirt error")
        }
        let message = error.pointee.message.map { String(cString: $0) } ?? "libvirt error \(error.pointee.code)"
        let code: LQXError.Code
        switch Int(error.pointee.code) {
        case Int(VIR_ERR_NO_DOMAIN.rawValue), Int(VIR_ERR_NO_NETWORK.rawValue), Int(VIR_ERR_NO_STORAGE_VOL.rawValue),
            Int(VIR_ERR_NO_DOMAIN_SNAPSHOT.rawValue):
            code = notFound
        case Int(VIR_ERR_OPERATION_INVALID.rawValue): code = .failedPrecondition
        case Int(VIR_ERR_XML_ERROR.rawValue), Int(VIR_ERR_XML_DETAIL.rawValue),
            Int(VIR_ERR_CONFIG_UNSUPPORTED.rawValue):
            code = .invalidSpec
        default: code = .hypervisor
        }
        virResetLastError()
        return LQXError(code, "\(context()): \(message)")
    }

    /// Whether libvirtd still answers (keepalive notices a dead one within 15 s).
    public var isAlive: Bool { virConnectIsAlive(pointer) == 1 }

    /// Defines (persistently) a domain from XML.
    public func define(xml: String) throws(LQXError) -> LibvirtDomain {
        guard let domain = virDomainDefineXMLFlags(pointer, xml, UInt32(VIR_DOMAIN_DEFINE_VALIDATE.rawValue)) else {
            throw Self.lastError("libvirt refused the domain", notFound: .invalidSpec)
        }
        return LibvirtDomain(domain)
    }

    /// The domain of that name, or nil.
    public func domain(named name: String) throws(LQXError) -> LibvirtDomain? {
        guard let domain = virDomainLookupByName(pointer, name) else {
            let error = Self.lastError("looking up domain \(name)")
            if error.code == .notFound { return nil }
            throw error
        }
        return LibvirtDomain(domain)
    }

    /// Every domain, running or not.
    public func domains() throws(LQXError) -> [LibvirtDomain] {
        var list: UnsafeMutablePointer<virDomainPtr?>?
        let count = virConnectListAllDomains(pointer, &list, 0)
        guard count >= 0, let list else { throw Self.lastError("listing domains", notFound: .hypervisor) }
        defer { free(list) }
        return (0..<Int(count)).compactMap { list[$0].map(LibvirtDomain.init) }
    }

    /// Whether a libvirt network of that name exists and is active.
    public func networkState(_ name: String) -> (exists: Bool, active: Bool) {
        guard let network = virNetworkLookupByName(pointer, name) else {
            virResetLastError()
            return (false, false)
        }
        defer { virNetworkFree(network) }
        return (true, virNetworkIsActive(network) == 1)
    }
}

extension DomainState {
    /// The state of libvirt's `virDomainState` value.
    init(_ raw: Int32) {
        switch raw {
        case Int32(VIR_DOMAIN_RUNNING.rawValue): self = .running
        case Int32(VIR_DOMAIN_BLOCKED.rawValue): self = .blocked
        case Int32(VIR_DOMAIN_PAUSED.rawValue): self = .paused
        case Int32(VIR_DOMAIN_SHUTDOWN.rawValue): self = .shuttingDown
        case Int32(VIR_DOMAIN_SHUTOFF.rawValue): self = .shutOff
        case Int32(VIR_DOMAIN_CRASHED.rawValue): self = .crashed
        case Int32(VIR_DOMAIN_PMSUSPENDED.rawValue): self = .suspended
        default: self = .unknown
        }
    }
}

/// One libvirt domain handle.
public final class LibvirtDomain: @unchecked Sendable {
    let pointer: virDomainPtr

    init(_ pointer: virDomainPtr) {
        self.pointer = pointer
    }

    deinit {
        virDomainFree(pointer)
    }

    /// The domain's name.
    public var name: String { virDomainGetName(pointer).map { String(cString: $0) } ?? "" }

    /// The domain's UUID (lowercase, with dashes), or empty when libvirt cannot give it.
    public var uuid: String {
        var buffer = [CChar](repeating: 0, count: 37)  // VIR_UUID_STRING_BUFLEN
        guard virDomainGetUUIDString(pointer, &buffer) == 0 else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The domain's current state.
    public func state() throws(LQXError) -> DomainState {
        var state: Int32 = 0, reason: Int32 = 0
        guard virDomainGetState(pointer, &state, &reason, 0) == 0 else {
            throw LibvirtConnection.lastError("state of \(name)")
        }
        return DomainState(state)
    }

    /// The domain's XML (the live definition while it runs).
    public func xml(inactive: Bool = false) throws(LQXError) -> String {
        guard let text = virDomainGetXMLDesc(pointer, inactive ? UInt32(VIR_DOMAIN_XML_INACTIVE.rawValue) : 0) else {
            throw LibvirtConnection.lastError("XML of \(name)")
        }
        defer { free(text) }
        return String(cString: text)
    }

    private func check(_ rc: Int32, _ what: String) throws(LQXError) {
        if rc != 0 { throw LibvirtConnection.lastError("\(what) \(name)", notFound: .notFound) }
    }

    /// Starts (boots) the defined domain.
    public func start() throws(LQXError) { try check(virDomainCreate(pointer), "starting") }
    /// Asks the guest to power off (ACPI power button).
    public func shutdown() throws(LQXError) {
        try check(virDomainShutdownFlags(pointer, UInt32(VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN.rawValue)), "shutting down")
    }
    /// Stops the QEMU process at once.
    public func destroy() throws(LQXError) { try check(virDomainDestroy(pointer), "stopping") }
    /// Asks the guest to reboot (ACPI power button).
    public func reboot() throws(LQXError) {
        try check(virDomainReboot(pointer, UInt32(VIR_DOMAIN_REBOOT_ACPI_POWER_BTN.rawValue)), "rebooting")
    }
    /// Pauses the domain's vCPUs.
    public func suspend() throws(LQXError) { try check(virDomainSuspend(pointer), "pausing") }
    /// Resumes a paused domain.
    public func resume() throws(LQXError) { try check(virDomainResume(pointer), "resuming") }
    /// Removes the definition (and its NVRAM file and snapshot metadata).
    public func undefine() throws(LQXError) {
        let flags =
            UInt32(VIR_DOMAIN_UNDEFINE_NVRAM.rawValue) | UInt32(VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA.rawValue)
            | UInt32(VIR_DOMAIN_UNDEFINE_MANAGED_SAVE.rawValue)
        try check(virDomainUndefineFlags(pointer, flags), "deleting")
    }
}
