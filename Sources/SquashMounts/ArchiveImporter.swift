import CArchive
import Foundation

/// Streams the entries of a tar (any compression libarchive reads) or zip
/// archive into a `SquashfsImageWriter`, never unpacking to disk.
///
/// An archive from a USB stick is untrusted input: an entry whose path is
/// absolute or climbs out with `..`, a symlink whose target is absolute or
/// climbs out of the shard, a hard link to outside, or a device node is
/// refused with an error naming the entry, and no shard is written.
struct ArchiveImporter {
    let path: String

    func importEntries(into writer: SquashfsImageWriter) throws(ShardError) {
        guard let archive = archive_read_new() else { throw ShardError(.io, "out of memory") }
        defer { archive_read_free(archive) }
        archive_read_support_filter_all(archive)
        archive_read_support_format_tar(archive)
        archive_read_support_format_zip(archive)
        guard archive_read_open_filename(archive, path, 1 << 16) == ARCHIVE_OK else {
            throw ShardError(.badArchive, "\(path): \(Self.message(archive)); give a tar, tar.gz, tar.xz or zip file")
        }
        var entry: OpaquePointer?
        var count = 0
        while true {
            let rc = archive_read_next_header(archive, &entry)
            if rc == ARCHIVE_EOF { break }
            guard rc == ARCHIVE_OK || rc == ARCHIVE_WARN, let entry else {
                throw ShardError(.badArchive, "\(path): entry \(count + 1): \(Self.message(archive))")
            }
            count += 1
            try add(entry, from: archive, into: writer)
        }
        guard count > 0 else { throw ShardError(.badArchive, "\(path): the archive holds no entries") }
    }

    private static func message(_ archive: OpaquePointer) -> String {
        archive_error_string(archive).map { String(cString: $0) } ?? "unreadable archive"
    }

    /// The entry's path as components; throws for paths that leave the root.
    static func components(of raw: String, entry: String) throws(ShardError) -> [[UInt8]] {
        if raw.hasPrefix("/") {
            throw ShardError(.pathTraversal, "archive entry '\(entry)' has an absolute path; shards take relative paths only")
        }
        var parts: [[UInt8]] = []
        for part in raw.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." {
                throw ShardError(.pathTraversal, "archive entry '\(entry)' climbs out of the shard with '..'")
            }
            parts.append(Array(part.utf8))
        }
        return parts
    }

    /// Refuses a symlink target that is absolute or resolves, from the link's directory, outside the root.
    static func checkLinkTarget(_ target: String, linkAt components: [[UInt8]], entry: String) throws(ShardError) {
        if target.hasPrefix("/") {
            throw ShardError(
                .pathTraversal,
                "archive entry '\(entry)' is a symlink to the absolute path '\(target)', which points out of the shard")
        }
        var depth = components.count - 1
        for part in target.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            depth += part == ".." ? -1 : 1
            if depth < 0 {
                throw ShardError(
                    .pathTraversal, "archive entry '\(entry)' is a symlink to '\(target)', which points out of the shard")
            }
        }
    }

    private func add(_ entry: OpaquePointer, from archive: OpaquePointer, into writer: SquashfsImageWriter) throws(ShardError) {
        guard let rawPath = archive_entry_pathname(entry).map({ String(cString: $0) }) else {
            throw ShardError(.badArchive, "\(path): an entry without a name")
        }
        let parts = try Self.components(of: rawPath, entry: rawPath)
        var meta = EntryMetadata(
            permissions: UInt16(archive_entry_perm(entry) & 0o7777),
            uid: UInt32(clamping: archive_entry_uid(entry)),
            gid: UInt32(clamping: archive_entry_gid(entry)),
            mtime: UInt32(clamping: archive_entry_mtime(entry)))
        meta.xattrs = Self.xattrs(entry)
        let display = "\(path):\(rawPath)"

        if let hardlink = archive_entry_hardlink(entry).map({ String(cString: $0) }) {
            let target = try Self.components(of: hardlink, entry: rawPath)
            guard !parts.isEmpty else { throw ShardError(.badArchive, "\(display): a hard link cannot be the root") }
            try writer.addHardLink(parts, path: display, target: target, targetPath: hardlink)
            return
        }
        let type = archive_entry_filetype(entry)
        switch Int32(type) {
        case S_IFDIR:
            try writer.addDirectory(parts, path: display, meta: meta)
        case S_IFREG:
            guard !parts.isEmpty else { throw ShardError(.badArchive, "\(display): a file cannot be the root") }
            _ = try writer.addFile(parts, path: display, meta: meta) { sink throws(ShardError) in
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
                defer { buffer.deallocate() }
                while true {
                    let n = archive_read_data(archive, buffer.baseAddress, buffer.count)
                    if n == 0 { return }
                    guard n > 0 else { throw ShardError(.badArchive, "\(display): \(Self.message(archive))") }
                    try sink(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                }
            }
        case S_IFLNK:
            guard let target = archive_entry_symlink(entry).map({ String(cString: $0) }), !parts.isEmpty else {
                throw ShardError(.badArchive, "\(display): a symlink without a target")
            }
            try Self.checkLinkTarget(target, linkAt: parts, entry: rawPath)
            try writer.addSymlink(parts, path: display, target: Array(target.utf8), meta: meta)
        case S_IFIFO:
            try writer.addSpecial(parts, path: display, mode: UInt16(Glibc.S_IFIFO), rdev: 0, meta: meta)
        default:
            throw ShardError(
                .unsupportedEntry,
                "archive entry '\(rawPath)' is a device node or socket; shards from archives carry files, directories and links only"
            )
        }
    }

    private static func xattrs(_ entry: OpaquePointer) -> [(name: String, value: [UInt8])] {
        var result: [(name: String, value: [UInt8])] = []
        guard archive_entry_xattr_reset(entry) > 0 else { return result }
        var name: UnsafePointer<CChar>?
        var value: UnsafeRawPointer?
        var size = 0
        while archive_entry_xattr_next(entry, &name, &value, &size) == ARCHIVE_OK, let name {
            let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
            result.append((String(cString: name), bytes))
        }
        return result
    }
}

/// The archive path checks, for other importers of untrusted archives (wheels).
public enum ArchiveImporterPaths {
    /// The entry's path as components; throws `pathTraversal` for one that is absolute or climbs out with `..`.
    @discardableResult
    public static func components(of raw: String, entry: String) throws(ShardError) -> [[UInt8]] {
        try ArchiveImporter.components(of: raw, entry: entry)
    }

    /// Refuses a symlink target that is absolute or resolves outside the root.
    public static func checkLinkTarget(_ target: String, linkAt components: [[UInt8]], entry: String) throws(ShardError) {
        try ArchiveImporter.checkLinkTarget(target, linkAt: components, entry: entry)
    }
}
