import Foundation
import PersistOverlay
import Testing

@Suite("Stores on the host")
struct StoreTests {
    let lower = StoreLower(base: "base-digest", layers: ["layer-digest"])

    func scratch() -> URL {
        URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-store-\(UUID().uuidString)")
    }

    @Test("create makes a sparse ext4 image that e2fsck passes; info reports size and use; a second create is refused")
    func create() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try Store.create(at: dir, size: 256 << 20, lower: lower)
        let info = try store.info()
        #expect(info.sizeBytes == 256 << 20)
        #expect(info.allocatedBytes < 32 << 20, "sparse: \(info.allocatedBytes) bytes allocated")
        #expect(info.usedBytes + info.freeBytes <= 256 << 20 && info.freeBytes > 150 << 20)
        #expect(info.holder == nil)
        #expect(try Store.open(at: dir).lower() == lower)
        let fsck = try runTool(["e2fsck", "-n", "-f", store.image])
        #expect(fsck.status == 0, "\(fsck.output)")
        #expect(throws: StoreError.self) { try Store.create(at: dir, lower: lower) }
        #expect(throws: StoreError.self) { try Store.create(at: scratch(), size: 1 << 20, lower: lower) }
        #expect(throws: StoreError.self) { try Store.open(at: scratch()) }
    }

    @Test("one holder at a time, named to the next; the lock goes with its holder")
    func lock() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try Store.create(at: dir, size: 128 << 20, lower: lower)
        let first = try store.lock(holder: "the first guest")
        let error = try #require(throws: StoreError.self) { try store.lock(holder: "the second guest") }
        #expect(error.code == .locked)
        #expect(error.message.contains("the first guest") && error.message.contains("pid \(getpid())"), "\(error)")
        #expect(try store.info().holder?.contains("the first guest") == true)
        first.release()
        let second = try store.lock(holder: "the second guest")
        second.release()
    }

    @Test("a different lower is refused unless allowed, and then recorded")
    func lowerChange() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(at: dir) }
        let lease = try Store.create(at: dir, size: 128 << 20, lower: lower).lock(holder: "test")
        try lease.checkLower(lower, allowChange: false)
        let other = StoreLower(base: "new-base", layers: [])
        let error = try #require(throws: StoreError.self) { try lease.checkLower(other, allowChange: false) }
        #expect(error.code == .lowerChanged)
        #expect(error.message.contains("allowLowerChange"))
        try lease.checkLower(other, allowChange: true)
        #expect(try lease.store.lower() == other)
    }

    @Test("grow keeps the file system and its content; snapshots copy, restore and delete; reset empties")
    func growSnapshotReset() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(at: dir) }
        let lease = try Store.create(at: dir, size: 128 << 20, lower: lower).lock(holder: "test")
        let image = lease.store.image
        // Write a file into the image with debugfs, as a guest would have.
        let file = dir.appendingPathComponent("note.txt")
        try Data("kept\n".utf8).write(to: file)
        // On the disk before debugfs reads it: debugfs copies by SEEK_DATA, and a file
        // whose blocks are still delayed in the page cache can read as one hole (CI saw
        // an empty note.txt once).
        let handle = try FileHandle(forWritingTo: file)
        try handle.synchronize()
        try handle.close()
        let wrote = try runTool(["debugfs", "-w", "-R", "write \(file.path) note.txt", image])
        // debugfs exits 0 even when its command fails: read the file back to know it is there.
        let written = try runTool(["debugfs", "-R", "cat note.txt", image])
        try #require(wrote.status == 0 && written.output.contains("kept"), "debugfs: \(wrote.output) \(written.output)")
        try lease.createSnapshot("before")
        let inSnapshot = try runTool(["debugfs", "-R", "cat note.txt", dir.appendingPathComponent("snapshots/before.img").path])
        #expect(inSnapshot.output.contains("kept"), "the snapshot holds the file: \(inSnapshot.output)")
        #expect(try lease.snapshots().first!.allocatedBytes < 48 << 20, "the copy of a sparse image stays sparse")
        #expect(throws: StoreError.self) { try lease.createSnapshot("before") }
        #expect(throws: StoreError.self) { try lease.createSnapshot("../evil") }
        #expect(try runTool(["debugfs", "-w", "-R", "rm note.txt", image]).status == 0)
        try lease.grow(to: 256 << 20)
        #expect(try lease.store.info().sizeBytes == 256 << 20)
        #expect(try lease.store.info().freeBytes > 200 << 20)
        #expect(!(try runTool(["debugfs", "-R", "cat note.txt", image]).output.contains("kept")))
        try lease.restoreSnapshot("before")
        let restored = try runTool(["debugfs", "-R", "cat note.txt", image])
        #expect(restored.output.contains("kept"), "after restore: \(restored.output)")
        #expect(try lease.snapshots().map(\.name) == ["before"])
        try lease.deleteSnapshot("before")
        #expect(try lease.snapshots().isEmpty)
        #expect(throws: StoreError.self) { try lease.restoreSnapshot("before") }
        try lease.reset()
        #expect(!(try runTool(["debugfs", "-R", "cat note.txt", image]).output.contains("kept")))
        #expect(try runTool(["e2fsck", "-n", "-f", image]).status == 0)
    }

    @Test("an image the guest made hostile (a directory loop) is refused by diff and export, not followed")
    func directoryLoop() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(at: dir) }
        let lease = try Store.create(at: dir, size: 128 << 20, lower: lower).lock(holder: "test")
        for command in ["mkdir upper", "mkdir upper/a", "ln upper/a upper/a/loop"] {
            #expect(try runTool(["debugfs", "-w", "-R", command, lease.store.image]).status == 0)
        }
        let error = try #require(throws: StoreError.self) { try lease.diff { _ in false } }
        #expect(error.message.contains("loop"), "\(error)")
        #expect(throws: StoreError.self) { try lease.export("/", to: dir.appendingPathComponent("x.tar").path) }
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("x.tar").path))
    }

    @Test(
        "sizes parse with binary units; garbage is refused",
        arguments: [("2G", UInt64(2) << 30), ("512M", 512 << 20), ("1.5G", 3 << 29), ("4096", 4096), ("64MiB", 64 << 20)])
    func sizes(text: String, bytes: UInt64) throws {
        #expect(try Store.parseSize(text) == bytes)
        #expect(throws: StoreError.self) { try Store.parseSize("lots") }
    }
}

/// A host tool's status and output (through HostTool: Foundation's Process is not safe to start from parallel tests).
@discardableResult
func runTool(_ arguments: [String]) throws -> (status: Int32, output: String) {
    let outcome = try HostTool.run(arguments)
    return (outcome.status, outcome.output)
}
