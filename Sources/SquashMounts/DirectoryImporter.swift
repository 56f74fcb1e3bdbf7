import CSquashfs
import Foundation

/// Feeds a host directory tree into a `SquashfsImageWriter`, in sorted order
/// (so the same tree always gives the same image), keeping modes, owners,
/// times, symlinks, hard links and extended attributes.
///
/// Symlinks are stored as links, never followed; the walk does not leave
/// the directory it was given.
struct DirectoryImporter {
    let root: String

    private struct InodeKey: Hashable {
        let device: UInt64
        let inode: UInt64
    }

    func importTree(into writer: SquashfsImageWriter) throws(ShardError) {
        var st = stat()
        guard lstat(root, &st) == 0 else { throw ShardError(.io, "\(root): \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw ShardError(.invalidArgument, "\(root) is not a directory") }
        try writer.setRootMetadata(metadata(st, path: Array(root.utf8)))
        var links: [InodeKey: SquashfsImageWriter.Node] = [:]
        try walk(Array(root.utf8), components: [], writer: writer, links: &links)
    }

    private func metadata(_ st: stat, path: [UInt8]) throws(ShardError) -> EntryMetadata {
        EntryMetadata(
            permissions: UInt16(st.st_mode & 0o7777), uid: st.st_uid, gid: st.st_gid,
            mtime: UInt32(clamping: max(0, st.st_mtim.tv_sec)), xattrs: try Self.xattrs(of: path))
    }

    private func walk(
        _ dir: [UInt8], components: [[UInt8]], writer: SquashfsImageWriter,
        links: inout [InodeKey: SquashfsImageWriter.Node]
    ) throws(ShardError) {
        let dirString = String(decoding: dir, as: UTF8.self)
        guard let handle = Self.withCPath(dir, { opendir($0) }) else {
            throw ShardError(.io, "\(dirString): \(String(cString: strerror(errno)))")
        }
        var names: [[UInt8]] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                Array(raw.prefix(while: { $0 != 0 }))
            }
            if name != [0x2e] && name != [0x2e, 0x2e] { names.append(name) }
        }
        closedir(handle)
        names.sort { $0.lexicographicallyPrecedes($1) }

        for name in names {
            let path = dir + [0x2f] + name
            let display = String(decoding: path, as: UTF8.self)
            let here = components + [name]
            var st = stat()
            guard Self.withCPath(path, { lstat($0, &st) }) == 0 else {
                throw ShardError(.io, "\(display): \(String(cString: strerror(errno)))")
            }
            let key = InodeKey(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
            let type = st.st_mode & S_IFMT
            if type != S_IFDIR, st.st_nlink > 1, let first = links[key] {
                try writer.addLink(here, path: display, to: first)
                continue
            }
            let meta = try metadata(st, path: path)
            switch type {
            case S_IFDIR:
                try writer.addDirectory(here, path: display, meta: meta)
                try walk(path, components: here, writer: writer, links: &links)
            case S_IFREG:
                let node = try writer.addFile(here, path: display, meta: meta) { sink throws(ShardError) in
                    try Self.stream(path, display: display, into: sink)
                }
                if st.st_nlink > 1 { links[key] = node }
            case S_IFLNK:
                var target = [CChar](repeating: 0, count: 4096)
                let n = Self.withCPath(path) { p in target.withUnsafeMutableBufferPointer { readlink(p, $0.baseAddress!, 4096) } }
                guard n > 0 else { throw ShardError(.io, "\(display): readlink: \(String(cString: strerror(errno)))") }
                try writer.addSymlink(here, path: display, target: target.prefix(n).map { UInt8(bitPattern: $0) }, meta: meta)
            case S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK:
                try writer.addSpecial(
                    here, path: display, mode: UInt16(st.st_mode), rdev: UInt32(truncatingIfNeeded: st.st_rdev),
                    meta: meta)
            default:
                throw ShardError(.unsupportedEntry, "\(display): unknown file type")
            }
        }
    }

    /// Reads a file in 1 MiB pieces into `sink`, refusing to follow a symlink swapped in meanwhile.
    private static func stream(
        _ path: [UInt8], display: String,
        into sink: (UnsafeRawBufferPointer) throws(ShardError) -> Void
    ) throws(ShardError) {
        let fd = withCPath(path) { open($0, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }
        guard fd >= 0 else { throw ShardError(.io, "\(display): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw ShardError(.io, "\(display): read: \(String(cString: strerror(errno)))")
            }
            if n == 0 { return }
            try sink(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }

    /// The extended attributes of `path` (not following a symlink); none where unsupported.
    static func xattrs(of path: [UInt8]) throws(ShardError) -> [(name: String, value: [UInt8])] {
        let size = withCPath(path) { llistxattr($0, nil, 0) }
        guard size > 0 else { return [] }
        var names = [CChar](repeating: 0, count: size)
        let got = withCPath(path) { llistxattr($0, &names, size) }
        guard got > 0 else { return [] }
        var result: [(name: String, value: [UInt8])] = []
        for raw in names.prefix(got).split(separator: 0) {
            let name = String(decoding: raw.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let length = withCPath(path) { lgetxattr($0, name, nil, 0) }
            guard length >= 0 else { continue }
            var value = [UInt8](repeating: 0, count: length)
            let read = withCPath(path) { p in value.withUnsafeMutableBytes { lgetxattr(p, name, $0.baseAddress, length) } }
            guard read >= 0 else { continue }
            result.append((name, Array(value.prefix(read))))
        }
        return result.sorted { $0.name < $1.name }
    }

    static func withCPath<T>(_ path: [UInt8], _ body: (UnsafePointer<CChar>) -> T) -> T {
        (path + [0]).withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { body($0.baseAddress!) }
        }
    }
}
