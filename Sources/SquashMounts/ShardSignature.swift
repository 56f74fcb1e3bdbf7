import Crypto
import Foundation

/// An Ed25519 signature of a shard's manifest, carried in the shard file (see `ShardFileLayout`).
///
/// It signs the manifest's sha256, and the manifest holds the image's sha256,
/// so one signature vouches for every byte that reaches a guest: name, kind,
/// placement, environment, and the image. Checking a signature is cheap (no
/// image read); `Shard.verify` then checks the image against the manifest.
public struct ShardSignature: Sendable, Equatable {
    /// The signer's raw 32-byte Ed25519 public key.
    public var publicKey: [UInt8]
    /// 64 bytes.
    public var signature: [UInt8]

    public init(publicKey: [UInt8], signature: [UInt8]) {
        self.publicKey = publicKey
        self.signature = signature
    }

    /// How people name the signer's key: the first 16 hex digits of its sha256.
    public var fingerprint: String { ShardPublicKey.fingerprint(of: publicKey) }

    /// What is signed: a fixed context, then the manifest's sha256. The context keeps
    /// a shard signature from being valid as a signature of anything else made with the key.
    static func message(manifestSHA256: [UInt8]) -> [UInt8] {
        Array("vmexec shard manifest v1\0".utf8) + manifestSHA256
    }

    /// Is this a valid signature of `shard`'s manifest by its key?
    public func isValid(for shard: Shard) -> Bool {
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: publicKey) else { return false }
        return key.isValidSignature(signature, for: Self.message(manifestSHA256: shard.manifestSHA256))
    }
}

/// An Ed25519 public key as a file (`NAME.pub`): one line `vmexec-ed25519 BASE64 NAME`.
public struct ShardPublicKey: Sendable, Equatable, Codable {
    /// Raw 32 bytes.
    public var raw: [UInt8]
    /// The name it was made with (a comment: trust is in the bytes).
    public var name: String

    public init(raw: [UInt8], name: String) {
        self.raw = raw
        self.name = name
    }

    public var fingerprint: String { Self.fingerprint(of: raw) }

    static func fingerprint(of raw: [UInt8]) -> String { String(SHA256.hash(data: raw).hex.prefix(16)) }

    static let tag = "vmexec-ed25519"

    public var fileText: String { "\(Self.tag) \(Data(raw).base64EncodedString()) \(name)\n" }

    /// Reads a public key file.
    public static func load(_ path: String) throws(ShardError) -> ShardPublicKey {
        let text = try readKeyFile(path)
        let fields = text.split(whereSeparator: \.isWhitespace).map(String.init)
        guard fields.count >= 2, fields[0] == tag, let data = Data(base64Encoded: fields[1]), data.count == 32,
            (try? Curve25519.Signing.PublicKey(rawRepresentation: data)) != nil
        else {
            throw ShardError(
                .invalidArgument,
                "\(path) is not a vmexec public key (a line '\(tag) BASE64 NAME', as `vmexec keygen` writes to NAME.pub)")
        }
        return ShardPublicKey(raw: [UInt8](data), name: fields.count > 2 ? fields[2] : "")
    }
}

/// An Ed25519 private key as a file (`NAME.key`, mode 0600): one line `vmexec-ed25519-private BASE64 NAME`.
public struct ShardSigningKey: Sendable {
    /// The raw 32-byte seed (Crypto's key type is not `Sendable`).
    private let seed: Data
    public let name: String
    var key: Curve25519.Signing.PrivateKey { try! Curve25519.Signing.PrivateKey(rawRepresentation: seed) }

    /// A new random key pair.
    public init(name: String) {
        seed = Curve25519.Signing.PrivateKey().rawRepresentation
        self.name = name
    }

    public var publicKey: ShardPublicKey { ShardPublicKey(raw: [UInt8](key.publicKey.rawRepresentation), name: name) }

    static let tag = "vmexec-ed25519-private"

    /// Writes `NAME.key` (0600) and `NAME.pub` (0644) for `base` = `NAME`; refuses to overwrite either.
    public func save(base: String) throws(ShardError) {
        let line = "\(Self.tag) \(key.rawRepresentation.base64EncodedString()) \(name)\n"
        try writeNewFile(base + ".key", line, mode: 0o600)
        try writeNewFile(base + ".pub", publicKey.fileText, mode: 0o644)
    }

    /// Reads a private key file; refuses one that others may read, as ssh does.
    public static func load(_ path: String) throws(ShardError) -> ShardSigningKey {
        var st = stat()
        if stat(path, &st) == 0, st.st_mode & 0o077 != 0 {
            throw ShardError(
                .invalidArgument,
                "\(path) is a private key that others may read (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it, or make a new key: whoever read it can sign as you"
            )
        }
        let text = try readKeyFile(path)
        let fields = text.split(whereSeparator: \.isWhitespace).map(String.init)
        guard fields.count >= 2, fields[0] == tag, let data = Data(base64Encoded: fields[1]),
            let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: data)
        else {
            throw ShardError(
                .invalidArgument,
                "\(path) is not a vmexec private key (as `vmexec keygen -o NAME` writes to NAME.key; NAME.pub is the public half)"
            )
        }
        return ShardSigningKey(key: key, name: fields.count > 2 ? fields[2] : "")
    }

    private init(key: Curve25519.Signing.PrivateKey, name: String) {
        seed = key.rawRepresentation
        self.name = name
    }

    func sign(manifestSHA256: [UInt8]) throws(ShardError) -> ShardSignature {
        do {
            let signature = try key.signature(for: ShardSignature.message(manifestSHA256: manifestSHA256))
            return ShardSignature(publicKey: publicKey.raw, signature: [UInt8](signature))
        } catch {
            throw ShardError(.io, "signing failed: \(error)")
        }
    }
}

/// Adds signatures to shard files.
public enum ShardSigner {
    /// Signs the shard at `path` with `key`, replacing an earlier signature by the
    /// same key and keeping others. The file is rewritten beside itself and renamed
    /// into place, so a reader never sees half a signature. The image is checked
    /// against the manifest first: a signature must never vouch for a damaged image.
    @discardableResult
    public static func sign(_ path: String, with key: ShardSigningKey) throws(ShardError) -> Shard {
        let shard = try Shard.open(path)
        try shard.verify(deep: false)
        let signature = try key.sign(manifestSHA256: shard.manifestSHA256)
        let signatures = shard.signatures.filter { $0.publicKey != signature.publicKey } + [signature]
        guard signatures.count <= ShardFileLayout.maxSignatures else {
            throw ShardError(.invalidArgument, "shard \(shard.label) already carries \(shard.signatures.count) signatures")
        }
        let tail = ShardFileLayout.tail(manifest: shard.manifestJSON, signatures: signatures, imageBytes: shard.imageBytes)
        let temporary = path + ".\(getpid()).signing"
        defer { unlink(temporary) }
        try ShardFileCopy.copyPrefix(of: path, bytes: shard.imageBytes, to: temporary, then: tail)
        guard rename(temporary, path) == 0 else {
            throw ShardError(.io, "replacing \(path): \(String(cString: strerror(errno)))")
        }
        return try Shard.open(path)
    }
}

private func readKeyFile(_ path: String) throws(ShardError) -> String {
    guard let data = FileManager.default.contents(atPath: path), data.count < 4096,
        let text = String(data: data, encoding: .utf8)
    else {
        let why = FileManager.default.fileExists(atPath: path) ? "cannot be read as a key" : "does not exist"
        throw ShardError(.io, "key file \(path) \(why)")
    }
    return text
}

private func writeNewFile(_ path: String, _ text: String, mode: mode_t) throws(ShardError) {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    guard fd >= 0 else {
        let why = errno == EEXIST ? "exists already; a key is never overwritten" : String(cString: strerror(errno))
        throw ShardError(.io, "\(path) \(why)")
    }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    guard write(fd, bytes, bytes.count) == bytes.count, fchmod(fd, mode) == 0, fsync(fd) == 0 else {
        throw ShardError(.io, "writing \(path): \(String(cString: strerror(errno)))")
    }
}
