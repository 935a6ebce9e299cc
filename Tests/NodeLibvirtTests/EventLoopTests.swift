import Foundation
import LQXModel
import NodeCore
import Synchronization
import Testing

@testable import NodeLibvirt

/// libvirt's in-process test driver (`test:///default`) needs no libvirtd, so these run everywhere.
@Suite("libvirt event loop")
struct EventLoopTests {
    @Test("the event thread runs while a connection is open, delivers its events, and ends after the last closes")
    func threadFollowsConnections() async throws {
        let events = Mutex<[DomainEvent]>([])
        do {
            let connection = try LibvirtConnection(uri: "test:///default")
            #expect(LibvirtEventLoop.usage.running)
            let id = try connection.addEventHandler { event in events.withLock { $0.append(event) } }
            let domain = try connection.define(
                xml: "<domain type='test'><name>lqx-event-loop</name><memory>65536</memory>"
                    + "<os><type>hvm</type></os></domain>")
            try domain.start()
            #expect(try await eventually { events.withLock { $0.map(\.name) }.contains("lqx-event-loop") })
            connection.removeEventHandler(id)
        }
        // Another suite may hold a connection at this moment; then the thread must keep running.
        #expect(
            try await eventually {
                let usage = LibvirtEventLoop.usage
                return usage.users > 0 ? usage.running : !usage.running
            })
    }

    private func eventually(_ condition: () -> Bool) async throws -> Bool {
        for _ in 0..<100 {
            if condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return condition()
    }
}
