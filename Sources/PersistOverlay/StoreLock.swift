import Foundation

/// The lock that gives one guest a store: `flock` on the store's `lock` file,
/// held by the host process for the guest's lifetime. The kernel drops it
/// when that process dies, however it dies (SIGKILL included), so a crash
/// never leaves a store locked. The holder writes who it is into the file,
/// so that a refused opener can name it.
final class StoreLock: @unchecked Sendable {
    // Immutable after init; released once.
    private var fd: Int32

    init(path: String, holder: String) throws(StoreError) {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StoreError(.io, "cannot open the store lock \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let held = errno == EWOULDBLOCK
            var buffer = [UInt8](repeating: 0, count: 512)
            let n = pread(fd, &buffer, buffer.count, 0)
            close(fd)
            let who =
                n > 0
                ? String(decoding: buffer.prefix(n), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                : "another process"
            throw StoreError(
                held ? .locked : .io,
                held
                    ? "the store is in use by \(who); one guest at a time (stop it, or use another store)"
                    : "cannot lock \(path): \(String(cString: strerror(errno)))")
        }
        let text = Array(holder.utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, text, text.count, 0)
    }

    /// Lets the store go (also done when the process ends).
    ///
    /// Unlocked explicitly before the close: a child another thread is
    /// spawning at this moment holds a copy of the descriptor until it
    /// executes (O_CLOEXEC closes it only then), and a lock goes with the
    /// last copy, so a close alone could leave the store locked, empty-named,
    /// for that instant.
    func release() {
        guard fd >= 0 else { return }
        _ = ftruncate(fd, 0)
        _ = flock(fd, LOCK_UN)
        close(fd)
        fd = -1
    }

    deinit { release() }
}
