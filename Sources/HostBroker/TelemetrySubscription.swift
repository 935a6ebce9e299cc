import AgentProtocol
import Synchronization

/// In-guest telemetry samples every `interval`, read as they are consumed.
///
/// What a guest can do to the host through it is bounded whatever it sends:
/// - Samples are read from the stream only when the consumer asks for the next one, so credit goes
///   back to the agent only then. A guest that pushes samples faster than asked fills its window
///   (2 MiB) and waits; nothing else is buffered.
/// - The host reads at most two samples per interval (the next read waits until half an interval
///   after the previous sample was delivered), so a flood costs no more decoding than an agent
///   that keeps to the interval.
/// - The first sample and each later one must arrive within `operationTimeout` plus two intervals,
///   or the iteration fails with `timeout`.
///
/// The stream opens on the first `next()` and is reset when the subscription is released (the
/// consumer stops iterating, or the task is cancelled). Iterate once.
public final class TelemetrySubscription: AsyncSequence, Sendable {
    /// Each element is one sample.
    public typealias Element = TelemetrySample
    let session: AgentSession
    /// The interval asked of the agent.
    public let interval: Duration
    private let stream = Mutex<UInt32?>(nil)

    init(session: AgentSession, interval: Duration) {
        self.session = session
        self.interval = interval
    }

    deinit {
        if let stream = stream.withLock({ $0 }) {
            session.mux.reset(stream: stream, error: AgentError(.cancelled, "subscription ended"))
            session.mux.release(stream: stream)
        }
    }

    func open() throws(AgentError) -> UInt32 {
        if let id = stream.withLock({ $0 }) { return id }
        let ms = UInt32(
            clamping: interval.components.seconds * 1000 + interval.components.attoseconds / 1_000_000_000_000_000)
        let id = try session.open(.with { $0.telemetry = .with { $0.intervalMs = ms } })
        stream.withLock { $0 = id }
        return id
    }

    /// Reads the subscription's samples, at most two per interval.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let subscription: TelemetrySubscription
        var lastDelivery: ContinuousClock.Instant?
        var finished = false

        /// The next sample, or nil when the agent ends the stream; throws `timeout` when none
        /// arrives in time.
        public mutating func next() async throws -> TelemetrySample? {
            guard !finished else { return nil }
            let subscription = self.subscription
            let session = subscription.session
            if let lastDelivery {
                try await Task.sleep(until: lastDelivery + subscription.interval / 2, clock: .continuous)
            }
            do throws(AgentError) {
                let stream = try subscription.open()
                let timeout = session.operationTimeout + subscription.interval * 2
                let reply = try await session.guarded(stream, "the telemetry subscription", timeout: timeout) {
                    _ throws(AgentError) in try await session.nextReply(stream)
                }
                guard let (reply, end) = reply else {
                    finished = true
                    return nil
                }
                guard case .telemetry(let sample) = reply.kind else {
                    throw session.unexpected(reply, to: "the telemetry subscription")
                }
                if end { finished = true }
                lastDelivery = .now
                return TelemetrySample(wire: sample)
            } catch {
                finished = true
                throw error
            }
        }
    }

    /// Iterate once.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(subscription: self) }
}
