import CStoreImage
import Crypto
import Foundation

/// One entry of a store's upper layer, as overlayfs left it.
public struct UpperEntry: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case file, directory, symlink, other
        /// An overlay whiteout (a 0/0 character device): the path is deleted.
        case whiteout
    }
    /// The path in the guest's root.
    public var path: String
    public var kind: Kind
    public var mode: UInt16
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    public var mtime: Int64
    public var linkTarget: String?
    public var sha256: String?
    /// A directory that hides everything below it in the lower layers.
    public var opaque: Bool

    /// Same content and metadata (the time stamp aside: a copy-up touches it).
    func sameContent(as other: UpperEntry) -> Bool {
        kind == other.kind && mode == other.mode && uid == other.uid && gid == other.gid && size == other.size
            && linkTarget == other.linkTarget && sha256 == other.sha256 && opaque == other.opaque
    }
}

/// A store image opened read-only through libext2fs (no mount, no guest).
final class StoreImage {
    private var handle: OpaquePointer?
    let path: String

    /// Opens `path`; a journal with unapplied changes (a crash, or a copy of a
    /// mounted store) is replayed first, as the next mount would, with e2fsck.
    init(path: String) throws(StoreError) {
        self.path = path
        try open()
        if vx_ext2_needs_recovery(handle) != 0 {
            vx_ext2_close(handle)
            handle = nil
            try Store.tool(
                ["e2fsck", "-p", "-E", "journal_only", path], what: "replaying the journal of \(path)",
                okStatuses: [0, 1])
            try open()
        }
    }

    private func open() throws(StoreError) {
        var err = [CChar](repeating: 0, count: 256)
        var h: OpaquePointer?
        guard vx_ext2_open(path, &h, &err, err.count) == 0 else {
            throw StoreError(.notAStore, String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        handle = h
    }

    deinit { vx_ext2_close(handle) }

    func lookup(_ path: String) -> UInt32? {
        var ino: UInt32 = 0
        return vx_ext2_lookup(handle, path, &ino) == 0 ? ino : nil
    }

    func list(_ dir: UInt32) throws(StoreError) -> [(name: String, ino: UInt32)] {
        var entries: UnsafeMutablePointer<vx_ext2_entry>?
        var count = 0
        guard vx_ext2_list(handle, dir, &entries, &count) == 0 else {
            throw StoreError(.notAStore, "\(path): a directory (inode \(dir)) is unreadable; the store is damaged")
        }
        defer { free(entries) }
        return (0..<count).map { i in
            let e = entries![i]
            let name = withUnsafeBytes(of: e.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            return (name, e.ino)
        }
    }

    func stat(_ ino: UInt32) throws(StoreError) -> vx_ext2_stat {
        var st = vx_ext2_stat()
        guard vx_ext2_stat(handle, ino, &st) == 0 else { throw StoreError(.notAStore, "\(path): inode \(ino) is unreadable") }
        return st
    }

    func readlink(_ ino: UInt32) -> String? {
        var buffer = [CChar](repeating: 0, count: 4097)
        let n = vx_ext2_readlink(handle, ino, &buffer, buffer.count)
        return n < 0 ? nil : String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Streams a regular file's content in 1 MiB pieces.
    func read(_ ino: UInt32, size: UInt64, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while offset < size {
            let n = vx_ext2_read(handle, ino, offset, buffer.baseAddress, buffer.count)
            guard n > 0 else { throw StoreError(.notAStore, "\(path): a file (inode \(ino)) is unreadable") }
            try sink(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            offset += UInt64(n)
        }
    }

    /// Every entry of the upper layer (the image's `/upper`), by guest path; with content hashes.
    func upperEntries() throws -> [String: UpperEntry] {
        guard let upper = lookup("/upper") else { return [:] }  // a store no guest has used yet
        var result: [String: UpperEntry] = [:]
        // The image was written by the guest, which may be hostile: a directory
        // reached twice (a hard-linked directory) or a path past PATH_MAX is
        // refused, never followed around a loop.
        var seen: Set<UInt32> = [upper]
        func walk(_ dir: UInt32, _ prefix: String) throws {
            for (name, ino) in try list(dir) {
                let path = prefix + "/" + name
                guard path.utf8.count <= 4096 else {
                    throw StoreError(
                        .notAStore, "\(self.path): a path in the upper layer is longer than 4096 bytes; the store is damaged")
                }
                let st = try stat(ino)
                let type = mode_t(st.mode) & S_IFMT
                var entry = UpperEntry(
                    path: path, kind: .other, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid,
                    size: st.size, mtime: st.mtime, linkTarget: nil, sha256: nil, opaque: st.opaque != 0)
                switch type {
                case S_IFDIR:
                    entry.kind = .directory
                    entry.size = 0
                case S_IFREG:
                    entry.kind = .file
                    var hasher = SHA256()
                    try read(ino, size: st.size) { hasher.update(bufferPointer: $0) }
                    entry.sha256 = hasher.finalize().map { String(format: "%02x", $0) }.joined()
                case S_IFLNK:
                    entry.kind = .symlink
                    entry.linkTarget = readlink(ino)
                case S_IFCHR where st.rdev_major == 0 && st.rdev_minor == 0:
                    entry.kind = .whiteout
                    entry.size = 0
                default:
                    entry.kind = .other
                }
                result[path] = entry
                if type == S_IFDIR {
                    guard seen.insert(ino).inserted else {
                        throw StoreError(
                            .notAStore,
                            "\(self.path): the directory \(path) is reached twice (a directory loop); the store is damaged")
                    }
                    try walk(ino, path)
                }
            }
        }
        try walk(upper, "")
        return result
    }
}
