import Foundation

/// Copies a disk image as cheaply as the host file system allows: a reflink
/// (FICLONE: btrfs, XFS, …) shares every block; elsewhere only the data
/// ranges are copied (found with SEEK_DATA/SEEK_HOLE), so holes stay holes. The copy appears under its name only when complete.
enum ImageCopy {
    /// `FICLONE`: _IOW(0x94, 9, int).
    static let ficlone: UInt = 0x4004_9409
    /// Linux's lseek whence values (not exported by Swift's Glibc module).
    static let seekData: Int32 = 3, seekHole: Int32 = 4

    static func copy(from source: String, to destination: String) throws(StoreError) {
        let temporary = destination + ".partial"
        unlink(temporary)
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw StoreError(.io, "cannot read \(source): \(String(cString: strerror(errno)))") }
        defer { close(input) }
        let output = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw StoreError(.io, "cannot create \(temporary): \(String(cString: strerror(errno)))") }
        var ok = false
        defer {
            close(output)
            if !ok { unlink(temporary) }
        }
        var st = stat()
        guard fstat(input, &st) == 0 else { throw StoreError(.io, "cannot stat \(source)") }
        if ioctl(output, ficlone, input) != 0 {
            guard ftruncate(output, st.st_size) == 0 else {
                throw StoreError(.io, "cannot size \(temporary): \(String(cString: strerror(errno)))")
            }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
            defer { buffer.deallocate() }
            var offset: off_t = 0
            while offset < st.st_size {
                let data = lseek(input, offset, seekData)
                if data < 0 { break }  // ENXIO: only a hole is left
                var hole = lseek(input, data, seekHole)
                if hole < 0 { hole = st.st_size }
                var at = data
                while at < hole {
                    let n = pread(input, buffer.baseAddress, min(buffer.count, Int(hole - at)), at)
                    guard n > 0, pwrite(output, buffer.baseAddress, n, at) == n else {
                        throw StoreError(.io, "copying \(source): \(String(cString: strerror(errno)))")
                    }
                    at += off_t(n)
                }
                offset = hole
            }
        }
        guard fsync(output) == 0, rename(temporary, destination) == 0 else {
            throw StoreError(.io, "saving \(destination): \(String(cString: strerror(errno)))")
        }
        ok = true
    }
}
