import Foundation

/// One difference the guest made to its root.
public struct StoreChange: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case added, changed, deleted }
    public var kind: Kind
    /// The path in the guest's root.
    public var path: String
    /// What is there now (for a deletion: what was there).
    public var type: UpperEntry.Kind
    /// Bytes of a file now (for a deletion: before, when known).
    public var size: UInt64
}

extension StoreLease {
    /// What was added, changed and deleted since the store was created (or
    /// since the snapshot `since`), read from the image on the host. Overlay
    /// whiteouts count as deletions; directories appear only when added,
    /// deleted or made opaque (a copy-up of a parent is no change of its own).
    /// `lowerHas` says whether a path exists in the lower (base and layers):
    /// it tells an added file from a changed one.
    ///
    /// `image` reads another copy of the store (see `copyImage`); by default
    /// the store's own image, which needs the guest off.
    public func diff(
        since snapshot: String? = nil, image: String? = nil,
        lowerHas: (String) -> Bool
    ) throws(StoreError) -> [StoreChange] {
        let current = try Self.entries(image ?? store.imagePath)
        var baseline: [String: UpperEntry] = [:]
        if let snapshot {
            guard try snapshots().contains(where: { $0.name == snapshot }) else {
                throw StoreError(.snapshot, "no snapshot named \(snapshot)")
            }
            baseline = try Self.entries(snapshotPath(snapshot))
        }
        return Self.changes(current: current, baseline: baseline, lowerHas: lowerHas)
    }

    static func entries(_ image: String) throws(StoreError) -> [String: UpperEntry] {
        do {
            return try StoreImage(path: image).upperEntries()
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.io, "reading \(image): \(error)")
        }
    }

    /// The changes between two upper layers over the same lower.
    static func changes(
        current: [String: UpperEntry], baseline: [String: UpperEntry],
        lowerHas: (String) -> Bool
    ) -> [StoreChange] {
        var out: [StoreChange] = []
        // Was the path visible at the baseline (in its upper layer, or in the lower unless whited out or hidden)?
        func hiddenByOpaque(_ path: String, in layer: [String: UpperEntry]) -> Bool {
            var p = path
            while let slash = p.lastIndex(of: "/"), slash != p.startIndex {
                p = String(p[..<slash])
                if layer[p]?.opaque == true { return true }
            }
            return false
        }
        func visibleBefore(_ path: String) -> Bool {
            if let b = baseline[path] { return b.kind != .whiteout }
            return lowerHas(path) && !hiddenByOpaque(path, in: baseline)
        }
        for (path, now) in current {
            let before = baseline[path]
            if let before, before.sameContent(as: now) { continue }
            if now.kind == .whiteout {
                if visibleBefore(path) {
                    out.append(StoreChange(kind: .deleted, path: path, type: before?.kind ?? .other, size: before?.size ?? 0))
                }
                continue
            }
            let existed = visibleBefore(path)
            if now.kind == .directory {
                if !existed {
                    out.append(StoreChange(kind: .added, path: path, type: .directory, size: 0))
                } else if now.opaque && before?.opaque != true {
                    out.append(StoreChange(kind: .changed, path: path, type: .directory, size: 0))
                }
                continue
            }
            out.append(StoreChange(kind: existed ? .changed : .added, path: path, type: now.kind, size: now.size))
        }
        // Upper entries of the baseline that are gone: removed (a lower file's removal leaves a whiteout, seen above).
        for (path, before) in baseline where current[path] == nil && before.kind != .whiteout {
            let parentGone = { () -> Bool in
                guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return false }
                let parent = String(path[..<slash])
                return current[parent] == nil && baseline[parent] != nil && !lowerHas(parent)
            }()
            if !parentGone || before.kind != .directory {
                out.append(StoreChange(kind: .deleted, path: path, type: before.kind, size: before.size))
            }
        }
        return out.sorted { $0.path < $1.path }
    }

    /// A point-in-time copy of the image in the store's directory, for reading
    /// while a guest runs (the caller pauses it for the copy); remove it with `removeCopy`.
    public func copyImage() throws(StoreError) -> String {
        let path = store.directory.appendingPathComponent(".read-\(getpid())-\(UUID().uuidString).img").path
        try ImageCopy.copy(from: store.imagePath, to: path)
        return path
    }

    public func removeCopy(_ path: String) {
        guard URL(fileURLWithPath: path).deletingLastPathComponent().standardized == store.directory.standardized else { return }
        unlink(path)
    }
}
