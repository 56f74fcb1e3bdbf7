import Foundation
import SquashMounts
import Testing

@Suite("Shard round trips")
struct ShardRoundTripTests {
    @Test("create, then inspect lists exactly the input tree: names, modes, sizes, link targets, content hashes")
    func createInspect() throws {
        let fixture = try TreeFixture()
        try fixture.populate()
        let shard = try ShardBuilder.create(from: fixture.tree.path, to: fixture.path("t.shard"), manifest: testManifest())
        let inspection = try shard.inspect(hashes: true)
        #expect(inspection.expectedForm == (try fixture.expectedEntries()))

        let byPath = Dictionary(uniqueKeysWithValues: inspection.entries.map { ($0.path, $0) })
        #expect(byPath["/hello.txt"]?.inode == byPath["/data/hard.txt"]?.inode, "hard links share one inode")
        #expect(byPath["/hello.txt"]?.links == 2)
        #expect(try #require(byPath["/"]).links == 5, "a directory's link count is 2 + its subdirectories (bin, data, emptydir)")
        #expect(inspection.squashfs.hasXattrs == fixture.hasXattr)
        #expect(inspection.squashfs.inodeCount == UInt32(Set(inspection.entries.map(\.inode)).count))
        #expect(inspection.manifest.image?.sha256.count == 64)
        #expect(shard.fileBytes % 4096 == 0, "a shard attaches as a disk: whole 4 KiB sectors")

        var content = Data()
        try shard.readFile("/data/big.bin") { content.append(contentsOf: $0) }
        #expect(content == (try Data(contentsOf: fixture.tree.appendingPathComponent("data/big.bin"))))
        #expect(throws: ShardError.self) { try shard.readFile("/no/such") { _ in } }
    }

    @Test("unsquashfs and rdsquashfs read the same tree, owners and xattrs included")
    func crossCheckWithTools() throws {
        let fixture = try TreeFixture()
        try fixture.populate()
        let shard = try ShardBuilder.create(from: fixture.tree.path, to: fixture.path("t.shard"), manifest: testManifest())

        let unpacked = fixture.path("unpacked")
        let (status, output) = try runTool(["unsquashfs", "-no-progress", "-d", unpacked, shard.path])
        #expect(status == 0, "\(output)")
        let extracted = try TreeFixture.Expected.entries(of: unpacked)
        #expect(extracted == (try fixture.expectedEntries()), "unsquashfs extracts exactly the input tree")

        let listing = try runTool(["unsquashfs", "-lln", shard.path])
        #expect(listing.status == 0)
        #expect(listing.output.contains("-rwsr-xr-x 0/0"), "setuid bit and owners kept: \(listing.output)")
        #expect(listing.output.contains("squashfs-root/bin/hello-link -> ../hello.txt"))

        let stat = try runTool(["rdsquashfs", "-s", "/hello.txt", shard.path])
        #expect(stat.status == 0, "\(stat.output)")
        #expect(stat.output.contains("Hard link count: 2"), "\(stat.output)")
        let xattrs = try runTool(["rdsquashfs", "-x", "/hello.txt", shard.path])
        #expect(xattrs.output.contains("user.vmexec.test") == fixture.hasXattr, "\(xattrs.output)")
        let check = try runTool(["rdsquashfs", "-l", "/", shard.path])
        #expect(check.status == 0)
    }

    @Test("the same tree and options give the same bytes; owners can be mapped to root", arguments: ShardCompressor.allCases)
    func deterministic(compressor: ShardCompressor) throws {
        let fixture = try TreeFixture()
        try fixture.populate()
        var options = SquashfsOptions()
        options.compressor = compressor
        options.blockSize = 64 * 1024
        let a = try ShardBuilder.create(
            from: fixture.tree.path, to: fixture.path("a.shard"), manifest: testManifest(), options: options)
        options.workers = 1
        let b = try ShardBuilder.create(
            from: fixture.tree.path, to: fixture.path("b.shard"), manifest: testManifest(), options: options)
        #expect(try Data(contentsOf: URL(fileURLWithPath: a.path)) == Data(contentsOf: URL(fileURLWithPath: b.path)))
        let facts = try a.inspect().squashfs
        #expect(facts.compressor == compressor.rawValue)
        #expect(facts.blockSize == 64 * 1024)
        #expect(try runTool(["unsquashfs", "-s", a.path]).output.contains("Compression \(compressor.rawValue)"))
        try a.verify()

        options.rootOwned = true
        chown(fixture.tree.appendingPathComponent("hello.txt").path, 1234, 5678)
        let kept = try ShardBuilder.create(from: fixture.tree.path, to: fixture.path("k.shard"), manifest: testManifest())
        let mapped = try ShardBuilder.create(
            from: fixture.tree.path, to: fixture.path("r.shard"), manifest: testManifest(), options: options)
        #expect(try kept.inspect().entries.first { $0.path == "/hello.txt" }.map { [$0.uid, $0.gid] } == [1234, 5678])
        #expect(try mapped.inspect().entries.allSatisfy { $0.uid == 0 && $0.gid == 0 })
    }

    @Test("a manifest's preload list: Python module names only, at most 32; manifests without one still decode")
    func preloads() throws {
        var m = testManifest()
        m.preload = ["numpy", "matplotlib.pyplot", "_private.mod2"]
        try m.validate()
        for bad in ["1numpy", "numpy..core", "os; import sys", "", String(repeating: "a", count: 129)] {
            m.preload = [bad]
            #expect(throws: ShardError.self, "\(bad)") { try m.validate() }
        }
        m.preload = (0..<33).map { "m\($0)" }
        #expect(throws: ShardError.self) { try m.validate() }
        m.preload = nil
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(m)) as? [String: Any] ?? [:]
        #expect(json["preload"] == nil, "absent, as in manifests written before it")
        json["preload"] = ["numpy"]
        let decoded = try JSONDecoder().decode(ShardManifest.self, from: JSONSerialization.data(withJSONObject: json))
        #expect(decoded.preload == ["numpy"])
    }

    @Test("a block size that is not a power of two is refused")
    func badBlockSize() throws {
        let fixture = try TreeFixture()
        var options = SquashfsOptions()
        options.blockSize = 100_000
        #expect(throws: ShardError.self) {
            try ShardBuilder.create(
                from: fixture.tree.path, to: fixture.path("x.shard"), manifest: testManifest(), options: options)
        }
        #expect(!FileManager.default.fileExists(atPath: fixture.path("x.shard")))
    }
}

extension TreeFixture.Expected {
    /// The same description of any directory on the host.
    static func entries(of directory: String) throws -> [String: TreeFixture.Expected] {
        let fixture = try TreeFixture()
        try FileManager.default.removeItem(at: fixture.tree)
        try FileManager.default.moveItem(atPath: directory, toPath: fixture.tree.path)
        return try fixture.expectedEntries()
    }
}
