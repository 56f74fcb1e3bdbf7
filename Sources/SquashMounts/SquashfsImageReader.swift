import CSquashfs
import Crypto
import Foundation

/// Facts from a squashfs superblock.
public struct SquashfsFacts: Codable, Sendable, Equatable {
    public var compressor: String
    public var blockSize: UInt32
    public var inodeCount: UInt32
    public var bytesUsed: UInt64
    public var fragmentCount: UInt32
    public var idCount: UInt16
    public var modificationTime: UInt32
    public var hasXattrs: Bool
}

/// One entry of a shard's file tree, as `inspect` lists it.
public struct ShardEntry: Codable, Sendable, Equatable {
    public enum EntryType: String, Codable, Sendable {
        case directory, file, symlink, blockDevice, charDevice, fifo, socket
    }
    /// Absolute path inside the shard (`/` for its root).
    public var path: String
    public var type: EntryType
    /// Permission bits (07777).
    public var mode: UInt16
    public var uid: UInt32
    public var gid: UInt32
    public var mtime: UInt32
    /// Bytes of a file or of a symlink's target; 0 otherwise.
    public var size: UInt64
    public var linkTarget: String?
    /// sha256 of a file's content, when asked for.
    public var sha256: String?
    /// The inode number: entries sharing one are hard links of each other.
    public var inode: UInt32
    public var links: UInt32
}

/// Reads a squashfs image through libsquashfs: superblock, tables, tree, file data.
///
/// Every table is parsed by libsquashfs, which bounds-checks what it reads;
/// a damaged image gives a `.corrupt` error, never a crash of the host.
final class SquashfsImageReader {
    let path: String
    private var file: UnsafeMutablePointer<sqfs_file_t>?
    private var compressor: UnsafeMutablePointer<sqfs_compressor_t>?
    private var ids: OpaquePointer?
    private var dirReader: OpaquePointer?
    private var dataReader: OpaquePointer?
    private(set) var superblock = sqfs_super_t()

    /// Opens the image and reads its superblock, compressor options, id and fragment tables.
    /// `imageBytes` bounds where the image may reach (the rest of a shard file is its manifest).
    init(path: String, imageBytes: UInt64) throws(ShardError) {
        self.path = path
        do {
            try open(imageBytes: imageBytes)
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    private func corrupt(_ what: String, _ rc: Int32) -> ShardError {
        ShardError(.corrupt, "\(path): \(what): \(squashfsErrorName(rc))")
    }

    private func open(imageBytes: UInt64) throws(ShardError) {
        guard let file = sqfs_open_file(path, UInt32(SQFS_FILE_OPEN_READ_ONLY.rawValue)) else {
            throw ShardError(.io, "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        self.file = file
        var rc = sqfs_super_read(&superblock, file)
        guard rc == 0 else { throw corrupt("superblock", rc) }
        let s = superblock
        let tables = [s.inode_table_start, s.directory_table_start, s.id_table_start]
        guard s.bytes_used <= imageBytes, s.inode_count > 0, tables.allSatisfy({ $0 >= 96 && $0 < s.bytes_used }),
            s.inode_table_start < s.directory_table_start
        else { throw ShardError(.corrupt, "\(path): the superblock's table offsets do not fit inside the image") }

        var config = sqfs_compressor_config_t()
        rc = sqfs_compressor_config_init(
            &config, SQFS_COMPRESSOR(UInt32(s.compression_id)), Int(s.block_size),
            UInt16(SQFS_COMP_FLAG_UNCOMPRESS.rawValue))
        var cmp: UnsafeMutablePointer<sqfs_compressor_t>?
        if rc == 0 { rc = sqfs_compressor_create(&config, &cmp) }
        guard rc == 0, let cmp else { throw corrupt("compressor \(s.compression_id)", rc) }
        compressor = cmp
        if s.flags & UInt16(SQFS_FLAG_COMPRESSOR_OPTIONS.rawValue) != 0 {
            rc = vx_sqfs_compressor_read_options(cmp, file)
            guard rc == 0 else { throw corrupt("compressor options", rc) }
        }
        guard let ids = sqfs_id_table_create(0) else { throw ShardError(.io, "out of memory") }
        self.ids = ids
        rc = sqfs_id_table_read(ids, file, &superblock, cmp)
        guard rc == 0 else { throw corrupt("id table", rc) }
        guard let dirReader = sqfs_dir_reader_create(&superblock, cmp, file, 0),
            let dataReader = sqfs_data_reader_create(file, Int(s.block_size), cmp, 0)
        else { throw ShardError(.io, "out of memory") }
        self.dirReader = dirReader
        self.dataReader = dataReader
        rc = sqfs_data_reader_load_fragment_table(dataReader, &superblock)
        guard rc == 0 else { throw corrupt("fragment table", rc) }
    }

    private func close() {
        for object in [dataReader, dirReader, ids] {
            if let object { sqfs_destroy(UnsafeMutableRawPointer(object)) }
        }
        dataReader = nil; dirReader = nil; ids = nil
        if let compressor { sqfs_destroy(UnsafeMutableRawPointer(compressor)) }
        compressor = nil
        if let file { sqfs_destroy(UnsafeMutableRawPointer(file)) }
        file = nil
    }

    var facts: SquashfsFacts {
        let s = superblock
        let name = sqfs_compressor_name_from_id(SQFS_COMPRESSOR(UInt32(s.compression_id))).map { String(cString: $0) }
        return SquashfsFacts(
            compressor: name ?? "unknown (\(s.compression_id))", blockSize: s.block_size, inodeCount: s.inode_count,
            bytesUsed: s.bytes_used, fragmentCount: s.fragment_entry_count, idCount: s.id_count,
            modificationTime: s.modification_time,
            hasXattrs: s.flags & UInt16(SQFS_FLAG_NO_XATTRS.rawValue) == 0 && s.xattr_id_table_start != UInt64.max)
    }

    /// Reads the xattr table, when the image has one.
    func checkXattrTable() throws(ShardError) {
        guard facts.hasXattrs, let file, let compressor else { return }
        guard let reader = sqfs_xattr_reader_create(0) else { throw ShardError(.io, "out of memory") }
        defer { sqfs_destroy(UnsafeMutableRawPointer(reader)) }
        let rc = sqfs_xattr_reader_load(reader, &superblock, file, compressor)
        guard rc == 0 else { throw corrupt("xattr table", rc) }
    }

    /// Walks the whole tree (every directory listing and inode), handing each node to `body` in path order.
    func walk(_ body: (_ path: String, _ node: UnsafeMutablePointer<sqfs_tree_node_t>) throws(ShardError) -> Void)
        throws(ShardError)
    {
        guard let dirReader, let ids else { throw ShardError(.io, "reader closed") }
        var tree: UnsafeMutablePointer<sqfs_tree_node_t>?
        let rc = sqfs_dir_reader_get_full_hierarchy(dirReader, ids, nil, 0, &tree)
        guard rc == 0, let tree else { throw corrupt("directory tree", rc) }
        defer { sqfs_dir_tree_destroy(tree) }
        var pending: [UnsafeMutablePointer<sqfs_tree_node_t>] = [tree]
        var entries: [(String, UnsafeMutablePointer<sqfs_tree_node_t>)] = []
        while let node = pending.popLast() {
            var raw: UnsafeMutablePointer<CChar>?
            let rc = sqfs_tree_node_get_path(node, &raw)
            guard rc == 0, let raw else { throw corrupt("a path in the tree", rc) }
            entries.append((String(cString: raw), node))
            sqfs_free(raw)
            var child = node.pointee.children
            while let c = child {
                pending.append(c)
                child = c.pointee.next
            }
        }
        for (path, node) in entries.sorted(by: { $0.0.utf8.lexicographicallyPrecedes($1.0.utf8) }) {
            try body(path, node)
        }
    }

    /// Streams a file inode's content to `sink` in pieces of at most 1 MiB.
    func read(
        _ inode: UnsafePointer<sqfs_inode_generic_t>, path: String,
        into sink: (UnsafeRawBufferPointer) throws(ShardError) -> Void
    ) throws(ShardError) {
        guard let dataReader else { throw ShardError(.io, "reader closed") }
        var size: UInt64 = 0
        sqfs_inode_get_file_size(inode, &size)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while offset < size {
            let want = UInt32(min(UInt64(buffer.count), size - offset))
            let n = sqfs_data_reader_read(dataReader, inode, offset, buffer.baseAddress, want)
            guard n > 0 else { throw corrupt("data of \(path)", n < 0 ? n : Int32(SQFS_ERROR_CORRUPTED.rawValue)) }
            try sink(UnsafeRawBufferPointer(rebasing: buffer[0..<Int(n)]))
            offset += UInt64(n)
        }
    }

    /// Describes one tree node; with `hash`, reads a file's content to hash it.
    func entry(_ path: String, _ node: UnsafeMutablePointer<sqfs_tree_node_t>, hash: Bool) throws(ShardError) -> ShardEntry {
        let inode = node.pointee.inode!
        let base = inode.pointee.base
        let type: ShardEntry.EntryType
        var size: UInt64 = 0
        var target: String?
        var links: UInt32 = 1
        switch SQFS_INODE_TYPE(UInt32(base.type)) {
        case SQFS_INODE_DIR: type = .directory; links = inode.pointee.data.dir.nlink
        case SQFS_INODE_EXT_DIR: type = .directory; links = inode.pointee.data.dir_ext.nlink
        case SQFS_INODE_FILE: type = .file
        case SQFS_INODE_EXT_FILE: type = .file; links = inode.pointee.data.file_ext.nlink
        case SQFS_INODE_SLINK, SQFS_INODE_EXT_SLINK:
            type = .symlink
            links = inode.pointee.data.slink.nlink
            let length = Int(inode.pointee.data.slink.target_size)
            let bytes = UnsafeRawBufferPointer(start: vx_sqfs_symlink_target(inode), count: length)
            target = String(decoding: bytes, as: UTF8.self)
            size = UInt64(length)
        case SQFS_INODE_BDEV, SQFS_INODE_EXT_BDEV: type = .blockDevice; links = inode.pointee.data.dev.nlink
        case SQFS_INODE_CDEV, SQFS_INODE_EXT_CDEV: type = .charDevice; links = inode.pointee.data.dev.nlink
        case SQFS_INODE_FIFO, SQFS_INODE_EXT_FIFO: type = .fifo; links = inode.pointee.data.ipc.nlink
        default: type = .socket; links = inode.pointee.data.ipc.nlink
        }
        var digest: String?
        if type == .file {
            sqfs_inode_get_file_size(inode, &size)
            if hash {
                var hasher = SHA256()
                try read(inode, path: path) { hasher.update(bufferPointer: $0) }
                digest = hasher.finalize().hex
            }
        }
        return ShardEntry(
            path: path, type: type, mode: base.mode & 0o7777, uid: node.pointee.uid, gid: node.pointee.gid,
            mtime: base.mod_time, size: size, linkTarget: target, sha256: digest,
            inode: base.inode_number, links: links)
    }
}

extension Sequence where Element == UInt8 {
    /// Lower-case hexadecimal.
    var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xf)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
