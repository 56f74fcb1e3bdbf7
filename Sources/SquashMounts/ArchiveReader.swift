import CArchive
import Foundation

/// One pass over an archive's entries with libarchive: a tar in any
/// compression libarchive reads, or a zip. The loop, the data reads and
/// their error messages are the same for every user; what an entry may be
/// (the checks of untrusted paths and types) stays with each user: shards
/// (``ArchiveImporter``), programs and wheels.
public final class ArchiveReader {
    /// What the archive may be.
    public enum Formats: Sendable {
        case tarOrZip
        case zip
    }

    /// An entry's header, valid until the next ``next()``.
    public struct Entry {
        let pointer: OpaquePointer

        /// The path as the archive gives it (nil for a nameless entry).
        public var path: String? { archive_entry_pathname(pointer).map { String(cString: $0) } }
        /// The file type bits (`S_IFREG`, `S_IFDIR`, `S_IFLNK`, …).
        public var type: mode_t { archive_entry_filetype(pointer) }
        /// The permission bits.
        public var permissions: mode_t { archive_entry_perm(pointer) }
        /// A symlink's target.
        public var symlinkTarget: String? { archive_entry_symlink(pointer).map { String(cString: $0) } }
        /// A hard link's target path, when the entry is one.
        public var hardlinkTarget: String? { archive_entry_hardlink(pointer).map { String(cString: $0) } }
    }

    /// The archive's file.
    public let path: String
    private let archive: OpaquePointer
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
    private var count = 0
    private var current: String = ""

    /// Opens `path`; `hint` ends the error of an archive that cannot be opened (what to give instead).
    public init(_ path: String, formats: Formats, hint: String) throws(ShardError) {
        guard let archive = archive_read_new() else {
            buffer.deallocate()
            throw ShardError(.io, "out of memory")
        }
        self.path = path
        self.archive = archive
        if formats == .tarOrZip {
            archive_read_support_filter_all(archive)
            archive_read_support_format_tar(archive)
        }
        archive_read_support_format_zip(archive)
        guard archive_read_open_filename(archive, path, 1 << 16) == ARCHIVE_OK else {
            throw ShardError(.badArchive, "\(path): \(message); \(hint)")
        }
    }

    deinit {
        archive_read_free(archive)
        buffer.deallocate()
    }

    /// What libarchive said last.
    public var message: String { archive_error_string(archive).map { String(cString: $0) } ?? "unreadable archive" }

    /// The next entry's header, or nil at the end of the archive.
    public func next() throws(ShardError) -> Entry? {
        var entry: OpaquePointer?
        let rc = archive_read_next_header(archive, &entry)
        if rc == ARCHIVE_EOF { return nil }
        guard rc == ARCHIVE_OK || rc == ARCHIVE_WARN, let entry else {
            throw ShardError(.badArchive, "\(path): entry \(count + 1): \(message)")
        }
        count += 1
        current = archive_entry_pathname(entry).map { String(cString: $0) } ?? "entry \(count)"
        return Entry(pointer: entry)
    }

    /// Entries read so far.
    public var entries: Int { count }

    /// Hands the current entry's data to `sink`, a chunk (at most 1 MiB) at a time.
    public func readData(_ sink: (UnsafeRawBufferPointer) throws(ShardError) -> Void) throws(ShardError) {
        while true {
            let n = archive_read_data(archive, buffer.baseAddress, buffer.count)
            if n == 0 { return }
            guard n > 0 else { throw ShardError(.badArchive, "\(path): \(current): \(message)") }
            try sink(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }
}
