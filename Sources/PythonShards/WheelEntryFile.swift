import Crypto
import Foundation
import SquashMounts

/// One file of a wheel on its way into a site folder: written to a temporary
/// file beside its destination as it is read, then renamed into place; when
/// another wheel put a file at that path already, compared with it instead
/// (the same bytes are fine, other bytes a conflict). A file given up on
/// (an error while reading) leaves nothing behind.
final class WheelEntryFile {
    private let url: URL
    private let relative: String
    private let wheel: String
    private let temporary: String
    private var descriptor: Int32
    private var written = SHA256()

    init(site: URL, relative: String, wheel: String) throws(ShardError) {
        url = site.appendingPathComponent(relative)
        self.relative = relative
        self.wheel = wheel
        let folder = url.deletingLastPathComponent()
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        } catch {
            throw ShardError(.io, "creating \(folder.path): \(error)")
        }
        // A name no wheel chooses: O_EXCL then never meets a file of the wheel's.
        temporary = folder.appendingPathComponent(".unpacking-\(getpid())-\(UInt64.random(in: 0...UInt64.max))").path
        descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard descriptor >= 0 else { throw ShardError(.io, "writing \(temporary): \(String(cString: strerror(errno)))") }
    }

    deinit {
        if descriptor >= 0 {
            close(descriptor)
            unlink(temporary)
        }
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws(ShardError) {
        written.update(bufferPointer: bytes)
        var offset = 0
        while offset < bytes.count {
            let n = write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ShardError(.io, "writing \(url.path): \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    func append(_ bytes: [UInt8]) throws(ShardError) {
        try bytes.withUnsafeBytes { b in Result { () throws(ShardError) in try append(b) } }.get()
    }

    /// Puts the file in place with `mode`, or checks it against the one there.
    func finish(mode: mode_t) throws(ShardError) {
        close(descriptor)
        descriptor = -1
        defer { unlink(temporary) }
        if FileManager.default.fileExists(atPath: url.path) {
            guard Self.sha256(ofFile: url.path) == written.finalize() else {
                throw ShardError(.conflict, "wheel \(wheel) holds \(relative), which another wheel holds with other content")
            }
            return
        }
        guard chmod(temporary, mode) == 0, rename(temporary, url.path) == 0 else {
            throw ShardError(.io, "writing \(url.path): \(String(cString: strerror(errno)))")
        }
    }

    private static func sha256(ofFile path: String) -> SHA256.Digest? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        var hash = SHA256()
        while let chunk = try? handle.read(upToCount: 1 << 20), !chunk.isEmpty { hash.update(data: chunk) }
        return hash.finalize()
    }
}
