import CLQXSupport
import Logging
import NIOPosix
import ServiceLifecycle

/// Gives back, every `interval`, the code pages the daemon no longer runs (they stay in the page
/// cache and come back by a minor fault when used again). Ends at graceful shutdown.
struct MemoryTrimmer: Service {
    let every: Duration
    let logger: Logger

    func run() async throws {
        for await _ in AsyncTimerSequence(interval: every).cancelOnGracefulShutdown() {
            let released = try await NIOThreadPool.singleton.runIfActive { lqx_release_clean_mappings() }
            logger.trace("released idle memory", metadata: ["kilobytes": "\(released)"])
        }
    }
}

/// Ticks every `interval` until cancelled.
struct AsyncTimerSequence: AsyncSequence, Sendable {
    let interval: Duration

    struct AsyncIterator: AsyncIteratorProtocol {
        let interval: Duration
        mutating func next() async -> Void? {
            guard (try? await Task.sleep(for: interval)) != nil else { return nil }
            return ()
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(interval: interval) }
}
