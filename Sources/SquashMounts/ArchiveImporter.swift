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
        let reader = try ArchiveReader(path, formats: .tarOrZip, hint: "give a tar, tar.gz, tar.xz or zip file")
        while let entry = try reader.next() { try add(entry, from: reader, into: writer) }
        guard reader.entries > 0 else { throw ShardError(.badArchive, "\(path): the archive holds no entries") }
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

    private func add(_ header: ArchiveReader.Entry, from reader: ArchiveReader, into writer: SquashfsImageWriter)
        throws(ShardError)
    {
        let entry = header.pointer
        guard let rawPath = header.path else {
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

        if let hardlink = header.hardlinkTarget {
            let target = try Self.components(of: hardlink, entry: rawPath)
            guard !parts.isEmpty else { throw ShardError(.badArchive, "\(display): a hard link cannot be the root") }
            try writer.addHardLink(parts, path: display, target: target, targetPath: hardlink)
            return
        }
        switch Int32(header.type) {
        case S_IFDIR:
            try writer.addDirectory(parts, path: display, meta: meta)
        case S_IFREG:
            guard !parts.isEmpty else { throw ShardError(.badArchive, "\(display): a file cannot be the root") }
            _ = try writer.addFile(parts, path: display, meta: meta) { sink throws(ShardError) in
                try reader.readData(sink)
            }
        case S_IFLNK:
            guard let target = header.symlinkTarget, !parts.isEmpty else {
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
