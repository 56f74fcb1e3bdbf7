import Crypto
import Foundation

/// How a shard file is laid out on disk:
///
/// ```
/// [ squashfs image, padded to 4 KiB ][ manifest (JSON) ][ zeros ][ footer, 64 bytes ]
/// ```
///
/// The whole file is a multiple of 4 KiB, so it attaches as a disk as it is;
/// the kernel and every squashfs tool read the image and ignore what follows
/// `bytes_used`. The manifest carries the sha256 of the image part, which
/// therefore cannot hold the manifest itself; the footer carries the sha256
/// of the manifest, and the padding must be zeros, so that no byte of the
/// file can change unnoticed. The footer (little-endian):
/// `"VMXSHARD" | u32 layout 1 | u32 manifest length | u64 image bytes | u64 manifest offset | sha256(manifest)`.
enum ShardFileLayout {
    static let magic: [UInt8] = Array("VMXSHARD".utf8)
    static let footerSize = 64
    static let alignment: UInt64 = 4096
    /// A manifest is small; a footer claiming more is damage, not a manifest.
    static let maxManifestBytes: UInt32 = 1 << 20

    struct Footer: Equatable {
        var imageBytes: UInt64
        var manifestOffset: UInt64
        var manifestLength: UInt32
        var manifestSHA256: [UInt8]
    }

    static func digest(_ manifest: some DataProtocol) -> [UInt8] { Array(SHA256.hash(data: manifest)) }

    static func encode(_ footer: Footer) -> [UInt8] {
        var out = magic
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put(UInt32(1))
        put(footer.manifestLength)
        put(footer.imageBytes)
        put(footer.manifestOffset)
        out.append(contentsOf: footer.manifestSHA256)
        precondition(out.count == footerSize)
        return out
    }

    static func decode(_ bytes: [UInt8], fileSize: UInt64, path: String) throws(ShardError) -> Footer {
        func notShard(_ why: String) -> ShardError {
            ShardError(
                .notAShard,
                "\(path) is not a vmexec shard (\(why)); build shards with `vmexec shard create` or `vmexec shard import`")
        }
        guard bytes.count == footerSize, Array(bytes.prefix(8)) == magic else { throw notShard("no shard footer at its end") }
        func get<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T {
            bytes[at..<at + MemoryLayout<T>.size].reversed().reduce(T(0)) { ($0 << 8) | T($1) }
        }
        guard get(8, UInt32.self) == 1 else { throw notShard("shard layout \(get(8, UInt32.self)) is unknown to this vmexec") }
        let footer = Footer(
            imageBytes: get(16, UInt64.self), manifestOffset: get(24, UInt64.self),
            manifestLength: get(12, UInt32.self), manifestSHA256: Array(bytes[32...]))
        guard footer.imageBytes >= 96, footer.imageBytes % alignment == 0,
            footer.manifestOffset == footer.imageBytes,
            footer.manifestLength > 0, footer.manifestLength <= maxManifestBytes,
            footer.manifestOffset + UInt64(footer.manifestLength) + UInt64(footerSize) <= fileSize
        else { throw notShard("its footer's offsets do not fit the file: damaged?") }
        return footer
    }

    /// Where the footer starts for a manifest of `length` bytes after an image of `imageBytes`.
    static func footerOffset(imageBytes: UInt64, manifestLength: Int) -> UInt64 {
        let end = imageBytes + UInt64(manifestLength) + UInt64(footerSize)
        let padded = (end + alignment - 1) / alignment * alignment
        return padded - UInt64(footerSize)
    }
}
