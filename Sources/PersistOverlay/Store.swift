import Foundation

/// An overlay store: a directory on the host holding `store.img` (a sparse
/// ext4 image the guest mounts as its writable upper layer), `store.json`
/// (size, the lower it was made over, snapshots), `lock`, and `snapshots/`.
///
/// The ext4 image is made and resized by e2fsprogs (mkfs.ext4, e2fsck,
/// resize2fs); its journal is what brings a store back after a host crash.
public struct Store: Sendable {
    public let directory: URL
    public static let defaultSize: UInt64 = 2 << 30
    /// Below this an ext4 journal and an overlay's work directory hardly fit.
    public static let minimumSize: UInt64 = 64 << 20

    var imagePath: String { directory.appendingPathComponent("store.img").path }
    var metadataPath: String { directory.appendingPathComponent("store.json").path }
    var lockPath: String { directory.appendingPathComponent("lock").path }
    var snapshotsDirectory: URL { directory.appendingPathComponent("snapshots") }

    /// The image file the guest mounts.
    public var image: String { imagePath }

    /// Creates a store of `size` bytes (sparse: it takes room only as the guest writes).
    @discardableResult
    public static func create(at directory: URL, size: UInt64 = defaultSize, lower: StoreLower) throws(StoreError) -> Store {
        guard size >= minimumSize else {
            throw StoreError(.invalidArgument, "a store needs at least \(minimumSize >> 20) MiB, not \(size) bytes")
        }
        let store = Store(directory: directory)
        if FileManager.default.fileExists(atPath: store.metadataPath) {
            throw StoreError(.exists, "\(directory.path) already holds a store; open it, or delete it first")
        }
        do {
            try FileManager.default.createDirectory(at: store.snapshotsDirectory, withIntermediateDirectories: true)
        } catch {
            throw StoreError(.io, "cannot create \(directory.path): \(error.localizedDescription)")
        }
        let lock = try StoreLock(path: store.lockPath, holder: StoreLease.holderDescription("creating it"))
        defer { lock.release() }
        try store.makeFileSystem(size: size, at: store.imagePath)
        try store.write(StoreMetadata(sizeBytes: size, created: Date(), lower: lower))
        return store
    }

    /// Opens the store at `directory` (without locking it).
    public static func open(at directory: URL) throws(StoreError) -> Store {
        let store = Store(directory: directory)
        _ = try store.metadata()
        guard FileManager.default.fileExists(atPath: store.imagePath) else {
            throw StoreError(.notAStore, "\(directory.path) has a store.json but no store.img; the store is damaged")
        }
        return store
    }

    /// Takes the store for one guest; fails naming the holder if another has it.
    public func lock(holder: String) throws(StoreError) -> StoreLease {
        StoreLease(store: self, lock: try StoreLock(path: lockPath, holder: StoreLease.holderDescription(holder)))
    }

    // MARK: facts

    func metadata() throws(StoreError) -> StoreMetadata {
        guard let data = FileManager.default.contents(atPath: metadataPath) else {
            throw StoreError(
                .notAStore, "\(directory.path) is not a store (no store.json); create one with `vmexec store create`")
        }
        do {
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            let m = try decoder.decode(StoreMetadata.self, from: data)
            guard m.format == 1 else { throw StoreError(.notAStore, "store format \(m.format) is newer than this vmexec") }
            return m
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.notAStore, "\(metadataPath) is unreadable (\(error)); the store is damaged")
        }
    }

    func write(_ metadata: StoreMetadata) throws(StoreError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        do {
            try encoder.encode(metadata).write(to: URL(fileURLWithPath: metadataPath), options: .atomic)
        } catch {
            throw StoreError(.io, "cannot write \(metadataPath): \(error.localizedDescription)")
        }
    }

    /// What `vmexec store info` shows.
    public struct Info: Codable, Sendable {
        public var directory: String
        public var sizeBytes: UInt64
        /// Bytes the ext4 file system has in use and free (from its superblock).
        public var usedBytes: UInt64
        public var freeBytes: UInt64
        /// Bytes the image occupies on the host (it is sparse).
        public var allocatedBytes: UInt64
        public var created: Date
        public var lower: StoreLower
        public var snapshots: [SnapshotInfo]
        /// Who holds the store now, if anyone.
        public var holder: String?
    }

    public func info() throws(StoreError) -> Info {
        let m = try metadata()
        let (used, free) = try fileSystemUsage()
        var holder: String?
        let fd = Glibc.open(lockPath, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            if flock(fd, LOCK_SH | LOCK_NB) != 0 {
                holder = (try? String(contentsOfFile: lockPath, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            } else {
                _ = flock(fd, LOCK_UN)  // at once, not with the last copy of the descriptor (see StoreLock.release)
            }
            close(fd)
        }
        return Info(
            directory: directory.path, sizeBytes: m.sizeBytes, usedBytes: used, freeBytes: free,
            allocatedBytes: Self.allocatedBytes(imagePath), created: m.created, lower: m.lower,
            snapshots: m.snapshots, holder: holder)
    }

    /// The lower the store was made over.
    public func lower() throws(StoreError) -> StoreLower { try metadata().lower }

    /// Used and free bytes of the ext4 file system, read from its superblock by dumpe2fs.
    func fileSystemUsage() throws(StoreError) -> (used: UInt64, free: UInt64) {
        let out = try Self.tool(["dumpe2fs", "-h", imagePath], what: "reading the store's superblock")
        var fields: [String: UInt64] = [:]
        for line in out.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, let v = UInt64(parts[1].trimmingCharacters(in: .whitespaces)) {
                fields[String(parts[0])] = v
            }
        }
        guard let count = fields["Block count"], let free = fields["Free blocks"], let size = fields["Block size"] else {
            throw StoreError(.notAStore, "\(imagePath) has no readable ext4 superblock; the store is damaged")
        }
        return ((count - free) * size, free * size)
    }

    static func allocatedBytes(_ path: String) -> UInt64 {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_blocks) * 512 : 0
    }

    // MARK: the file system

    /// A sparse file of `size` bytes with an empty ext4 on it. No reserved
    /// blocks, so a full store is full for everyone; the journal stays on.
    func makeFileSystem(size: UInt64, at path: String) throws(StoreError) {
        let temporary = path + ".new"
        unlink(temporary)
        let fd = Glibc.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0, ftruncate(fd, off_t(size)) == 0 else {
            if fd >= 0 { close(fd) }
            throw StoreError(.io, "cannot create \(temporary): \(String(cString: strerror(errno)))")
        }
        close(fd)
        do {
            _ = try Self.tool(
                [
                    "mkfs.ext4", "-q", "-F", "-m", "0", "-L", "vmexec-store", "-E",
                    "assume_storage_prezeroed=1,lazy_itable_init=0", temporary,
                ],
                what: "making the store's file system")
        } catch {
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            throw StoreError(.io, "cannot put \(path) in place: \(String(cString: strerror(errno)))")
        }
    }

    /// Runs an e2fsprogs tool; its output, or a `.tool` error quoting it.
    @discardableResult
    static func tool(_ arguments: [String], what: String, okStatuses: Set<Int32> = [0]) throws(StoreError) -> String {
        let outcome: HostTool.Outcome
        do {
            outcome = try HostTool.run(arguments)
        } catch {
            throw StoreError(.tool, "\(what): \(error.message) (install e2fsprogs)")
        }
        let output = outcome.output
        guard okStatuses.contains(outcome.status) else {
            throw StoreError(
                .tool, "\(what): \(arguments.joined(separator: " ")) failed (\(outcome.status)): \(output.suffix(600))"
            )
        }
        return output
    }

    /// Parses sizes such as `2G`, `512M`, `1.5G`, `1048576` (binary units).
    public static func parseSize(_ text: String) throws(StoreError) -> UInt64 {
        let units: [Character: Double] = ["K": 1024, "M": 1_048_576, "G": 1_073_741_824, "T": 1_099_511_627_776]
        var digits = text.uppercased()
        if digits.hasSuffix("IB") { digits.removeLast(2) } else if digits.hasSuffix("B") { digits.removeLast() }
        var factor: Double = 1
        if let last = digits.last, let unit = units[last] {
            factor = unit
            digits.removeLast()
        }
        guard let value = Double(digits), value > 0, value * factor < 1e15 else {
            throw StoreError(.invalidArgument, "'\(text)' is not a size; write e.g. 2G, 512M or a number of bytes")
        }
        return UInt64(value * factor)
    }
}
