import Foundation

/// A store held by one guest (or one maintenance command): everything that
/// changes the image goes through a lease, so it never happens under a
/// running guest's feet. Released on `release()`, on deinit, or when the
/// process dies.
public final class StoreLease: @unchecked Sendable {
    // `store` is immutable; `lock` is released once.
    public let store: Store
    private let lock: StoreLock

    init(store: Store, lock: StoreLock) {
        self.store = store
        self.lock = lock
    }

    deinit { lock.release() }

    public func release() { lock.release() }

    static func holderDescription(_ what: String) -> String {
        "pid \(getpid()) on \(ProcessInfo.processInfo.hostName) (\(what), since \(ISO8601DateFormatter().string(from: Date())))"
    }

    /// Refuses (or, with `allowChange`, accepts and records) a lower other than the store's.
    /// An upper layer over a changed lower can lie: a whiteout may hide a file the
    /// new base added, a copied-up file may shadow the new base's fixed one.
    public func checkLower(_ lower: StoreLower, allowChange: Bool) throws(StoreError) {
        var m = try store.metadata()
        guard m.lower != lower else { return }
        guard allowChange else {
            throw StoreError(
                .lowerChanged,
                """
                the store \(store.directory.path) was made over \(m.lower), not \(lower); its changes may \
                not fit the new one (deleted files can reappear or hide new ones). Use the same base and \
                layers, or accept the risk explicitly (allowLowerChange / --allow-lower-change)
                """)
        }
        m.lower = lower
        try store.write(m)
    }

    /// Grows the image and its file system (the guest must be off: this lease is the guest's).
    public func grow(to size: UInt64) throws(StoreError) {
        var m = try store.metadata()
        guard size > m.sizeBytes else {
            throw StoreError(.invalidArgument, "a store only grows: it has \(m.sizeBytes) bytes, asked for \(size)")
        }
        try Store.tool(
            ["e2fsck", "-f", "-y", store.imagePath], what: "checking the store before growing it", okStatuses: [0, 1])
        guard truncate(store.imagePath, off_t(size)) == 0 else {
            throw StoreError(.io, "cannot grow \(store.imagePath): \(String(cString: strerror(errno)))")
        }
        try Store.tool(["resize2fs", store.imagePath], what: "growing the store's file system")
        m.sizeBytes = size
        try store.write(m)
    }

    /// Empties the store: a fresh file system of the same size; snapshots stay.
    public func reset() throws(StoreError) {
        let m = try store.metadata()
        // The fresh image replaces the old one only once it is complete.
        try store.makeFileSystem(size: m.sizeBytes, at: store.imagePath)
    }

    /// Removes the whole store directory.
    public func delete() throws(StoreError) {
        do {
            try FileManager.default.removeItem(at: store.directory)
        } catch {
            throw StoreError(.io, "cannot delete \(store.directory.path): \(error.localizedDescription)")
        }
        release()
    }

    // MARK: snapshots

    static func checkName(_ name: String) throws(StoreError) {
        guard !name.isEmpty, name.utf8.count <= 64, !name.hasPrefix("."),
            name.utf8.allSatisfy({ b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
                    || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
            })
        else { throw StoreError(.invalidArgument, "snapshot name '\(name)': use 1-64 letters, digits, '.', '_', '-'") }
    }

    func snapshotPath(_ name: String) -> String { store.snapshotsDirectory.appendingPathComponent("\(name).img").path }

    /// Copies the image as it is now. The caller makes it consistent first:
    /// the guest off, or synced and paused (see `Sandbox.snapshot`).
    @discardableResult
    public func createSnapshot(_ name: String) throws(StoreError) -> SnapshotInfo {
        try Self.checkName(name)
        var m = try store.metadata()
        guard !m.snapshots.contains(where: { $0.name == name }) else {
            throw StoreError(.snapshot, "a snapshot named \(name) exists; delete it first or pick another name")
        }
        try? FileManager.default.createDirectory(at: store.snapshotsDirectory, withIntermediateDirectories: true)
        try ImageCopy.copy(from: store.imagePath, to: snapshotPath(name))
        let info = SnapshotInfo(name: name, created: Date(), allocatedBytes: Store.allocatedBytes(snapshotPath(name)))
        m.snapshots.append(info)
        try store.write(m)
        return info
    }

    public func snapshots() throws(StoreError) -> [SnapshotInfo] { try store.metadata().snapshots }

    /// Puts the snapshot's image back as the store's (the guest must be off).
    public func restoreSnapshot(_ name: String) throws(StoreError) {
        let m = try store.metadata()
        guard m.snapshots.contains(where: { $0.name == name }) else {
            throw StoreError(
                .snapshot, "no snapshot named \(name) (there are: \(m.snapshots.map(\.name).joined(separator: ", ")))")
        }
        try ImageCopy.copy(from: snapshotPath(name), to: store.imagePath)
    }

    public func deleteSnapshot(_ name: String) throws(StoreError) {
        var m = try store.metadata()
        guard m.snapshots.contains(where: { $0.name == name }) else {
            throw StoreError(.snapshot, "no snapshot named \(name)")
        }
        unlink(snapshotPath(name))
        m.snapshots.removeAll { $0.name == name }
        try store.write(m)
    }
}
