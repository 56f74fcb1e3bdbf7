import Foundation
import PersistOverlay
import SerialChannel
import SquashMounts

/// The overlay store of a sandbox: taken on at start (see ``Sandbox/start()``),
/// synced, snapshotted, restored, reset, diffed and exported.
extension Sandbox {
    /// What a store made for these images and shards records as its lower.
    public static func lower(rootfs: URL, shards: [Shard]) throws -> StoreLower {
        try StoreAttachment.lower(rootfs: rootfs, shards: shards)
    }

    func releaseStore() {
        storeLease?.release()
        storeLease = nil
    }

    func plugStore(_ lease: StoreLease) async throws {
        let r = try requireRunning()
        try await r.machine.plug(StoreAttachment.disk(image: lease.store.image))
        do {
            try await r.client.request(.store(serial: StoreAttachment.serial))
        } catch {
            let why = (error as? ProtocolError)?.description ?? "\(error)"
            throw VMExecError(
                .storeRefused, "the guest could not take on the store \(lease.store.directory.path): \(why)",
                cause: error as? any VMExecFailure)
        }
    }

    /// Returns once everything the guest wrote so far is in the store's image
    /// on the host's disk (the guest's syncfs, whose flush QEMU turns into an
    /// fdatasync of the image).
    public func sync() async throws {
        let r = try requireRunning()
        do { try await r.client.request(.sync) } catch { throw await Self.explain(error, machine: r.machine) }
    }

    /// Snapshots the store while the guest runs, without a reboot: the guest
    /// freezes the store (syncs it and holds every write), the image is copied
    /// (a reflink where the host file system shares blocks), the store thaws.
    /// Without a running guest, copies the store as it is.
    @discardableResult
    public func snapshot(_ name: String) async throws -> SnapshotInfo {
        try await exclusively { try await takeSnapshot(name) }
    }

    private func takeSnapshot(_ name: String) async throws -> SnapshotInfo {
        guard let store = configuration.store else { throw VMExecError(.invalidRequest, "this sandbox has no store") }
        guard running?.machine.ending == nil, let lease = storeLease else {
            let lease = try Self.storeCall { try store.lock(holder: "taking a snapshot") }
            return try await Self.offPool { try lease.createSnapshot(name) }
        }
        return try await whileFrozen { try await Self.offPool { try lease.createSnapshot(name) } }
    }

    /// Runs `body` with the guest's store frozen: everything written before is
    /// in the image file, and nothing is written until it returns.
    func whileFrozen<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        let r = try requireRunning()
        do { try await r.client.request(.freeze) } catch { throw await Self.explain(error, machine: r.machine) }
        let result: Result<T, any Error>
        do { result = .success(try await body()) } catch { result = .failure(error) }
        do { try await r.client.request(.thaw) } catch { throw await Self.explain(error, machine: r.machine) }
        return try result.get()
    }

    /// Restarts the guest from a snapshot of its store: the guest is shut
    /// down, the snapshot's image put back, and a fresh guest started.
    public func restore(snapshot name: String) async throws {
        try await exclusively {
            guard let store = configuration.store else { throw VMExecError(.invalidRequest, "this sandbox has no store") }
            let wasRunning = isRunning
            await stopMachine()
            let lease = try Self.storeCall { try store.lock(holder: "restoring a snapshot") }
            try await Self.offPool { try lease.restoreSnapshot(name) }
            lease.release()
            if wasRunning { try await startMachine() }
        }
    }

    /// Empties the store (snapshots stay): the guest is shut down, the store
    /// gets a fresh file system, and a guest is started again if one ran.
    public func resetStore() async throws {
        try await exclusively {
            guard let store = configuration.store else { throw VMExecError(.invalidRequest, "this sandbox has no store") }
            let wasRunning = isRunning
            await stopMachine()
            let lease = try Self.storeCall { try store.lock(holder: "resetting the store") }
            try await Self.offPool { try lease.reset() }
            lease.release()
            if wasRunning { try await startMachine() }
        }
    }

    /// What was added, changed and deleted in the guest's root since the store
    /// was created, or since `snapshot`. With a guest running, reads a copy of
    /// the store taken while the guest held it frozen.
    public func diff(since snapshot: String? = nil) async throws -> [StoreChange] {
        try await exclusively {
            let lower = try await lowerPaths()
            return try await withStoreImage { lease, image in
                try lease.diff(since: snapshot, image: image) { lower.contains($0) }
            }
        }
    }

    /// Writes what the guest changed under `path` (its upper layer; `/` for all)
    /// as a tar with OCI whiteouts.
    public func export(_ path: String, to tar: String) async throws {
        try await exclusively {
            try await withStoreImage { lease, image in try lease.export(path, to: tar, image: image) }
        }
    }

    /// Paths of the lower: the base root file system and the layer shards.
    func lowerPaths() async throws -> Set<String> {
        let images = try configuration.images ?? GuestImages.locate(architecture: configuration.architecture)
        let layers = ShardSet.layers(desiredShards)
        return try await Self.offPool {
            do throws(ShardError) {
                var paths = try Shard.paths(ofSquashfsImage: images.rootfs.path)
                for layer in layers { paths.formUnion(try layer.paths()) }
                return paths
            } catch {
                throw VMExecError(.storeRefused, error.message, cause: error)
            }
        }
    }

    /// Runs `body` on a consistent image of the store: a copy taken with the
    /// store frozen while the guest runs, else the store itself (locked).
    func withStoreImage<T: Sendable>(_ body: @escaping @Sendable (StoreLease, String?) throws -> T) async throws -> T {
        guard let store = configuration.store else { throw VMExecError(.invalidRequest, "this sandbox has no store") }
        guard running?.machine.ending == nil, let lease = storeLease else {
            let lease = try Self.storeCall { try store.lock(holder: "reading the store") }
            if let images = try? configuration.images ?? GuestImages.locate(architecture: configuration.architecture) {
                let lower = try StoreAttachment.lower(rootfs: images.rootfs, shards: desiredShards)
                try Self.storeCall { try lease.checkLower(lower, allowChange: configuration.allowLowerChange) }
            }
            return try await Self.offPool { try body(lease, nil) }
        }
        let copy = try await whileFrozen { try await Self.offPool { try lease.copyImage() } }
        defer { lease.removeCopy(copy) }
        return try await Self.offPool { try body(lease, copy) }
    }

    /// A store call with its error as a VMExecError.
    static func storeCall<T>(_ work: () throws -> T) throws -> T {
        do {
            return try work()
        } catch let error as StoreError {
            throw VMExecError(error.code == .locked ? .storeBusy : .storeRefused, error.message, cause: error)
        }
    }
}
