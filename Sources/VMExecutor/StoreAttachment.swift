import Crypto
import Foundation
import PersistOverlay
import SerialChannel
import SquashMounts

/// The overlay store as a drive of one guest: hot-plugged writable after
/// boot (like shards, so the saved boot state serves every store), then
/// taken on by the init as the root's upper layer.
enum StoreAttachment {
    static let serial = "vxstore"

    /// What the guest's root lies over, as the store records it: the base
    /// image and the layer shards (bottom first), each by a content digest.
    static func lower(rootfs: URL, shards: [Shard]) throws -> StoreLower {
        StoreLower(
            base: try baseIdentity(rootfs), layers: ShardSet.layers(shards).map { $0.manifest.image?.sha256 ?? $0.manifest.name })
    }

    /// sha256 over the base image's size, first and last 64 KiB: its squashfs
    /// superblock and tables, which change whenever the image is rebuilt, read
    /// without hashing the whole image at every start.
    static func baseIdentity(_ rootfs: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: rootfs)
        defer { try? handle.close() }
        let size = try handle.seekToEnd()
        var hasher = SHA256()
        withUnsafeBytes(of: size.littleEndian) { hasher.update(bufferPointer: $0) }
        try handle.seek(toOffset: 0)
        hasher.update(data: try handle.read(upToCount: 65536) ?? Data())
        try handle.seek(toOffset: size > 65536 ? size - 65536 : 0)
        hasher.update(data: try handle.read(upToCount: 65536) ?? Data())
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// The store image as a writable disk. Guest flushes (SYNC, fsync in the
    /// guest) must reach the host's file: every ``GuestMachine`` promises that.
    static func disk(image: String) -> MachineDisk { MachineDisk(serial: serial, file: image, readOnly: false) }
}
