import Foundation

/// Builds shard files: from a directory, or straight from an archive.
///
/// The output appears atomically: the image is written to a temporary file
/// beside it, completed with its manifest, synced, then renamed into place,
/// so an interrupted build never leaves a half shard under the final name.
public enum ShardBuilder {
    /// Builds a shard from the tree under `directory`.
    @discardableResult
    public static func create(
        from directory: String, to output: String, manifest: ShardManifest,
        options: SquashfsOptions = SquashfsOptions()
    ) throws(ShardError) -> Shard {
        try build(to: output, manifest: manifest, options: options) { writer throws(ShardError) in
            try DirectoryImporter(root: directory).importTree(into: writer)
        }
    }

    /// Builds a shard from a tar (plain, gzip, xz, bzip2, zstd) or zip archive, without
    /// unpacking it anywhere. Entries that would land outside the shard are refused.
    @discardableResult
    public static func importArchive(
        _ archive: String, to output: String, manifest: ShardManifest,
        options: SquashfsOptions = SquashfsOptions()
    ) throws(ShardError) -> Shard {
        try build(to: output, manifest: manifest, options: options) { writer throws(ShardError) in
            try ArchiveImporter(path: archive).importEntries(into: writer)
        }
    }

    private static func build(
        to output: String, manifest: ShardManifest, options: SquashfsOptions,
        fill: (SquashfsImageWriter) throws(ShardError) -> Void
    ) throws(ShardError) -> Shard {
        try manifest.validate()
        let url = URL(fileURLWithPath: output)
        let temporary = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).\(getpid()).partial").path
        defer { unlink(temporary) }
        let rootMeta = EntryMetadata(permissions: 0o755, uid: 0, gid: 0, mtime: options.modificationTime ?? 0)
        let writer = try SquashfsImageWriter(path: temporary, options: options, rootMetadata: rootMeta)
        try fill(writer)
        let summary = try writer.finish()

        var complete = manifest
        let unsigned = Shard(
            path: temporary, manifest: complete, fileBytes: summary.bytes, imageBytes: summary.bytes, manifestSHA256: [],
            signatures: [], manifestJSON: [])
        complete.image = ShardManifest.Image(
            sha256: try unsigned.imageSHA256(), bytes: summary.bytes,
            compressor: options.compressor.rawValue, blockSize: UInt32(options.blockSize))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let json: Data
        do {
            json = try encoder.encode(complete)
        } catch {
            throw ShardError(.invalidArgument, "encoding the manifest: \(error)")
        }
        let tail = ShardFileLayout.tail(manifest: [UInt8](json), signatures: [], imageBytes: summary.bytes)
        let fd = Glibc.open(temporary, O_WRONLY | O_APPEND | O_CLOEXEC)
        guard fd >= 0 else { throw ShardError(.io, "reopening \(temporary): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var written = 0
        while written < tail.count {
            let n = tail[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ShardError(.io, "writing \(temporary): \(String(cString: strerror(errno)))") }
            written += n
        }
        guard fsync(fd) == 0, rename(temporary, output) == 0 else {
            throw ShardError(.io, "saving \(output): \(String(cString: strerror(errno)))")
        }
        return try Shard.open(output)
    }
}
