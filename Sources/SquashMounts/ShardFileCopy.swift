import Foundation

/// Copies files the way shards need: into a new file (never over one), synced before it is used.
public enum ShardFileCopy {
    /// Copies all of `source` to the new file `destination` (same mode), synced.
    public static func copy(_ source: String, to destination: String) throws(ShardError) {
        var st = stat()
        guard stat(source, &st) == 0 else { throw ShardError(.io, "\(source): \(String(cString: strerror(errno)))") }
        try copyPrefix(of: source, bytes: UInt64(st.st_size), to: destination, then: [])
    }

    /// Writes the first `bytes` of `source`, then `tail`, to a new file `destination` (synced), with `source`'s mode.
    static func copyPrefix(of source: String, bytes: UInt64, to destination: String, then tail: [UInt8])
        throws(ShardError)
    {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw ShardError(.io, "opening \(source): \(String(cString: strerror(errno)))") }
        defer { close(input) }
        var st = stat()
        fstat(input, &st)
        let output = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 0o777)
        guard output >= 0 else { throw ShardError(.io, "creating \(destination): \(String(cString: strerror(errno)))") }
        defer { close(output) }
        /// Writes all of `bytes`; false on an error (in errno).
        func put(_ bytes: ArraySlice<UInt8>) -> Bool {
            bytes.withUnsafeBytes { chunk in
                var written = 0
                while written < chunk.count {
                    let n = write(output, chunk.baseAddress! + written, chunk.count - written)
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { return false }
                    written += n
                }
                return true
            }
        }
        var buffer = [UInt8](repeating: 0, count: 4 << 20)
        var left = Int(bytes)
        while left > 0 {
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, min(left, $0.count)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ShardError(.io, "reading \(source): \(String(cString: strerror(errno)))") }
            guard put(buffer[..<n]) else {
                throw ShardError(.io, "writing \(destination): \(String(cString: strerror(errno)))")
            }
            left -= n
        }
        guard put(tail[...]) else { throw ShardError(.io, "writing \(destination): \(String(cString: strerror(errno)))") }
        guard fsync(output) == 0 else { throw ShardError(.io, "syncing \(destination): \(String(cString: strerror(errno)))") }
    }
}
