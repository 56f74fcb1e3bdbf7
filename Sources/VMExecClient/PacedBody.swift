import NIOCore
import OpenAPIRuntime

/// A request body handed to the HTTP client one chunk at a time: the next chunk
/// is pulled only after the client's event loop has taken the last one.
///
/// AsyncHTTPClient writes a streamed body without waiting for each write; it
/// stops pulling when the channel says it is full, and that word comes from the
/// event loop. On a busy machine the loop runs late, a fast source (a file) runs
/// ahead, and the process holds the difference: a 1 GiB `vmexec cp` peaked at
/// 343 MiB with four busy loops on two cores. A round trip through the same
/// loop after each chunk lets the channel's word arrive in time, so what waits
/// in memory stays near the channel's high-water mark plus one chunk.
struct PacedBody: AsyncSequence, Sendable {
    typealias Element = HTTPBody.ByteChunk

    let base: HTTPBody
    /// The loop every connection of the client runs on.
    let loop: any EventLoop

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: HTTPBody.AsyncIterator
        let loop: any EventLoop
        var handedOne = false

        mutating func next() async throws -> Element? {
            // The loop runs its tasks in order: once this one has run, the last
            // chunk's write has run too, and a full channel has paused the body.
            if handedOne { try await loop.submit {}.get() }
            handedOne = true
            return try await base.next()
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator(), loop: loop) }
}

extension HTTPBody {
    /// This body, paced by `loop` (see ``PacedBody``), with the same length and iteration behaviour.
    func paced(by loop: any EventLoop) -> HTTPBody {
        HTTPBody(PacedBody(base: self, loop: loop), length: length, iterationBehavior: iterationBehavior)
    }
}
