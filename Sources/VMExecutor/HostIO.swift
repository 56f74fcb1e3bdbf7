import Foundation

/// Reads and writes of host file descriptors. The async forms block a
/// Dispatch thread, never one of Swift's few cooperative-pool threads.
public enum HostIO {
    /// Up to `n` bytes; empty at end of file.
    public static func read(_ fd: Int32, upTo n: Int = 65536) async throws -> [UInt8] {
        try await withCheckedThrowingContinuation { c in
            DispatchQueue.global().async {
                var buf = [UInt8](repeating: 0, count: n)
                var got: Int
                repeat { got = Foundation.read(fd, &buf, n) } while got < 0 && errno == EINTR
                if got < 0 {
                    c.resume(throwing: VMExecError(.invalidRequest, "read failed: \(String(cString: strerror(errno)))"))
                } else {
                    c.resume(returning: Array(buf.prefix(got)))
                }
            }
        }
    }

    /// All of `bytes`; `path` names the file in the error.
    public static func write(_ fd: Int32, _ bytes: [UInt8], path: String) async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            DispatchQueue.global().async { c.resume(with: Result { try writeAll(fd, bytes, path: path) }) }
        }
    }

    /// All of `bytes`, blocking the calling thread.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw VMExecError(.invalidRequest, "cannot write \(path): \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }
}
