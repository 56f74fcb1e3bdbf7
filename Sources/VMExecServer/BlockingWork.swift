import Foundation

/// Runs blocking work (compressing a shard, hashing, fsync) on a thread of
/// its own, so that a request handler does not hold one of the cooperative
/// pool's few threads (two on a two-core controller) for seconds.
enum BlockingWork {
    static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            Thread.detachNewThread { c.resume(with: Result { try work() }) }
        }
    }
}
