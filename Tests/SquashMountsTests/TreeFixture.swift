import Crypto
import Foundation
import PersistOverlay
import SquashMounts

/// A scratch directory with a tree worth round-tripping, removed on deinit.
final class TreeFixture {
    let root: URL
    var tree: URL { root.appendingPathComponent("tree") }
    /// Whether the host's file system took the user xattr `populate` sets (tmpfs before Linux 6.6 does not).
    private(set) var hasXattr = false

    init() throws {
        root = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-shard-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tree, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: root) }

    func path(_ name: String) -> String { root.appendingPathComponent(name).path }

    /// Writes a file under the tree with `mode`, making its parents.
    func file(_ relative: String, _ content: [UInt8], mode: Int = 0o644) throws {
        let url = tree.appendingPathComponent(relative)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(content).write(to: url)
        chmod(url.path, mode_t(mode))
    }

    /// Fills the tree with every kind of entry a shard keeps.
    func populate() throws {
        try file("hello.txt", Array("hello, shard\n".utf8))
        try file("bin/tool", Array("#!/bin/sh\necho tool\n".utf8), mode: 0o755)
        try file("bin/setuid", Array("not really\n".utf8), mode: 0o4755)
        try file("empty", [])
        var random = SystemRandomNumberGenerator()
        try file("data/big.bin", (0..<(700 * 1024)).map { _ in UInt8.random(in: 0...255, using: &random) })
        try file("data/zeros.bin", [UInt8](repeating: 0, count: 300 * 1024))  // sparse blocks
        try file("data/deep/er/still/leaf.txt", Array("leaf\n".utf8), mode: 0o600)
        try FileManager.default.createDirectory(at: tree.appendingPathComponent("emptydir"), withIntermediateDirectories: true)
        chmod(tree.appendingPathComponent("emptydir").path, 0o700)
        symlink("../hello.txt", tree.appendingPathComponent("bin/hello-link").path)
        symlink("/usr/bin/python3", tree.appendingPathComponent("bin/absolute-link").path)
        link(tree.appendingPathComponent("hello.txt").path, tree.appendingPathComponent("data/hard.txt").path)
        mkfifo(tree.appendingPathComponent("data/pipe").path, 0o640)
        let path = tree.appendingPathComponent("hello.txt").path
        hasXattr =
            try runTool(["python3", "-c", "import os, sys; os.setxattr(sys.argv[1], 'user.vmexec.test', b'label')", path]).status
            == 0
    }

    /// The tree as `inspect` should list it: path → (type, mode, size, link target, sha256).
    func expectedEntries() throws -> [String: Expected] {
        var result: [String: Expected] = [:]
        func visit(_ url: URL, _ path: String) throws {
            var st = stat()
            lstat(url.path, &st)
            let mode = UInt16(st.st_mode & 0o7777)
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                result[path] = Expected(type: .directory, mode: mode, size: 0, link: nil, sha256: nil)
                for name in try FileManager.default.contentsOfDirectory(atPath: url.path) {
                    try visit(url.appendingPathComponent(name), path == "/" ? "/" + name : path + "/" + name)
                }
            case S_IFREG:
                let data = try Data(contentsOf: url)
                result[path] = Expected(
                    type: .file, mode: mode, size: UInt64(data.count), link: nil,
                    sha256: SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined())
            case S_IFLNK:
                let target = try FileManager.default.destinationOfSymbolicLink(atPath: url.path)
                result[path] = Expected(type: .symlink, mode: 0o777, size: UInt64(target.utf8.count), link: target, sha256: nil)
            case S_IFIFO:
                result[path] = Expected(type: .fifo, mode: mode, size: 0, link: nil, sha256: nil)
            default:
                break
            }
        }
        try visit(tree, "/")
        return result
    }

    struct Expected: Equatable {
        var type: ShardEntry.EntryType
        var mode: UInt16
        var size: UInt64
        var link: String?
        var sha256: String?
    }
}

/// Runs a host tool, returning its exit status and output (through HostTool:
/// Foundation's Process is not safe to start from parallel tests).
@discardableResult
func runTool(_ arguments: [String], cwd: String? = nil) throws -> (status: Int32, output: String) {
    let outcome = try HostTool.run(arguments, in: cwd)
    return (outcome.status, outcome.output)
}

extension Shard.Inspection {
    /// The listing in the fixture's terms.
    var expectedForm: [String: TreeFixture.Expected] {
        Dictionary(
            uniqueKeysWithValues: entries.map {
                (
                    $0.path,
                    TreeFixture.Expected(type: $0.type, mode: $0.mode, size: $0.size, link: $0.linkTarget, sha256: $0.sha256)
                )
            })
    }
}

func testManifest(
    name: String = "fixture", version: String = "1.0", kind: ShardManifest.Kind = .data,
    placement: ShardManifest.Placement = .mount("/opt/fixture")
) -> ShardManifest {
    ShardManifest(name: name, version: version, kind: kind, placement: placement)
}
