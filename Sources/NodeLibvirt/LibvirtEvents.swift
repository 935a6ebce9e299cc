import CLibvirt
import Foundation
import LQXModel
import NodeCore
import Synchronization

/// libvirt's default event loop, run on a thread while at least one `LibvirtConnection` is open.
///
/// libvirt's event implementation is process-wide by its API: it is registered once, before the
/// first connection, and cannot be unregistered. What this type owns is the thread that runs it:
/// the first connection starts it, and it ends when the last connection closes (a zero timeout
/// wakes the loop so it sees that nobody needs it), so a process that closed every connection
/// keeps no libvirt thread.
enum LibvirtEventLoop {
    private struct State {
        var users = 0
        var running = false
    }

    private static let state = Mutex(State())

    private static let registered: Bool = virEventRegisterDefaultImpl() == 0

    /// Counts a connection as a user, starting the thread if none runs; false when libvirt
    /// could not register its event implementation (events then do not work).
    static func retain() -> Bool {
        guard registered else { return false }
        let start = state.withLock { state -> Bool in
            state.users += 1
            guard !state.running else { return false }
            state.running = true
            return true
        }
        if start {
            let thread = Thread { run() }
            thread.name = "libvirt-events"
            thread.start()
        }
        return true
    }

    /// Ends a `retain()`; the last one lets the thread finish.
    static func release() {
        let last = state.withLock { state -> Bool in
            state.users -= 1
            return state.users == 0
        }
        guard last else { return }
        // Wakes the loop: the timer fires at once and removes itself.
        _ = virEventAddTimeout(0, { timer, _ in virEventRemoveTimeout(timer) }, nil, nil)
    }

    /// Open connections and whether the thread runs (for tests).
    static var usage: (users: Int, running: Bool) { state.withLock { ($0.users, $0.running) } }

    private static func run() {
        while true {
            let done = state.withLock { state -> Bool in
                if state.users == 0 { state.running = false }
                return !state.running
            }
            if done { return }
            if virEventRunDefaultImpl() != 0 { Thread.sleep(forTimeInterval: 0.1) }
        }
    }
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
