import CArchive
import Foundation

extension StoreLease {
    /// Writes the upper layer under `path` (`/` for all of it) as a tar, in
    /// the OCI layer convention: a deletion is an empty `.wh.NAME`, an opaque
    /// directory holds `.wh..wh..opq`. Read from the image on the host.
    public func export(_ path: String, to tarPath: String, image: String? = nil) throws(StoreError) {
        let prefix = path == "/" ? "" : (path.hasSuffix("/") ? String(path.dropLast()) : path)
        guard prefix.isEmpty || (prefix.hasPrefix("/") && !prefix.split(separator: "/").contains("..")) else {
            throw StoreError(.invalidArgument, "export takes an absolute path in the guest, not '\(path)'")
        }
        let storeImage: StoreImage
        do { storeImage = try StoreImage(path: image ?? store.imagePath) } catch { throw error }
        let entries = try Self.entries(image ?? store.imagePath)
        let chosen = entries.values.filter { prefix.isEmpty || $0.path == prefix || $0.path.hasPrefix(prefix + "/") }
            .sorted { $0.path < $1.path }
        guard !chosen.isEmpty else {
            throw StoreError(.invalidArgument, "the store's upper layer has nothing at \(path): the guest did not change it")
        }
        guard let archive = archive_write_new() else { throw StoreError(.io, "out of memory") }
        defer { archive_write_free(archive) }
        archive_write_set_format_pax_restricted(archive)
        let partial = tarPath + ".partial"
        guard archive_write_open_filename(archive, partial) == ARCHIVE_OK else {
            throw StoreError(.io, "cannot write \(tarPath): \(String(cString: archive_error_string(archive)))")
        }
        var done = false
        defer { if !done { unlink(partial) } }
        do {
            for e in chosen {
                let relative = String(e.path.dropFirst())
                if e.kind == .whiteout {
                    let name = (relative as NSString).lastPathComponent
                    let dir = (relative as NSString).deletingLastPathComponent
                    try write(
                        archive, path: (dir.isEmpty ? "" : dir + "/") + ".wh." + name, entry: e, type: UInt32(Glibc.S_IFREG))
                    continue
                }
                switch e.kind {
                case .directory:
                    try write(archive, path: relative, entry: e, type: UInt32(Glibc.S_IFDIR))
                    if e.opaque { try write(archive, path: relative + "/.wh..wh..opq", entry: e, type: UInt32(Glibc.S_IFREG)) }
                case .symlink:
                    try write(archive, path: relative, entry: e, type: UInt32(Glibc.S_IFLNK))
                case .file:
                    try write(archive, path: relative, entry: e, type: UInt32(Glibc.S_IFREG), size: e.size) { sink in
                        guard let ino = storeImage.lookup("/upper" + e.path) else { return }
                        try storeImage.read(ino, size: e.size, into: sink)
                    }
                default:
                    continue  // devices, fifos, sockets: nothing a layer export carries
                }
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.io, "writing \(tarPath): \(error)")
        }
        guard archive_write_close(archive) == ARCHIVE_OK, rename(partial, tarPath) == 0 else {
            throw StoreError(.io, "finishing \(tarPath): \(String(cString: strerror(errno)))")
        }
        done = true
    }

    private func write(
        _ archive: OpaquePointer, path: String, entry e: UpperEntry, type: UInt32, size: UInt64 = 0,
        content: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void = { _ in }
    ) throws {
        guard let ae = archive_entry_new() else { throw StoreError(.io, "out of memory") }
        defer { archive_entry_free(ae) }
        archive_entry_set_pathname(ae, path)
        archive_entry_set_filetype(ae, type)
        archive_entry_set_perm(ae, mode_t(type == UInt32(Glibc.S_IFREG) && e.kind == .whiteout ? 0o644 : e.mode))
        archive_entry_set_uid(ae, la_int64_t(e.uid))
        archive_entry_set_gid(ae, la_int64_t(e.gid))
        archive_entry_set_mtime(ae, time_t(e.mtime), 0)
        archive_entry_set_size(ae, la_int64_t(size))
        if type == UInt32(Glibc.S_IFLNK), let target = e.linkTarget { archive_entry_set_symlink(ae, target) }
        guard archive_write_header(archive, ae) == ARCHIVE_OK else {
            throw StoreError(.io, "tar entry \(path): \(String(cString: archive_error_string(archive)))")
        }
        try content { bytes in
            guard archive_write_data(archive, bytes.baseAddress, bytes.count) == bytes.count else {
                throw StoreError(.io, "tar data of \(path): \(String(cString: archive_error_string(archive)))")
            }
        }
    }
}
