import CLibvirt
import Crypto
import Foundation

/// The files a remote libvirt host needs (kernel, initramfs, root file
/// system, shards), put into a storage pool of its own (`vmexec`, a
/// directory pool at /var/lib/libvirt/vmexec) with `virStorageVolUpload`.
///
/// A volume is named by its content (`sha256-<hex>-<name>`), so each
/// version is uploaded once per host however many guests use it, and a
/// new version never replaces one in use. Before a volume is used for the
/// first time by this process it is read back (`virStorageVolDownload`) and
/// hashed: a volume that a crash left half-written, or that someone changed
/// on the host, is deleted and uploaded again rather than booted.
actor HostVolumes {
    let connection: LibvirtConnection
    static let poolName = "vmexec"
    static let poolPath = "/var/lib/libvirt/vmexec"

    /// The content hash of each local file, by path, size and modification time.
    private var hashes: [String: (size: Int64, mtime: Double, sha256: String)] = [:]
    /// Volumes checked by hash on the host in this process: their path there, by name.
    private var checked: [String: String] = [:]
    /// Uploads under way, so two guests needing one file upload it once.
    private var inFlight: [String: Task<String, any Error>] = [:]

    init(connection: LibvirtConnection) {
        self.connection = connection
    }

    /// The path on the host of a volume holding the bytes of `localPath`, uploaded if needed.
    func hostPath(for localPath: String) async throws -> String {
        let digest = try hash(localPath)
        let base = URL(fileURLWithPath: localPath).lastPathComponent.filter { $0.isLetter || $0.isNumber || "._-".contains($0) }
        let name = "sha256-\(digest.prefix(32))-\(base.prefix(64))"
        if let path = checked[name] { return path }
        if let task = inFlight[name] { return try await task.value }
        let connection = self.connection
        let task = Task { () throws -> String in
            try await connection.call { () throws(VMExecError) -> String in
                try Self.provide(localPath, name: name, sha256: digest, on: connection)
            }
        }
        inFlight[name] = task
        defer { inFlight[name] = nil }
        let path = try await task.value
        checked[name] = path
        return path
    }

    private func hash(_ path: String) throws -> String {
        let attrs = try FileManager.default.attributesOfItem(atPath: path)
        let size = (attrs[.size] as? NSNumber)?.int64Value ?? -1
        let mtime = (attrs[.modificationDate] as? Date)?.timeIntervalSince1970 ?? -1
        if let known = hashes[path], known.size == size, known.mtime == mtime { return known.sha256 }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw VMExecError(.launchFailed, "cannot read \(path) to upload it to \(connection.uri)")
        }
        defer { try? handle.close() }
        var sha = SHA256()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { sha.update(data: chunk) }
        let hex = sha.finalize().map { String(format: "%02x", $0) }.joined()
        hashes[path] = (size, mtime, hex)
        return hex
    }

    // MARK: blocking libvirt work (on the connection's queue)

    /// The volume `name` holding `localPath`'s bytes, checked by hash; uploaded when missing or wrong.
    private static func provide(_ localPath: String, name: String, sha256: String, on connection: LibvirtConnection)
        throws(VMExecError) -> String
    {
        let pool = try Self.pool(on: connection)
        defer { virStoragePoolFree(pool) }
        if let volume = virStorageVolLookupByName(pool, name) {
            defer { virStorageVolFree(volume) }
            if (try? Self.digest(of: volume, on: connection)) == sha256 { return try Self.path(of: volume) }
            // Half-written or changed: it goes, and is uploaded afresh.
            virStorageVolDelete(volume, 0)
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: localPath)[.size] as? NSNumber)?.int64Value ?? 0
        let xml =
            "<volume><name>\(DomainDescription.escaped(name))</name><capacity unit='bytes'>\(size)</capacity>"
            + "<target><format type='raw'/></target></volume>"
        guard let volume = virStorageVolCreateXML(pool, xml, 0) else {
            throw failure("cannot make the volume \(name) in the pool \(poolName)", connection)
        }
        defer { virStorageVolFree(volume) }
        do throws(VMExecError) {
            try Self.upload(localPath, size: size, to: volume, on: connection)
            let got = try Self.digest(of: volume, on: connection)
            guard got == sha256 else {
                throw VMExecError(
                    .launchFailed, "the volume \(name) on \(connection.uri) does not hold what was uploaded (sha256 \(got))")
            }
            return try Self.path(of: volume)
        } catch {
            virStorageVolDelete(volume, 0)
            throw error
        }
    }

    /// The `vmexec` pool, made (a transient directory pool) if the host has none.
    private static func pool(on connection: LibvirtConnection) throws(VMExecError) -> OpaquePointer {
        if let pool = virStoragePoolLookupByName(connection.pointer, poolName) {
            if virStoragePoolIsActive(pool) != 1 { virStoragePoolCreate(pool, 0) }
            virStoragePoolRefresh(pool, 0)
            return pool
        }
        let xml = "<pool type='dir'><name>\(poolName)</name><target><path>\(poolPath)</path></target></pool>"
        guard let pool = virStoragePoolCreateXML(connection.pointer, xml, UInt32(VIR_STORAGE_POOL_CREATE_WITH_BUILD.rawValue))
        else {
            throw failure("cannot make the storage pool \(poolName) at \(poolPath)", connection)
        }
        return pool
    }

    private static func upload(_ localPath: String, size: Int64, to volume: OpaquePointer, on connection: LibvirtConnection)
        throws(VMExecError)
    {
        guard let file = FileHandle(forReadingAtPath: localPath) else {
            throw VMExecError(.launchFailed, "cannot read \(localPath)")
        }
        defer { try? file.close() }
        guard let stream = virStreamNew(connection.pointer, 0) else { throw failure("cannot make a stream", connection) }
        defer { virStreamFree(stream) }
        guard virStorageVolUpload(volume, stream, 0, UInt64(size), 0) == 0 else {
            throw failure("cannot upload \(localPath)", connection)
        }
        do {
            while let chunk = try file.read(upToCount: 1 << 20), !chunk.isEmpty {
                var sent = 0
                while sent < chunk.count {
                    let n = chunk.withUnsafeBytes { bytes in
                        virStreamSend(
                            stream, bytes.baseAddress!.advanced(by: sent).assumingMemoryBound(to: CChar.self), chunk.count - sent)
                    }
                    guard n > 0 else { throw failure("uploading \(localPath) broke off", connection) }
                    sent += Int(n)
                }
            }
        } catch let error as VMExecError {
            virStreamAbort(stream)
            throw error
        } catch {
            virStreamAbort(stream)
            throw VMExecError(.launchFailed, "cannot read \(localPath): \(error)")
        }
        guard virStreamFinish(stream) == 0 else { throw failure("uploading \(localPath) did not finish", connection) }
    }

    /// The sha256 of a volume's bytes, read back from the host.
    private static func digest(of volume: OpaquePointer, on connection: LibvirtConnection) throws(VMExecError) -> String {
        guard let stream = virStreamNew(connection.pointer, 0) else { throw failure("cannot make a stream", connection) }
        defer { virStreamFree(stream) }
        guard virStorageVolDownload(volume, stream, 0, 0, 0) == 0 else { throw failure("cannot read a volume back", connection) }
        var sha = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes {
                virStreamRecv(stream, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count)
            }
            if n == 0 { break }
            guard n > 0 else {
                virStreamAbort(stream)
                throw failure("reading a volume back broke off", connection)
            }
            sha.update(data: buffer[0..<Int(n)])
        }
        virStreamFinish(stream)
        return sha.finalize().map { String(format: "%02x", $0) }.joined()
    }

    private static func path(of volume: OpaquePointer) throws(VMExecError) -> String {
        guard let path = virStorageVolGetPath(volume) else {
            throw VMExecError(.launchFailed, "libvirt names no path for a volume: \(LibvirtEventLoop.lastError("no reason"))")
        }
        defer { free(path) }
        return String(cString: path)
    }

    private static func failure(_ what: String, _ connection: LibvirtConnection) -> VMExecError {
        VMExecError(
            .launchFailed, "\(what) on the libvirt host \(connection.uri): \(LibvirtEventLoop.lastError("no reason given"))")
    }
}
