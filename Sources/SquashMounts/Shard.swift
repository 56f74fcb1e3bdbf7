import Crypto
import Foundation

/// A shard file: a read-only squashfs image with its manifest (see `ShardFileLayout`).
///
/// `Shard.open` reads only the footer and the manifest; `verify` checks the
/// image against the manifest and reads every table before anything attaches it.
public struct Shard: Sendable, Equatable {
    public let path: String
    public let manifest: ShardManifest
    /// Size of the whole file.
    public let fileBytes: UInt64
    /// Bytes of the squashfs image at the file's start.
    public let imageBytes: UInt64
    /// sha256 of the manifest's bytes: what a signature signs (and the image's sha256 is in the manifest).
    public let manifestSHA256: [UInt8]
    /// Ed25519 signatures of the manifest carried in the file, unchecked: see `ShardSignature.check`.
    public let signatures: [ShardSignature]
    /// The manifest's bytes as stored (what its sha256 covers).
    let manifestJSON: [UInt8]

    /// What `inspect` shows.
    public struct Inspection: Codable, Sendable {
        public var path: String
        public var fileBytes: UInt64
        public var manifest: ShardManifest
        public var squashfs: SquashfsFacts
        public var entries: [ShardEntry]
    }

    /// What `verify` checked.
    public struct Verification: Codable, Sendable {
        public var path: String
        public var name: String
        public var version: String
        public var sha256: String
        public var checks: [String]
    }

    /// Reads the footer and the manifest of the shard at `path`.
    public static func open(_ path: String) throws(ShardError) -> Shard {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            let why = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist"
            throw ShardError(.io, "shard \(path) \(why)")
        }
        defer { try? handle.close() }
        do {
            let size = try handle.seekToEnd()
            guard size >= UInt64(ShardFileLayout.footerSize) else {
                throw ShardError(.notAShard, "\(path) is not a vmexec shard (only \(size) bytes)")
            }
            try handle.seek(toOffset: size - UInt64(ShardFileLayout.footerSize))
            let footerBytes = [UInt8](try handle.read(upToCount: ShardFileLayout.footerSize) ?? Data())
            let footer = try ShardFileLayout.decode(footerBytes, fileSize: size, path: path)
            try handle.seek(toOffset: footer.manifestOffset)
            let json = try handle.read(upToCount: Int(footer.manifestLength)) ?? Data()
            let restBytes = Int(size - UInt64(ShardFileLayout.footerSize) - footer.manifestOffset) - json.count
            let rest = [UInt8](try handle.read(upToCount: max(0, restBytes)) ?? Data())
            guard json.count == Int(footer.manifestLength), ShardFileLayout.digest(json) == footer.manifestSHA256,
                rest.count == restBytes
            else {
                throw ShardError(
                    .checksumMismatch,
                    "\(path): its manifest or the bytes around it changed since it was built; the file is damaged, copy it again")
            }
            var signatures: [ShardSignature] = []
            if footer.layout == 2 {
                guard let found = ShardFileLayout.signatures(in: rest) else {
                    throw ShardError(
                        .checksumMismatch, "\(path): its signature block is damaged; copy the file again, or sign it again")
                }
                signatures = found
            } else if !rest.allSatisfy({ $0 == 0 }) {
                throw ShardError(
                    .checksumMismatch,
                    "\(path): the bytes between its manifest and its footer changed since it was built; the file is damaged, copy it again"
                )
            }
            let manifest: ShardManifest
            do {
                manifest = try JSONDecoder().decode(ShardManifest.self, from: json)
            } catch {
                throw ShardError(.notAShard, "\(path): its manifest is unreadable (\(error)); the file is damaged")
            }
            do {
                try manifest.validate()
            } catch {
                throw ShardError(.notAShard, "\(path): \(error.message)")
            }
            guard let image = manifest.image, image.bytes == footer.imageBytes else {
                throw ShardError(.notAShard, "\(path): its manifest does not describe its image; the file is damaged")
            }
            return Shard(
                path: path, manifest: manifest, fileBytes: size, imageBytes: footer.imageBytes,
                manifestSHA256: footer.manifestSHA256, signatures: signatures, manifestJSON: [UInt8](json))
        } catch let error as ShardError {
            throw error
        } catch {
            throw ShardError(.io, "reading \(path): \(error)")
        }
    }

    /// "name version (file)": how errors and logs name a shard.
    public var label: String { "\(manifest.name) \(manifest.version) (\(path))" }

    /// sha256 of the image part of the file.
    public func imageSHA256() throws(ShardError) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw ShardError(.io, "cannot read \(path)") }
        defer { try? handle.close() }
        var hasher = SHA256()
        var left = imageBytes
        do {
            while left > 0 {
                guard let chunk = try handle.read(upToCount: Int(min(left, 4 << 20))), !chunk.isEmpty else {
                    throw ShardError(.corrupt, "shard \(label) is shorter than its manifest says")
                }
                hasher.update(data: chunk)
                left -= UInt64(chunk.count)
            }
        } catch let error as ShardError {
            throw error
        } catch {
            throw ShardError(.io, "reading \(path): \(error)")
        }
        return hasher.finalize().hex
    }

    /// Checks the shard before it is attached: its sha256 against its manifest,
    /// then a sane superblock, and every table readable; with `deep`, also every
    /// file's data.
    @discardableResult
    public func verify(deep: Bool = true) throws(ShardError) -> Verification {
        var checks: [String] = []
        let expected = manifest.image?.sha256 ?? ""
        let actual = try imageSHA256()
        guard actual == expected else {
            throw ShardError(
                .checksumMismatch,
                "shard \(label) is damaged: its image's sha256 is \(actual), its manifest says \(expected); copy it again")
        }
        checks.append("sha256 matches the manifest")
        let reader: SquashfsImageReader
        do throws(ShardError) {
            reader = try SquashfsImageReader(path: path, imageBytes: imageBytes)
        } catch {
            throw ShardError(error.code, "shard \(label): \(error.message)")
        }
        checks.append("superblock, compressor options, id and fragment tables")
        let facts = reader.facts
        guard facts.compressor == manifest.image?.compressor, facts.blockSize == manifest.image?.blockSize else {
            throw ShardError(
                .corrupt, "shard \(label): its superblock (\(facts.compressor), \(facts.blockSize)) disagrees with its manifest")
        }
        do throws(ShardError) {
            try reader.checkXattrTable()
            if facts.hasXattrs { checks.append("xattr table") }
            var inodes = Set<UInt32>()
            try reader.walk { path, node throws(ShardError) in
                let entry = try reader.entry(path, node, hash: deep)
                inodes.insert(entry.inode)
            }
            checks.append("directory and inode tables (\(inodes.count) inodes)")
            guard inodes.count == Int(facts.inodeCount) else {
                throw ShardError(.corrupt, "the tree holds \(inodes.count) inodes, the superblock says \(facts.inodeCount)")
            }
            if deep { checks.append("every file's data") }
        } catch {
            throw ShardError(error.code, "shard \(label): \(error.message)")
        }
        return Verification(path: path, name: manifest.name, version: manifest.version, sha256: actual, checks: checks)
    }

    /// Superblock facts, the manifest and the file list (with content hashes when `hashes`).
    public func inspect(hashes: Bool = false) throws(ShardError) -> Inspection {
        let reader = try SquashfsImageReader(path: path, imageBytes: imageBytes)
        var entries: [ShardEntry] = []
        try reader.walk { path, node throws(ShardError) in entries.append(try reader.entry(path, node, hash: hashes)) }
        return Inspection(path: path, fileBytes: fileBytes, manifest: manifest, squashfs: reader.facts, entries: entries)
    }

    /// Streams the content of the regular file at `filePath` (absolute inside the shard) to `sink`.
    public func readFile(_ filePath: String, into sink: (UnsafeRawBufferPointer) throws(ShardError) -> Void) throws(ShardError) {
        let reader = try SquashfsImageReader(path: path, imageBytes: imageBytes)
        var found = false
        let wanted = filePath.hasPrefix("/") ? filePath : "/" + filePath
        try reader.walk { path, node throws(ShardError) in
            guard path == wanted else { return }
            let entry = try reader.entry(path, node, hash: false)
            guard entry.type == .file else {
                throw ShardError(.notFound, "\(wanted) in shard \(label) is a \(entry.type), not a file")
            }
            found = true
            try reader.read(node.pointee.inode!, path: path, into: sink)
        }
        guard found else { throw ShardError(.notFound, "shard \(label) has no file \(wanted)") }
    }
}

extension Shard {
    /// Every path in the shard's tree (`/` and below).
    public func paths() throws(ShardError) -> Set<String> {
        try Self.paths(ofSquashfsImage: path, imageBytes: imageBytes)
    }

    /// Every path in a plain squashfs image (such as the base root file system).
    public static func paths(ofSquashfsImage path: String, imageBytes: UInt64? = nil) throws(ShardError) -> Set<String> {
        var st = stat()
        guard stat(path, &st) == 0 else { throw ShardError(.io, "\(path): \(String(cString: strerror(errno)))") }
        let reader = try SquashfsImageReader(path: path, imageBytes: imageBytes ?? UInt64(st.st_size))
        var paths = Set<String>()
        try reader.walk { path, _ throws(ShardError) in paths.insert(path) }
        return paths
    }
}
