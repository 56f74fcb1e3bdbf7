import Foundation
import SerialChannel
import SquashMounts

/// A shard as a drive of one guest: the serial the init finds it by.
struct ShardAttachment: Sendable {
    let shard: Shard
    let serial: String

    var isLayer: Bool {
        if case .layer = shard.manifest.placement { return true }
        return false
    }

    /// The shard's file as a read-only disk.
    var disk: MachineDisk { MachineDisk(serial: serial, file: shard.path, readOnly: true) }
}
