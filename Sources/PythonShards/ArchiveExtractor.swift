import Foundation
import SquashMounts

/// Unpacks an untrusted zip or tar (any compression) into a new folder: directories,
/// regular files and symlinks that stay inside; an entry that would land outside, a link
/// out, a hard link, a device or a socket is refused naming it.
enum ArchiveExtractor {
    static func extract(_ path: String, into root: URL, budget: UnpackBudget) throws(ShardError) {
        let reader = try ArchiveReader(
            path, formats: .tarOrZip, hint: "give a folder, a zip, a tar(.gz/.xz) or a wheel")
        while let entry = try reader.next() {
            guard let raw = entry.path else { continue }
            let parts = try ArchiveImporterPaths.components(of: raw, entry: raw)
            guard !parts.isEmpty else { continue }
            let url = root.appendingPathComponent(raw)
            let type = entry.type
            if entry.hardlinkTarget != nil {
                throw ShardError(.unsupportedEntry, "archive entry '\(raw)' is a hard link; programs carry files and folders")
            }
            do {
                try FileManager.default.createDirectory(
                    at: type == S_IFDIR ? url : url.deletingLastPathComponent(), withIntermediateDirectories: true)
            } catch {
                throw ShardError(.io, "creating \(url.path): \(error)")
            }
            switch type {
            case S_IFDIR:
                continue
            case S_IFREG:
                let mode: mode_t = entry.permissions & 0o111 != 0 ? 0o755 : 0o644
                let fd = open(url.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
                guard fd >= 0 else {
                    throw ShardError(
                        .badArchive, "archive entry '\(raw)': \(String(cString: strerror(errno))) (twice in the archive?)")
                }
                defer { close(fd) }
                try reader.readData { chunk throws(ShardError) in
                    try budget.take(chunk.count, entry: raw)
                    guard write(fd, chunk.baseAddress, chunk.count) == chunk.count else {
                        throw ShardError(.io, "writing \(url.path): \(String(cString: strerror(errno)))")
                    }
                }
            case S_IFLNK:
                guard let target = entry.symlinkTarget else { continue }
                try ArchiveImporterPaths.checkLinkTarget(target, linkAt: parts, entry: raw)
                guard symlink(target, url.path) == 0 else {
                    throw ShardError(.io, "linking \(url.path): \(String(cString: strerror(errno)))")
                }
            default:
                throw ShardError(
                    .unsupportedEntry, "archive entry '\(raw)' is a device, socket or fifo; programs carry files and folders")
            }
        }
    }
}
