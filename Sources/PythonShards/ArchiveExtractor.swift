import CArchive
import Foundation
import SquashMounts

/// Unpacks an untrusted zip or tar (any compression) into a new folder: directories,
/// regular files and symlinks that stay inside; an entry that would land outside, a link
/// out, a hard link, a device or a socket is refused naming it.
enum ArchiveExtractor {
    static func extract(_ path: String, into root: URL, budget: UnpackBudget) throws(ShardError) {
        guard let archive = archive_read_new() else { throw ShardError(.io, "out of memory") }
        defer { archive_read_free(archive) }
        archive_read_support_filter_all(archive)
        archive_read_support_format_tar(archive)
        archive_read_support_format_zip(archive)
        func message() -> String { archive_error_string(archive).map { String(cString: $0) } ?? "unreadable archive" }
        guard archive_read_open_filename(archive, path, 1 << 16) == ARCHIVE_OK else {
            throw ShardError(.badArchive, "\(path): \(message()); give a folder, a zip, a tar(.gz/.xz) or a wheel")
        }
        var entry: OpaquePointer?
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let rc = archive_read_next_header(archive, &entry)
            if rc == ARCHIVE_EOF { break }
            guard rc == ARCHIVE_OK || rc == ARCHIVE_WARN, let entry else {
                throw ShardError(.badArchive, "\(path): \(message())")
            }
            guard let raw = archive_entry_pathname(entry).map({ String(cString: $0) }) else { continue }
            let parts = try ArchiveImporterPaths.components(of: raw, entry: raw)
            guard !parts.isEmpty else { continue }
            let url = root.appendingPathComponent(raw)
            let type = Int32(archive_entry_filetype(entry))
            if archive_entry_hardlink(entry) != nil {
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
                let mode: mode_t = archive_entry_perm(entry) & 0o111 != 0 ? 0o755 : 0o644
                let fd = open(url.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
                guard fd >= 0 else {
                    throw ShardError(
                        .badArchive, "archive entry '\(raw)': \(String(cString: strerror(errno))) (twice in the archive?)")
                }
                defer { close(fd) }
                while true {
                    let n = archive_read_data(archive, buffer.baseAddress, buffer.count)
                    if n == 0 { break }
                    guard n > 0 else { throw ShardError(.badArchive, "\(path): \(raw): \(message())") }
                    try budget.take(n, entry: raw)
                    guard write(fd, buffer.baseAddress, n) == n else {
                        throw ShardError(.io, "writing \(url.path): \(String(cString: strerror(errno)))")
                    }
                }
            case S_IFLNK:
                guard let target = archive_entry_symlink(entry).map({ String(cString: $0) }) else { continue }
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
