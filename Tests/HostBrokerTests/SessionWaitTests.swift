import AgentProtocol
import AgentTestSupport
import Foundation
import HostBroker
import LQXTestSupport
import Testing

/// `AgentClient.session(timeout:)` with no agent: every wait ends by its timeout, however short.
@Suite("broker: waiting for a session")
struct SessionWaitTests {
    @Test("a wait that times out at once returns at once, every time, and says why")
    func zeroTimeout() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let client = AgentClient(address: .unix(path: dir.file("nobody.sock")), configuration: BrokerConfiguration())
        // The timeout can win before the waiter parks; that wait once never ended (the broker's
        // cancellation handler had already run and found nothing to resume).
        let (finished, finish) = AsyncStream.makeStream(of: String?.self, bufferingPolicy: .bufferingNewest(2))
        let waits = Task {
            var last: String?
            for _ in 0..<500 {
                do {
                    _ = try await client.session(timeout: .zero)
                    last = "a session without an agent"
                } catch {
                    last = "\(error)"
                }
            }
            finish.yield(last)
        }
        let limit = Task {
            try? await Task.sleep(for: .seconds(30))
            finish.yield(nil)
        }
        var outcome = finished.makeAsyncIterator()
        let last = await outcome.next() ?? nil
        waits.cancel()
        limit.cancel()
        let message = try #require(last, "a zero-timeout session wait never returned")
        #expect(message.contains("no session with the agent at"), "\(message)")
    }
}
