import CSquashfs
import Foundation

/// The compressors a shard can use.
public enum ShardCompressor: String, Sendable, CaseIterable, Codable {
    case zstd, xz, gzip

    var id: SQFS_COMPRESSOR {
        switch self {
        case .zstd: return SQFS_COMP_ZSTD
        case .xz: return SQFS_COMP_XZ
        case .gzip: return SQFS_COMP_GZIP
        }
    }
}

/// How a squashfs image is built.
public struct SquashfsOptions: Sendable, Equatable {
    public var compressor: ShardCompressor = .zstd
    /// Data block size: a power of two from 4 KiB to 1 MiB.
    public var blockSize: Int = 128 * 1024
    /// Store every file as owned by root (uid and gid 0) instead of its owner.
    public var rootOwned: Bool = false
    /// The superblock's time stamp. Default: the newest mtime in the tree, so that the
    /// same tree always gives the same bytes.
    public var modificationTime: UInt32? = nil
    /// Compression threads; the output does not depend on it.
    public var workers: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)

    public init() {}

    func validate() throws(ShardError) {
        guard blockSize >= 4096, blockSize <= 1 << 20, blockSize & (blockSize - 1) == 0 else {
            throw ShardError(.invalidArgument, "block size \(blockSize) must be a power of two from 4096 to 1048576")
        }
    }
}

/// Owner, permissions, time and extended attributes of one entry.
struct EntryMetadata {
    /// Permission bits including setuid, setgid and sticky (07777).
    var permissions: UInt16
    var uid: UInt32
    var gid: UInt32
    var mtime: UInt32
    /// Extended attributes, `user.`, `trusted.` and `security.` only (what squashfs stores).
    var xattrs: [(name: String, value: [UInt8])] = []
}

/// Builds a squashfs image entry by entry through libsquashfs.
///
/// File data is compressed as it is added (in the order it arrives, which
/// lets an archive stream straight in); the tree, sorted, is written at
/// `finish()`. libsquashfs 1.2 has only the low-level writer parts, so the
/// tree and its serialisation (children before parents, hard links sharing
/// one inode) live here, as in squashfs-tools-ng's own gensquashfs.
/// Not thread-safe: one builder, one thread.
final class SquashfsImageWriter {
    typealias InodeSlot = UnsafeMutablePointer<UnsafeMutablePointer<sqfs_inode_generic_t>?>

    final class Node {
        enum Kind {
            case directory([[UInt8]: Node])
            case file(InodeSlot)
            case symlink([UInt8])
            case hardLink(Node)
            case special(mode: UInt16, rdev: UInt32)
        }
        let name: [UInt8]
        var kind: Kind
        var meta: EntryMetadata
        var xattrIndex: UInt32 = 0xFFFF_FFFF
        weak var parent: Node?
        var linkCount: UInt32 = 0
        var inodeNumber: UInt32 = 0
        var inodeRef: UInt64 = 0

        init(name: [UInt8], kind: Kind, meta: EntryMetadata, parent: Node?) {
            self.name = name
            self.kind = kind
            self.meta = meta
            self.parent = parent
        }

        var typeBits: UInt16 {
            switch kind {
            case .directory: return UInt16(S_IFDIR)
            case .file: return UInt16(S_IFREG)
            case .symlink: return UInt16(S_IFLNK)
            case .hardLink(let target): return target.typeBits
            case .special(let mode, _): return mode & UInt16(S_IFMT)
            }
        }

        var isDirectory: Bool { if case .directory = kind { return true } else { return false } }
    }

    /// What `finish()` wrote.
    struct Summary {
        var bytes: UInt64
        var inodes: UInt32
        var dataBytesRead: UInt64
    }

    let path: String
    let options: SquashfsOptions
    private let root: Node
    private var fileSlots: [InodeSlot] = []
    private var newestMTime: UInt32 = 0
    private var finished = false

    private var file: UnsafeMutablePointer<sqfs_file_t>?
    private var compressor: UnsafeMutablePointer<sqfs_compressor_t>?
    private var blockWriter: UnsafeMutablePointer<sqfs_block_writer_t>?
    private var fragments: OpaquePointer?
    private var processor: OpaquePointer?
    private var ids: OpaquePointer?
    private var xattrs: OpaquePointer?
    private var super_ = sqfs_super_t()

    /// Creates (or replaces) the image at `path` and writes its superblock.
    init(path: String, options: SquashfsOptions, rootMetadata: EntryMetadata) throws(ShardError) {
        try options.validate()
        self.path = path
        self.options = options
        root = Node(name: [], kind: .directory([:]), meta: rootMetadata, parent: nil)
        do {
            try open()
        } catch {
            release()
            throw error
        }
        try setXattrs(root)
    }

    deinit {
        release()
    }

    private func open() throws(ShardError) {
        guard let file = sqfs_open_file(path, UInt32(SQFS_FILE_OPEN_OVERWRITE.rawValue)) else {
            throw ShardError(.io, "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        self.file = file
        var config = sqfs_compressor_config_t()
        var rc = sqfs_compressor_config_init(&config, options.compressor.id, Int(options.blockSize), 0)
        guard rc == 0 else { throw .squashfs(rc, "configuring the \(options.compressor) compressor", code: .invalidArgument) }
        var cmp: UnsafeMutablePointer<sqfs_compressor_t>?
        rc = sqfs_compressor_create(&config, &cmp)
        guard rc == 0, let cmp else {
            throw .squashfs(
                rc, "creating the \(options.compressor) compressor (is libsquashfs built with it?)",
                code: .invalidArgument)
        }
        compressor = cmp
        rc = sqfs_super_init(&super_, Int(options.blockSize), 0, options.compressor.id)
        guard rc == 0 else { throw .squashfs(rc, "initialising the superblock", code: .invalidArgument) }
        rc = sqfs_super_write(&super_, file)
        guard rc == 0 else { throw .squashfs(rc, "writing the superblock of \(path)") }
        rc = vx_sqfs_compressor_write_options(cmp, file)
        guard rc >= 0 else { throw .squashfs(rc, "writing compressor options to \(path)") }
        if rc > 0 { super_.flags |= UInt16(SQFS_FLAG_COMPRESSOR_OPTIONS.rawValue) }

        guard let blockWriter = sqfs_block_writer_create(file, Int(SQFS_DEVBLK_SIZE), 0),
            let fragments = sqfs_frag_table_create(0),
            let ids = sqfs_id_table_create(0),
            let xattrs = sqfs_xattr_writer_create(0)
        else { throw ShardError(.io, "out of memory creating the squashfs writer") }
        self.blockWriter = blockWriter
        self.fragments = fragments
        self.ids = ids
        self.xattrs = xattrs
        guard
            let processor = sqfs_block_processor_create(
                Int(options.blockSize), cmp, UInt32(max(1, options.workers)), 16 * max(1, options.workers),
                blockWriter, fragments)
        else { throw ShardError(.io, "cannot start the squashfs block processor (out of memory or threads)") }
        self.processor = processor
    }

    private func release() {
        func destroy(_ object: OpaquePointer?) {
            if let object { sqfs_destroy(UnsafeMutableRawPointer(object)) }
        }
        destroy(processor); processor = nil
        destroy(xattrs); xattrs = nil
        destroy(ids); ids = nil
        destroy(fragments); fragments = nil
        if let blockWriter { sqfs_destroy(UnsafeMutableRawPointer(blockWriter)) }
        blockWriter = nil
        if let compressor { sqfs_destroy(UnsafeMutableRawPointer(compressor)) }
        compressor = nil
        if let file { sqfs_destroy(UnsafeMutableRawPointer(file)) }
        file = nil
        for slot in fileSlots {
            free(slot.pointee)
            slot.deallocate()
        }
        fileSlots = []
    }

    // MARK: adding entries

    /// Checks one path component as squashfs and every file system need it.
    static func checkComponent(_ name: [UInt8], in path: String) throws(ShardError) {
        guard !name.isEmpty, name != [0x2e], name != [0x2e, 0x2e], name.count <= 255,
            !name.contains(0), !name.contains(0x2f)
        else { throw ShardError(.unsupportedEntry, "\(path): a name must be 1-255 bytes, not '.' or '..', without '/' or NUL") }
    }

    /// The directory that holds `components.last`, creating missing parents with `implicit` metadata.
    private func parentDirectory(of components: [[UInt8]], path: String, implicit: EntryMetadata) throws(ShardError) -> Node {
        var dir = root
        for name in components.dropLast() {
            try Self.checkComponent(name, in: path)
            guard case .directory(var children) = dir.kind else {
                throw ShardError(.unsupportedEntry, "\(path): a parent is not a directory")
            }
            if let next = children[name] {
                guard next.isDirectory else { throw ShardError(.unsupportedEntry, "\(path): a parent is not a directory") }
                dir = next
            } else {
                let next = Node(name: name, kind: .directory([:]), meta: implicit, parent: dir)
                children[name] = next
                dir.kind = .directory(children)
                dir = next
            }
        }
        return dir
    }

    private func insert(_ components: [[UInt8]], path: String, kind: Node.Kind, meta: EntryMetadata) throws(ShardError) -> Node {
        guard let name = components.last else { throw ShardError(.unsupportedEntry, "\(path): empty path") }
        try Self.checkComponent(name, in: path)
        var implicit = root.meta
        implicit.xattrs = []
        let parent = try parentDirectory(of: components, path: path, implicit: implicit)
        guard case .directory(var children) = parent.kind else {
            throw ShardError(.unsupportedEntry, "\(path): parent is not a directory")
        }
        if let existing = children[name], existing.isDirectory, case .directory = kind {
            existing.meta = meta  // a directory listed after its contents (archives do this)
            try setXattrs(existing)
            newestMTime = max(newestMTime, meta.mtime)
            return existing
        }
        let node = Node(name: name, kind: kind, meta: meta, parent: parent)
        children[name] = node  // a later archive entry replaces an earlier one, as tar does
        parent.kind = .directory(children)
        try setXattrs(node)
        newestMTime = max(newestMTime, meta.mtime)
        return node
    }

    private func setXattrs(_ node: Node) throws(ShardError) {
        let stored = node.meta.xattrs.filter { x in
            x.name.hasPrefix("user.") || x.name.hasPrefix("trusted.") || x.name.hasPrefix("security.")
        }
        guard !stored.isEmpty, let xattrs else {
            node.xattrIndex = 0xFFFF_FFFF
            return
        }
        var rc = sqfs_xattr_writer_begin(xattrs, 0)
        for x in stored where rc == 0 {
            rc = x.value.withUnsafeBytes { sqfs_xattr_writer_add(xattrs, x.name, $0.baseAddress, $0.count) }
        }
        var index: UInt32 = 0xFFFF_FFFF
        if rc == 0 { rc = sqfs_xattr_writer_end(xattrs, &index) }
        guard rc == 0 else { throw .squashfs(rc, "storing extended attributes", code: .unsupportedEntry) }
        node.xattrIndex = index
    }

    func setRootMetadata(_ meta: EntryMetadata) throws(ShardError) {
        root.meta = meta
        try setXattrs(root)
        newestMTime = max(newestMTime, meta.mtime)
    }

    func addDirectory(_ components: [[UInt8]], path: String, meta: EntryMetadata) throws(ShardError) {
        if components.isEmpty { return try setRootMetadata(meta) }
        _ = try insert(components, path: path, kind: .directory([:]), meta: meta)
    }

    /// Adds a regular file whose bytes `content` hands, in order, to the sink it is given.
    func addFile(
        _ components: [[UInt8]], path: String, meta: EntryMetadata,
        content: (_ sink: (UnsafeRawBufferPointer) throws(ShardError) -> Void) throws(ShardError) -> Void
    )
        throws(ShardError) -> Node
    {
        guard let processor else { throw ShardError(.io, "the image writer is closed") }
        let slot = InodeSlot.allocate(capacity: 1)
        slot.initialize(to: nil)
        fileSlots.append(slot)
        var rc = sqfs_block_processor_begin_file(processor, slot, nil, 0)
        guard rc == 0 else { throw .squashfs(rc, "\(path): starting file data") }
        try content { (bytes: UnsafeRawBufferPointer) throws(ShardError) in
            guard bytes.count > 0 else { return }
            let rc = sqfs_block_processor_append(processor, bytes.baseAddress, bytes.count)
            guard rc == 0 else { throw .squashfs(rc, "\(path): compressing file data") }
        }
        rc = sqfs_block_processor_end_file(processor)
        guard rc == 0 else { throw .squashfs(rc, "\(path): finishing file data") }
        return try insert(components, path: path, kind: .file(slot), meta: meta)
    }

    func addSymlink(_ components: [[UInt8]], path: String, target: [UInt8], meta: EntryMetadata) throws(ShardError) {
        guard !target.isEmpty, target.count <= 4095, !target.contains(0) else {
            throw ShardError(.unsupportedEntry, "\(path): a symlink target must be 1-4095 bytes without NUL")
        }
        _ = try insert(components, path: path, kind: .symlink(target), meta: meta)
    }

    /// Adds `components` as another name of the entry at `target` (which must not be a directory).
    func addHardLink(_ components: [[UInt8]], path: String, target: [[UInt8]], targetPath: String) throws(ShardError) {
        var node = root
        for name in target {
            guard case .directory(let children) = node.kind, let next = children[name] else {
                throw ShardError(.unsupportedEntry, "\(path): hard link to \(targetPath), which is not (yet) in the tree")
            }
            node = next
        }
        if case .hardLink(let resolved) = node.kind { node = resolved }
        guard !node.isDirectory else { throw ShardError(.unsupportedEntry, "\(path): hard link to a directory") }
        _ = try insert(components, path: path, kind: .hardLink(node), meta: node.meta)
    }

    func addSpecial(_ components: [[UInt8]], path: String, mode: UInt16, rdev: UInt32, meta: EntryMetadata) throws(ShardError) {
        _ = try insert(components, path: path, kind: .special(mode: mode, rdev: rdev), meta: meta)
    }

    /// Adds an existing node under another name (used for hard links found by inode).
    func addLink(_ components: [[UInt8]], path: String, to node: Node) throws(ShardError) {
        _ = try insert(components, path: path, kind: .hardLink(node), meta: node.meta)
    }

    // MARK: finishing

    /// Writes the tree and the tables, and the superblock last; pads to 4 KiB.
    func finish() throws(ShardError) -> Summary {
        guard !finished, let processor, let file, let compressor, let ids, let xattrs, let fragments else {
            throw ShardError(.io, "the image writer is closed")
        }
        finished = true
        var rc = sqfs_block_processor_finish(processor)
        guard rc == 0 else { throw .squashfs(rc, "writing file data to \(path)") }
        let dataBytesRead = sqfs_block_processor_get_stats(processor).pointee.input_bytes_read

        // Children before their directory, numbered in that order; a hard link's
        // inode is written where its first name is met.
        var order: [Node] = []
        func visit(_ node: Node) {
            if case .directory(let children) = node.kind {
                var subdirectories: UInt32 = 0
                for child in children.values.sorted(by: { $0.name.lexicographicallyPrecedes($1.name) }) {
                    var target = child
                    if case .hardLink(let resolved) = child.kind { target = resolved }
                    if target.isDirectory {
                        visit(target)
                        subdirectories += 1
                        continue
                    }
                    if target.inodeNumber == 0 {
                        target.inodeNumber = UInt32(order.count + 1)
                        order.append(target)
                    }
                    target.linkCount += 1
                }
                node.linkCount = 2 + subdirectories
            }
            node.inodeNumber = UInt32(order.count + 1)
            order.append(node)
        }
        visit(root)

        guard let inodeWriter = sqfs_meta_writer_create(file, compressor, 0),
            let dirMeta = sqfs_meta_writer_create(file, compressor, UInt32(SQFS_META_WRITER_KEEP_IN_MEMORY.rawValue))
        else { throw ShardError(.io, "out of memory") }
        defer {
            sqfs_destroy(UnsafeMutableRawPointer(inodeWriter))
            sqfs_destroy(UnsafeMutableRawPointer(dirMeta))
        }
        guard let dirWriter = sqfs_dir_writer_create(dirMeta, 0) else { throw ShardError(.io, "out of memory") }
        defer { sqfs_destroy(UnsafeMutableRawPointer(dirWriter)) }

        super_.inode_table_start = vx_sqfs_file_size(file)
        let rootParent = UInt32(order.count + 1)
        for node in order {
            try writeInode(node, rootParent: rootParent, inodeWriter: inodeWriter, dirWriter: dirWriter, ids: ids)
        }
        rc = sqfs_meta_writer_flush(inodeWriter)
        if rc == 0 { rc = sqfs_meta_writer_flush(dirMeta) }
        guard rc == 0 else { throw .squashfs(rc, "writing the inode table of \(path)") }
        super_.root_inode_ref = root.inodeRef
        super_.directory_table_start = vx_sqfs_file_size(file)
        rc = sqfs_meta_write_write_to_file(dirMeta)
        guard rc == 0 else { throw .squashfs(rc, "writing the directory table of \(path)") }
        rc = sqfs_frag_table_write(fragments, file, &super_, compressor)
        guard rc == 0 else { throw .squashfs(rc, "writing the fragment table of \(path)") }
        rc = sqfs_id_table_write(ids, file, &super_, compressor)
        guard rc == 0 else { throw .squashfs(rc, "writing the id table of \(path)") }
        rc = sqfs_xattr_writer_flush(xattrs, file, &super_, compressor)
        guard rc == 0 else { throw .squashfs(rc, "writing the xattr table of \(path)") }

        super_.inode_count = UInt32(order.count)
        super_.modification_time = options.modificationTime ?? newestMTime
        super_.bytes_used = vx_sqfs_file_size(file)
        rc = sqfs_super_write(&super_, file)
        guard rc == 0 else { throw .squashfs(rc, "writing the superblock of \(path)") }
        let padding = (4096 - Int(super_.bytes_used % 4096)) % 4096
        if padding > 0 {
            let zeros = [UInt8](repeating: 0, count: padding)
            rc = zeros.withUnsafeBytes { vx_sqfs_file_write_at(file, super_.bytes_used, $0.baseAddress, padding) }
            guard rc == 0 else { throw .squashfs(rc, "padding \(path)") }
        }
        let total = super_.bytes_used + UInt64(padding)
        let inodes = super_.inode_count
        release()  // closes the file
        return Summary(bytes: total, inodes: inodes, dataBytesRead: dataBytesRead)
    }

    private func writeInode(
        _ node: Node, rootParent: UInt32, inodeWriter: OpaquePointer, dirWriter: OpaquePointer,
        ids: OpaquePointer
    ) throws(ShardError) {
        let inode: UnsafeMutablePointer<sqfs_inode_generic_t>
        switch node.kind {
        case .directory(let children):
            var rc = sqfs_dir_writer_begin(dirWriter, 0)
            for child in children.values.sorted(by: { $0.name.lexicographicallyPrecedes($1.name) }) where rc == 0 {
                var target = child
                if case .hardLink(let resolved) = child.kind { target = resolved }
                rc = (child.name + [0]).withUnsafeBufferPointer { name in
                    name.withMemoryRebound(to: CChar.self) {
                        sqfs_dir_writer_add_entry(
                            dirWriter, $0.baseAddress, target.inodeNumber, target.inodeRef,
                            target.typeBits | target.meta.permissions)
                    }
                }
            }
            if rc == 0 { rc = sqfs_dir_writer_end(dirWriter) }
            guard rc == 0 else { throw .squashfs(rc, "writing a directory listing of \(path)") }
            let parent = node.parent?.inodeNumber ?? rootParent
            guard let made = sqfs_dir_writer_create_inode(dirWriter, 0, node.xattrIndex, parent) else {
                throw ShardError(.io, "out of memory")
            }
            inode = made
            if UInt32(inode.pointee.base.type) == SQFS_INODE_DIR.rawValue {
                inode.pointee.data.dir.nlink = node.linkCount
            } else {
                inode.pointee.data.dir_ext.nlink = node.linkCount
            }
        case .file(let slot):
            guard let made = slot.pointee else { throw ShardError(.io, "libsquashfs gave no inode for a file") }
            slot.pointee = nil
            inode = made
            if node.linkCount > 1 {
                _ = sqfs_inode_make_extended(inode)
                inode.pointee.data.file_ext.nlink = node.linkCount
            }
        case .symlink(let target):
            guard
                let made = target.withUnsafeBufferPointer({ buffer in
                    buffer.withMemoryRebound(to: CChar.self) { vx_sqfs_symlink_inode($0.baseAddress, $0.count) }
                })
            else { throw ShardError(.io, "out of memory") }
            inode = made
            inode.pointee.data.slink.nlink = node.linkCount
        case .special(let mode, let rdev):
            let type: SQFS_INODE_TYPE
            switch mode_t(mode) & S_IFMT {
            case S_IFBLK: type = SQFS_INODE_BDEV
            case S_IFCHR: type = SQFS_INODE_CDEV
            case S_IFIFO: type = SQFS_INODE_FIFO
            default: type = SQFS_INODE_SOCKET
            }
            guard let made = vx_sqfs_plain_inode(type) else { throw ShardError(.io, "out of memory") }
            inode = made
            if type == SQFS_INODE_BDEV || type == SQFS_INODE_CDEV {
                inode.pointee.data.dev.nlink = node.linkCount
                inode.pointee.data.dev.devno = rdev
            } else {
                inode.pointee.data.ipc.nlink = node.linkCount
            }
        case .hardLink:
            return  // never in the order: links share their target's inode
        }
        defer { free(inode) }
        inode.pointee.base.mode = node.typeBits | (node.meta.permissions & 0o7777)
        inode.pointee.base.mod_time = node.meta.mtime
        inode.pointee.base.inode_number = node.inodeNumber
        var rc = sqfs_inode_set_xattr_index(inode, node.xattrIndex)
        let uid = options.rootOwned ? 0 : node.meta.uid
        let gid = options.rootOwned ? 0 : node.meta.gid
        if rc == 0 { rc = sqfs_id_table_id_to_index(ids, uid, &inode.pointee.base.uid_idx) }
        if rc == 0 { rc = sqfs_id_table_id_to_index(ids, gid, &inode.pointee.base.gid_idx) }
        guard rc == 0 else { throw .squashfs(rc, "recording owners in \(path)") }
        var block: UInt64 = 0
        var offset: UInt32 = 0
        sqfs_meta_writer_get_position(inodeWriter, &block, &offset)
        node.inodeRef = (block << 16) | UInt64(offset)
        rc = sqfs_meta_writer_write_inode(inodeWriter, inode)
        guard rc == 0 else { throw .squashfs(rc, "writing an inode of \(path)") }
    }
}
