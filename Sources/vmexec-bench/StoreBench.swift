import Foundation
import Logging
import PersistOverlay
import VMExecutor

/// The overlay store: sequential writes from inside the guest into the store
/// against the throwaway tmpfs upper (same guest image, same run), then the
/// time to snapshot a store holding 200 MB while its guest runs, and to restore it.
enum StoreBench {
    static let writeMiB = 256

    static func run(images: GuestImages, logger: Logger) async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-bench-store-\(getpid())")
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try Store.create(at: dir, size: 1 << 30, lower: try Sandbox.lower(rootfs: images.rootfs, shards: []))

        func sandbox(_ store: Store?) -> Sandbox {
            var c = SandboxConfiguration()
            c.images = images
            c.accelerator = .tcg
            c.memoryMiB = 768
            c.store = store
            return Sandbox(configuration: c, logger: logger)
        }
        /// Seconds for `dd` of writeMiB MiB with a final fsync, best of 3.
        func writeSeconds(_ s: Sandbox) async throws -> Double {
            var best = Double.infinity
            for _ in 0..<3 {
                let t = ContinuousClock.now
                let r = try await s.exec(
                    Command(["dd", "if=/dev/zero", "of=/home/vmexec/bench", "bs=1M", "count=\(writeMiB)", "conv=fsync"]))
                guard r.termination == .exited(0) else { throw Bench.Failure("dd failed: \(r.stderrText)") }
                best = min(best, Bench.seconds(ContinuousClock.now - t))
                _ = try await s.exec(Command(["rm", "/home/vmexec/bench"]))
            }
            return best
        }

        let tmpfs = sandbox(nil)
        try await tmpfs.start()
        let tmpfsSeconds = try await writeSeconds(tmpfs)
        await tmpfs.shutdown()

        let stored = sandbox(store)
        try await stored.start()
        let storeSeconds = try await writeSeconds(stored)
        Bench.emit(
            "store_write_mb_s", Double(writeMiB) * 1.048576 / storeSeconds, "MB/s",
            peer: Double(writeMiB) * 1.048576 / tmpfsSeconds, peerName: "tmpfs upper",
            note: "dd of \(writeMiB) MiB with fsync from inside the guest, best of 3")

        _ = try await stored.exec(Command(["sh", "-c", "head -c 200M /dev/zero > /home/vmexec/data"]))
        var t = ContinuousClock.now
        try await stored.snapshot("bench")
        Bench.emit(
            "store_snapshot_s", Bench.seconds(ContinuousClock.now - t), "s",
            note: "live snapshot of a store holding 200 MB: freeze, copy, thaw")
        t = ContinuousClock.now
        try await stored.restore(snapshot: "bench")
        Bench.emit(
            "store_restore_s", Bench.seconds(ContinuousClock.now - t), "s",
            note: "restore: guest shut down, image put back, guest started again")
        await stored.shutdown()
    }
}
