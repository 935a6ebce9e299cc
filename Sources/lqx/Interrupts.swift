import ArgumentParser
import Dispatch
import Foundation
import Synchronization

/// SIGINT, SIGTERM and SIGHUP end any lqx command promptly, cleaning up, with exit status 128+N
/// (130, 143, 129).
///
/// The command runs in a task; a signal cancels it, so transfers remove their temporary files
/// and open streams are reset (the agent kills what it was running for them). lqx exits once the
/// command has unwound, and at most `unwindLimit` after the signal whatever the agent does; a
/// second signal exits at once. `exec` without a terminal forwards the first signal to the remote
/// process instead (`forwarder`), and ends itself if that process has not exited
/// `forwardGrace` later.
final class Interrupts: Sendable {
    static let shared = Interrupts()
    static let unwindLimit: DispatchTimeInterval = .seconds(2)
    static let forwardGrace: DispatchTimeInterval = .seconds(3)

    private struct State {
        var task: Task<Void, any Error>?
        var forwarder: (@Sendable (Int32) -> Void)?
        /// The signal that ends the command, once one did.
        var ending: Int32?
        var forwarded: Int32?
    }

    private let state = Mutex(State())

    /// The signal that is ending the command, if any.
    var signal: Int32? { state.withLock { $0.ending } }

    /// Runs `command` with the signals handled; returns its exit status by throwing as
    /// ArgumentParser expects.
    func run(_ command: @escaping @Sendable () async throws -> Void) async throws {
        let task = Task { try await command() }
        install(task)
        do {
            try await task.value
        } catch {
            if let signal { throw ExitCode(128 + signal) }
            throw error
        }
        if let signal { throw ExitCode(128 + signal) }
    }

    /// While set, the first signal is handed to `forwarder` instead of ending lqx.
    func setForwarder(_ forwarder: (@Sendable (Int32) -> Void)?) {
        state.withLock { $0.forwarder = forwarder }
    }

    private func install(_ task: Task<Void, any Error>) {
        var sources: [any DispatchSourceSignal] = []
        for number in [SIGINT, SIGTERM, SIGHUP] {
            Glibc.signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [self] in received(number) }
            source.resume()
            sources.append(source)
        }
        state.withLock { $0.task = task }
        retainedSignalSources = sources
    }

    private func received(_ number: Int32) {
        enum Action {
            case forward(@Sendable (Int32) -> Void)
            case end(Task<Void, any Error>?)
            case exitNow
        }
        let action: Action = state.withLock { state in
            if state.ending != nil { return .exitNow }
            if let forwarder = state.forwarder, state.forwarded == nil {
                state.forwarded = number
                return .forward(forwarder)
            }
            state.ending = number
            return .end(state.task)
        }
        switch action {
        case .forward(let forwarder):
            forwarder(number)
            DispatchQueue.global().asyncAfter(deadline: .now() + Self.forwardGrace) { [self] in
                end(number)
            }
        case .end(let task):
            task?.cancel()
            scheduleExit(number)
        case .exitNow:
            exit(128 + number)
        }
    }

    /// Ends the command because of `number` (unless it is ending already or has finished).
    private func end(_ number: Int32) {
        let task: Task<Void, any Error>?? = state.withLock { state in
            guard state.ending == nil else { return .none }
            state.ending = number
            return .some(state.task)
        }
        guard case .some(let task) = task else { return }
        task?.cancel()
        scheduleExit(number)
    }

    private func scheduleExit(_ number: Int32) {
        DispatchQueue.global().asyncAfter(deadline: .now() + Self.unwindLimit) {
            FileHandle.standardError.write(Data("lqx: stopped by signal \(number)\n".utf8))
            exit(128 + number)
        }
    }
}

/// Keeps the signal sources alive for the life of the process. Written once, by `install`, before
/// any handler can run; never read.
nonisolated(unsafe) private var retainedSignalSources: [any DispatchSourceSignal] = []
