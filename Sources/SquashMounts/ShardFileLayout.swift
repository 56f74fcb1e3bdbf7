import Crypto
import Foundation

/// How a shard file is laid out on disk:
///
/// ```
/// [ squashfs image, padded to 4 KiB ][ manifest (JSON) ][ signatures ][ zeros ][ footer, 64 bytes ]
/// ```
///
/// The whole file is a multiple of 4 KiB, so it attaches as a disk as it is;
/// the kernel and every squashfs tool read the image and ignore what follows
/// `bytes_used`. The manifest carries the sha256 of the image part, which
/// therefore cannot hold the manifest itself; the footer carries the sha256
/// of the manifest, and the padding must be zeros, so that no byte of the
/// file can change unnoticed. The footer (little-endian):
/// `"VMXSHARD" | u32 layout | u32 manifest length | u64 image bytes | u64 manifest offset | sha256(manifest)`.
///
/// Layout 1 has no signatures. Layout 2 has a signature block right after the
/// manifest: `"VMXSIGS1" | u32 count | count × (32-byte Ed25519 public key | 64-byte signature)`
/// (see `ShardSignature`). Signing rewrites only what follows the image.
enum ShardFileLayout {
    static let magic: [UInt8] = Array("VMXSHARD".utf8)
    static let footerSize = 64
    static let alignment: UInt64 = 4096
    /// A manifest is small; a footer claiming more is damage, not a manifest.
    static let maxManifestBytes: UInt32 = 1 << 20

    struct Footer: Equatable {
        /// 1: no signatures; 2: a signature block follows the manifest.
        var layout: UInt32 = 1
        var imageBytes: UInt64
        var manifestOffset: UInt64
        var manifestLength: UInt32
        var manifestSHA256: [UInt8]
    }

    static func digest(_ manifest: some DataProtocol) -> [UInt8] { Array(SHA256.hash(data: manifest)) }

    static func encode(_ footer: Footer) -> [UInt8] {
        var out = magic
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put(footer.layout)
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
        let layout = get(8, UInt32.self)
        guard layout == 1 || layout == 2 else {
            throw notShard("shard layout \(layout) is unknown to this vmexec; update vmexec")
        }
        let footer = Footer(
            layout: layout, imageBytes: get(16, UInt64.self), manifestOffset: get(24, UInt64.self),
            manifestLength: get(12, UInt32.self), manifestSHA256: Array(bytes[32...]))
        guard footer.imageBytes >= 96, footer.imageBytes % alignment == 0,
            footer.manifestOffset == footer.imageBytes,
            footer.manifestLength > 0, footer.manifestLength <= maxManifestBytes,
            footer.manifestOffset + UInt64(footer.manifestLength) + UInt64(footerSize) <= fileSize
        else { throw notShard("its footer's offsets do not fit the file: damaged?") }
        return footer
    }

    /// Where the footer starts for a manifest and signature block of `length` bytes after an image of `imageBytes`.
    static func footerOffset(imageBytes: UInt64, manifestLength: Int) -> UInt64 {
        let end = imageBytes + UInt64(manifestLength) + UInt64(footerSize)
        let padded = (end + alignment - 1) / alignment * alignment
        return padded - UInt64(footerSize)
    }

    static let signatureMagic: [UInt8] = Array("VMXSIGS1".utf8)
    /// A shard carries a few signatures (one per signer); more is damage.
    static let maxSignatures = 16

    /// Everything after the image: manifest, signature block (when signed), zeros, footer.
    static func tail(manifest json: [UInt8], signatures: [ShardSignature], imageBytes: UInt64) -> [UInt8] {
        var tail = json
        if !signatures.isEmpty {
            tail += signatureMagic
            withUnsafeBytes(of: UInt32(signatures.count).littleEndian) { tail.append(contentsOf: $0) }
            for s in signatures { tail += s.publicKey + s.signature }
        }
        let footerAt = footerOffset(imageBytes: imageBytes, manifestLength: tail.count)
        tail += [UInt8](repeating: 0, count: Int(footerAt - imageBytes) - tail.count)
        tail += encode(
            Footer(
                layout: signatures.isEmpty ? 1 : 2, imageBytes: imageBytes, manifestOffset: imageBytes,
                manifestLength: UInt32(json.count), manifestSHA256: digest(json)))
        return tail
    }

    /// The signature block at the start of `bytes` (what follows the manifest up to the footer),
    /// and checks that only zeros follow it. Nil when `bytes` is not a well-formed block.
    static func signatures(in bytes: [UInt8]) -> [ShardSignature]? {
        guard bytes.count >= 12, Array(bytes.prefix(8)) == signatureMagic else { return nil }
        let count = Int(bytes[8..<12].reversed().reduce(UInt32(0)) { ($0 << 8) | UInt32($1) })
        let end = 12 + count * 96
        guard (1...maxSignatures).contains(count), bytes.count >= end, bytes[end...].allSatisfy({ $0 == 0 }) else {
            return nil
        }
        return (0..<count).map { i in
            let at = 12 + i * 96
            return ShardSignature(publicKey: Array(bytes[at..<at + 32]), signature: Array(bytes[at + 32..<at + 96]))
        }
    }
}
