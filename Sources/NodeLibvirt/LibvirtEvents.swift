import CLibvirt
import Foundation
import LQXModel
import NodeCore
import Synchronization

/// libvirt's default event loop on one thread for the whole process. It must be registered
/// before the first connection is opened; `LibvirtConnection` does that.
enum LibvirtEventLoop {
    private static let started: Bool = {
        guard virEventRegisterDefaultImpl() == 0 else { return false }
        let thread = Thread {
            while true {
                if virEventRunDefaultImpl() != 0 { Thread.sleep(forTimeInterval: 0.1) }
            }
        }
        thread.name = "libvirt-events"
        thread.start()
        return true
    }()

    /// Starts the loop once; false when libvirt could not register it.
    static func ensureStarted() -> Bool { started }
}

private final class EventSink: Sendable {
    let handler: @Sendable (DomainEvent) -> Void
    init(_ handler: @escaping @Sendable (DomainEvent) -> Void) { self.handler = handler }
}

private let lifecycleCallback:
    @convention(c) (virConnectPtr?, virDomainPtr?, Int32, Int32, UnsafeMutableRawPointer?) -> Int32 = {
        _, domain, event, detail, opaque in
        guard let domain, let opaque, let kind = DomainEvent.Kind(rawValue: event) else { return 0 }
        let sink = Unmanaged<EventSink>.fromOpaque(opaque).takeUnretainedValue()
        let name = virDomainGetName(domain).map { String(cString: $0) } ?? ""
        sink.handler(DomainEvent(name: name, kind: kind, detail: detail))
        return 0
    }

extension LibvirtConnection {
    /// Calls `handler` (on libvirt's event thread) for every lifecycle event of every domain, until
    /// `removeEventHandler` with the returned id.
    public func addEventHandler(_ handler: @escaping @Sendable (DomainEvent) -> Void) throws(LQXError) -> Int32 {
        let opaque = Unmanaged.passRetained(EventSink(handler)).toOpaque()
        typealias Generic = @convention(c) (virConnectPtr?, virDomainPtr?, UnsafeMutableRawPointer?) -> Void
        let id = virConnectDomainEventRegisterAny(
            pointer, nil, Int32(VIR_DOMAIN_EVENT_ID_LIFECYCLE.rawValue),
            unsafeBitCast(lifecycleCallback, to: Generic.self),
            opaque, { opaque in opaque.map { Unmanaged<EventSink>.fromOpaque($0).release() } })
        guard id >= 0 else {
            Unmanaged<EventSink>.fromOpaque(opaque).release()
            throw Self.lastError("registering for domain events", notFound: .hypervisor)
        }
        return id
    }

    /// Stops the handler that `addEventHandler` registered under `id`.
    public func removeEventHandler(_ id: Int32) {
        virConnectDomainEventDeregisterAny(pointer, id)
    }
}
