import LQXModel
import Testing

@Suite("OneShot")
struct OneShotTests {
    @Test("waiters before and after the value get it; the first set wins")
    func delivers() async throws {
        let shot = OneShot<Int>()
        async let early = shot.wait()
        try await Task.sleep(for: .milliseconds(20))
        shot.set(.success(1))
        shot.set(.success(2))
        #expect(try await early == 1)
        #expect(try await shot.wait() == 1)
    }

    @Test("a failure reaches every waiter")
    func fails() async {
        let shot = OneShot<Int>()
        shot.set(.failure(LQXError(.unavailable, "down")))
        await #expect(throws: LQXError.self) { try await shot.wait() }
    }

    @Test("a cancelled waiter stops waiting with cancelled and the value still reaches the others")
    func cancellation() async throws {
        let shot = OneShot<Int>()
        let cancelled = Task { try await shot.wait() }
        let patient = Task { try await shot.wait() }
        try await Task.sleep(for: .milliseconds(20))
        cancelled.cancel()
        do {
            _ = try await cancelled.value
            Issue.record("a cancelled wait returned")
        } catch let error as LQXError {
            #expect(error.code == .cancelled)
        }
        shot.set(.success(7))
        #expect(try await patient.value == 7)
    }
}
