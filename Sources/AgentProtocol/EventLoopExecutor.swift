import NIOCore

/// A task executor that runs jobs on one NIO event loop.
///
/// A connection's tasks (frame reader, request handlers, the writer) prefer the loop that owns
/// the connection's channel, so a frame read, its handler and the reply it writes run on one
/// thread: no hand-off to Swift's global pool and back for every frame. In a VM every such
/// hand-off is a cross-vCPU wake-up, which under emulation costs more than the work itself.
///
/// Handlers must not block: blocking work goes to a thread pool, as it does anyway.
public final class EventLoopExecutor: TaskExecutor {
    /// The loop jobs run on.
    public let eventLoop: any EventLoop

    /// An executor for `eventLoop`.
    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Runs the job on the event loop.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { [self] in
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
