import Foundation
import SquashMounts

/// A hold on library files while a sandbox uses them: a shared `flock` on each,
/// released when the lease is dropped or its process ends (the kernel drops the
/// locks of a killed process, so a crash never pins a version for good).
/// `remove` and `gc` take the exclusive lock, which fails while any lease holds one.
public final class ShardLease: Sendable {
    private let descriptors: [Int32]

    private init(descriptors: [Int32]) { self.descriptors = descriptors }

    deinit { for fd in descriptors { close(fd) } }

    /// Holds every file in `paths`; fails naming a file that is gone (removed meanwhile).
    public static func shared(_ paths: [String]) throws(ShardError) -> ShardLease {
        var fds: [Int32] = []
        for path in paths {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0, flock(fd, LOCK_SH) == 0 else {
                let why = String(cString: strerror(errno))
                if fd >= 0 { close(fd) }
                for held in fds { close(held) }
                throw ShardError(.io, "cannot hold \(path) for the sandbox: \(why) (was it removed from the library meanwhile?)")
            }
            fds.append(fd)
        }
        return ShardLease(descriptors: fds)
    }

    /// The exclusive hold `remove` takes, or nil while a sandbox holds the file.
    static func exclusive(_ path: String) throws(ShardError) -> ShardLease? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return ShardLease(descriptors: []) }
            throw ShardError(.io, "\(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            return nil
        }
        return ShardLease(descriptors: [fd])
    }

    /// Does a sandbox hold `path` now?
    static func isHeld(_ path: String) -> Bool {
        do {
            return try exclusive(path) == nil
        } catch {
            return false
        }
    }
}
