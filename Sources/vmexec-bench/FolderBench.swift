import Foundation
import Logging
import PersistOverlay
import SquashMounts
import VMExecutor

/// A host folder (virtiofs) beside the store and a shard, in one guest of
/// the same run: sequential reads of the same 128 MiB file from each (the
/// guest's page cache dropped before each), and `dd` writes with fsync into
/// the folder and the store. Best of 3 each.
enum FolderBench {
    static let mib = 128

    static func run(images: GuestImages, logger: Logger) async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-bench-folder-\(getpid())")
        defer { try? FileManager.default.removeItem(at: dir) }
        let folder = dir.appendingPathComponent("folder")
        let tree = dir.appendingPathComponent("tree")
        for d in [folder, tree] { try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true) }
        // Random bytes: compression must not flatter the shard.
        var bytes = [UInt8](repeating: 0, count: mib << 20)
        for i in stride(from: 0, to: bytes.count, by: 8) {
            withUnsafeBytes(of: UInt64.random(in: 0...UInt64.max)) { bytes.replaceSubrange(i..<i + 8, with: $0) }
        }
        try Data(bytes).write(to: folder.appendingPathComponent("big"))
        try Data(bytes).write(to: tree.appendingPathComponent("big"))
        let shard = try ShardBuilder.create(
            from: tree.path, to: dir.appendingPathComponent("data.shard").path,
            manifest: ShardManifest(name: "benchdata", version: "1", kind: .data, placement: .mount("/opt/benchdata")),
            options: SquashfsOptions())
        let store = try Store.create(
            at: dir.appendingPathComponent("store"), size: 1 << 30,
            lower: try Sandbox.lower(rootfs: images.rootfs, shards: [shard]))

        var c = SandboxConfiguration()
        c.images = images
        c.accelerator = .tcg
        c.memoryMiB = 768
        c.store = store
        c.shards = [shard]
        c.folders = [HostFolder(hostPath: folder.path, guestPath: "/hostdir", mode: .readWrite)]
        let guest = Sandbox(configuration: c, logger: logger)
        try await guest.start()
        defer { Task { await guest.shutdown() } }
        _ = try await guest.exec(Command(["cp", "/opt/benchdata/big", "/home/vmexec/big"]))

        /// MB/s of `script` run in the guest (as root, to drop the caches first), best of 3.
        func rate(_ script: String) async throws -> Double {
            var best = Double.infinity
            for _ in 0..<3 {
                var drop = Command(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
                drop.user = .root
                _ = try await guest.exec(drop)
                let t = ContinuousClock.now
                let r = try await guest.exec(Command(["sh", "-c", script]))
                guard r.termination == .exited(0) else { throw Bench.Failure("\(script): \(r.stderrText)") }
                best = min(best, Bench.seconds(ContinuousClock.now - t))
            }
            return Double(mib) * 1.048576 / best
        }
        let readFolder = try await rate("cat /hostdir/big > /dev/null")
        let readStore = try await rate("cat /home/vmexec/big > /dev/null")
        let readShard = try await rate("cat /opt/benchdata/big > /dev/null")
        let write = "dd if=/dev/zero bs=1M count=\(mib) conv=fsync status=none of="
        let writeFolder = try await rate(write + "/hostdir/w && rm /hostdir/w")
        let writeStore = try await rate(write + "/home/vmexec/w && rm /home/vmexec/w")
        Bench.emit(
            "hostdir_read_mb_s", readFolder, "MB/s", peer: readStore, peerName: "store",
            note:
                "a \(mib) MiB file read in the guest from a host folder (virtiofs) and from the store, page cache dropped, best of 3; a shard: \((readShard * 10).rounded() / 10) MB/s"
        )
        Bench.emit(
            "hostdir_write_mb_s", writeFolder, "MB/s", peer: writeStore, peerName: "store",
            note: "dd of \(mib) MiB with fsync into a read-write host folder and into the store, best of 3")
        Bench.emit("shard_read_mb_s", readShard, "MB/s", note: "the same file read from a data shard (squashfs, zstd)")
    }
}
