import NIOCore

/// Gathers bytes into blocks and processes each full block on the side (e.g. hash + write on a
/// thread pool) while the caller gathers the next one: at most one block in flight and one being
/// filled. Used by both ends of a file transfer so credit keeps flowing during disk I/O.
///
/// - Parameters:
///   - initial: state threaded through the blocks in order (a running hash, say).
///   - blockSize: bytes gathered before a block is handed to `process`.
///   - process: the work for one block; receives the state after the previous block.
///   - body: feeds bytes through the `append` function it is given.
/// - Returns: the state after the last block, and what `body` returned.
public func withDoubleBuffering<State: Sendable, Result: Sendable>(
    initial: State, blockSize: Int,
    process: @escaping @Sendable (ByteBuffer, State) async throws -> State,
    body: (_ append: (inout ByteBuffer) async throws -> Void) async throws -> Result
) async throws -> (State, Result) {
    try await withThrowingTaskGroup(of: State.self) { group in
        var state = initial
        var inFlight = false
        var pending = ByteBuffer()
        func flush() async throws {
            if inFlight, let done = try await group.next() { state = done }
            inFlight = false
            guard pending.readableBytes > 0 else { return }
            let block = pending
            let previous = state
            pending = ByteBuffer()
            group.addTask { try await process(block, previous) }
            inFlight = true
        }
        let result = try await body { bytes in
            pending.writeBuffer(&bytes)
            if pending.readableBytes >= blockSize { try await flush() }
        }
        try await flush()
        try await flush()
        return (state, result)
    }
}
