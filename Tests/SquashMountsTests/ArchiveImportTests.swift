import Foundation
import SquashMounts
import Testing

@Suite("Archive import")
struct ArchiveImportTests {
    /// Writes an archive of `fixture.tree` with Python's tarfile or zipfile (an independent writer).
    private func archive(_ fixture: TreeFixture, kind: String) throws -> String {
        let out = fixture.path("tree.\(kind)")
        let script =
            kind == "zip"
            ? """
            import os, sys, zipfile
            root, out = sys.argv[1], sys.argv[2]
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
                for d, dirs, files in os.walk(root):
                    dirs.sort()
                    for name in sorted(dirs) + sorted(files):
                        p = os.path.join(d, name); rel = os.path.relpath(p, root)
                        st = os.lstat(p)
                        if os.path.islink(p):
                            info = zipfile.ZipInfo(rel); info.external_attr = (st.st_mode & 0xFFFF) << 16
                            info.create_system = 3; z.writestr(info, os.readlink(p))
                        elif os.path.isdir(p):
                            info = zipfile.ZipInfo(rel + "/"); info.external_attr = ((st.st_mode & 0xFFFF) << 16) | 0x10
                            info.create_system = 3; z.writestr(info, b"")
                        else:
                            z.write(p, rel)
            """
            : """
            import sys, tarfile
            root, out = sys.argv[1], sys.argv[2]
            with tarfile.open(out, "w:gz") as t:
                t.add(root, arcname=".")
            """
        let (status, output) = try runTool(["python3", "-c", script, fixture.tree.path, out])
        #expect(status == 0, "\(output)")
        return out
    }

    @Test("a zip and a tar.gz of one tree import to the same tree, equal to the source")
    func zipAndTarGzAgree() throws {
        let fixture = try TreeFixture()
        try fixture.file("hello.txt", Array("hello\n".utf8))
        try fixture.file("pkg/__init__.py", Array("VALUE = 42\n".utf8))
        try fixture.file("pkg/tool", Array("#!/bin/sh\n".utf8), mode: 0o755)
        try fixture.file("pkg/data/blob.bin", (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        symlink("../hello.txt", fixture.tree.appendingPathComponent("pkg/link").path)
        var options = SquashfsOptions()
        options.rootOwned = true
        let fromZip = try ShardBuilder.importArchive(
            try archive(fixture, kind: "zip"), to: fixture.path("z.shard"),
            manifest: testManifest(), options: options)
        let fromTar = try ShardBuilder.importArchive(
            try archive(fixture, kind: "tar.gz"), to: fixture.path("t.shard"),
            manifest: testManifest(), options: options)
        let zipTree = try fromZip.inspect(hashes: true).expectedForm
        let tarTree = try fromTar.inspect(hashes: true).expectedForm
        var expected = try fixture.expectedEntries()
        expected["/"] = nil  // an archive need not carry its root's mode
        var z = zipTree, t = tarTree
        z["/"] = nil
        t["/"] = nil
        #expect(z == t)
        #expect(t == expected)
        try fromZip.verify()
    }

    /// Builds a tar.gz holding one hostile entry, with Python's tarfile.
    private func hostileTar(_ fixture: TreeFixture, _ spec: String) throws -> String {
        let out = fixture.path("evil.tar.gz")
        let script = """
            import io, sys, tarfile
            kind, name, target = sys.argv[2].split("|")
            with tarfile.open(sys.argv[1], "w:gz") as t:
                ok = tarfile.TarInfo("fine.txt"); ok.size = 3; t.addfile(ok, io.BytesIO(b"ok\\n"))
                info = tarfile.TarInfo(name)
                if kind == "file":
                    info.size = 4; t.addfile(info, io.BytesIO(b"evil"))
                elif kind == "sym":
                    info.type = tarfile.SYMTYPE; info.linkname = target; t.addfile(info)
                elif kind == "hard":
                    info.type = tarfile.LNKTYPE; info.linkname = target; t.addfile(info)
                elif kind == "dev":
                    info.type = tarfile.CHRTYPE; info.devmajor = 1; info.devminor = 3; t.addfile(info)
            """
        let (status, output) = try runTool(["python3", "-c", script, out, spec])
        #expect(status == 0, "\(output)")
        return out
    }

    @Test(
        "path traversal in an archive is refused with a clear error and no shard is written",
        arguments: [
            "file|../evil.txt|", "file|a/../../evil.txt|", "file|/etc/evil|", "sym|link|/etc/passwd",
            "sym|dir/link|../../outside", "hard|link|../outside", "dev|null|",
        ])
    func traversal(spec: String) throws {
        let fixture = try TreeFixture()
        let tar = try hostileTar(fixture, spec)
        let output = fixture.path("evil.shard")
        let error = try #require(throws: ShardError.self) {
            try ShardBuilder.importArchive(tar, to: output, manifest: testManifest())
        }
        #expect(error.code == (spec.hasPrefix("dev") ? .unsupportedEntry : .pathTraversal), "\(error)")
        let name = spec.split(separator: "|", omittingEmptySubsequences: false)[1]
        #expect(error.message.contains(String(name)), "the error names the entry: \(error)")
        #expect(!FileManager.default.fileExists(atPath: output))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: fixture.root.path).filter { $0.contains("partial") }
        #expect(leftovers.isEmpty)
    }

    @Test("a symlink that stays inside is accepted; a file that is no archive is refused")
    func insideLinkAndGarbage() throws {
        let fixture = try TreeFixture()
        let tar = try hostileTar(fixture, "sym|a/b/link|../../fine.txt")
        let shard = try ShardBuilder.importArchive(tar, to: fixture.path("ok.shard"), manifest: testManifest())
        #expect(try shard.inspect().entries.contains { $0.path == "/a/b/link" && $0.linkTarget == "../../fine.txt" })

        try fixture.file("garbage.zip", Array(repeating: 0x41, count: 1000))
        let error = try #require(throws: ShardError.self) {
            try ShardBuilder.importArchive(
                fixture.tree.appendingPathComponent("garbage.zip").path,
                to: fixture.path("g.shard"), manifest: testManifest())
        }
        #expect(error.code == .badArchive)
    }
}
