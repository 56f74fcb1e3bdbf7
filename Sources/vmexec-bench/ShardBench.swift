import Foundation
import SquashMounts

/// Shard creation against mksquashfs, same tree (the SDK layer's), same
/// compressor and block size, in the same run; best of three each, so that a
/// noisy neighbour costs neither side.
enum ShardBench {
    static let runs = 3

    static func run(sdkTree: URL) throws {
        let scratch = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-bench-shards-\(getpid())")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let ours = scratch.appendingPathComponent("sdk.shard").path
        let theirs = scratch.appendingPathComponent("sdk.mksquashfs").path
        let manifest = ShardManifest(name: "bench", version: "1", kind: .sdk, placement: .layer(order: 10))
        var options = SquashfsOptions()
        options.compressor = .zstd
        options.blockSize = 128 * 1024

        var oursTimes: [Double] = [], theirTimes: [Double] = []
        var shard: Shard?
        for _ in 0..<runs {
            let t = ContinuousClock.now
            shard = try ShardBuilder.create(from: sdkTree.path, to: ours, manifest: manifest, options: options)
            oursTimes.append(Bench.seconds(ContinuousClock.now - t))

            unlink(theirs)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = [
                "mksquashfs", sdkTree.path, theirs, "-comp", "zstd", "-b", "131072", "-noappend", "-quiet", "-no-progress",
            ]
            p.standardOutput = FileHandle.nullDevice
            let t2 = ContinuousClock.now
            try p.run()
            p.waitUntilExit()
            theirTimes.append(Bench.seconds(ContinuousClock.now - t2))
            guard p.terminationStatus == 0 else { throw CocoaError(.fileWriteUnknown) }
        }
        let theirSize = (try FileManager.default.attributesOfItem(atPath: theirs)[.size] as? NSNumber)?.doubleValue ?? 0
        let oursSize = Double(shard?.imageBytes ?? 0)
        Bench.emit(
            "shard_create_s", oursTimes.min()!, "s", peer: theirTimes.min()!, peerName: "mksquashfs",
            note: "SDK tree, zstd, 128 KiB blocks, best of \(runs); target: at most 1.5x the peer")
        Bench.emit(
            "shard_image_mb", oursSize / 1e6, "MB", peer: theirSize / 1e6, peerName: "mksquashfs",
            note: "the squashfs part of the shard; target: within 5% of the peer")
    }
}
