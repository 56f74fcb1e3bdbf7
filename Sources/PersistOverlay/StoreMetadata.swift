import Foundation

/// What the guest's root lies over: the base image and the layer shards, each
/// named by an identity string the caller computes (a content digest). An
/// upper layer written over one lower can lie over another (a file deleted in
/// the new base, a whiteout hiding a new one), so a store remembers its lower.
public struct StoreLower: Codable, Sendable, Equatable, CustomStringConvertible {
    public var base: String
    public var layers: [String]

    public init(base: String, layers: [String]) {
        self.base = base
        self.layers = layers
    }

    public var description: String {
        "base \(base.prefix(16))"
            + (layers.isEmpty ? "" : " + layers " + layers.map { String($0.prefix(16)) }.joined(separator: ", "))
    }
}

/// A snapshot: a copy of the store's image at one moment.
public struct SnapshotInfo: Codable, Sendable, Equatable {
    public var name: String
    public var created: Date
    /// Bytes the copy occupies on the host (less where blocks are shared or sparse).
    public var allocatedBytes: UInt64
}

/// `store.json`: the store's own description, beside its image.
struct StoreMetadata: Codable, Sendable, Equatable {
    var format = 1
    var sizeBytes: UInt64
    var created: Date
    var lower: StoreLower
    var snapshots: [SnapshotInfo] = []
}
