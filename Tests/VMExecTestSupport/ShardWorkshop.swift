import Foundation
import SquashMounts

/// Shards built for a test, in a scratch directory removed at the end.
public final class ShardWorkshop {
    public let root: URL

    public init() throws {
        root = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-shards-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: root) }

    /// A libs shard holding the module `vxlib` whose VERSION is `version`, mounted at /opt/libs/vxlib.
    public func libs(
        version: String, requires: [String] = ["python3.11"], architecture: String = "any",
        mount: String = "/opt/libs/vxlib"
    ) throws -> Shard {
        let tree = root.appendingPathComponent("vxlib-\(version)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tree.appendingPathComponent("vxlib"), withIntermediateDirectories: true)
        try Data("VERSION = \"\(version)\"\n".utf8).write(to: tree.appendingPathComponent("vxlib/__init__.py"))
        let manifest = ShardManifest(
            name: "vxlib", version: version, kind: .libs, architecture: architecture,
            placement: .mount(mount), provides: ["vxlib==\(version)"], requires: requires,
            environment: ["PYTHONPATH": mount])
        return try ShardBuilder.create(
            from: tree.path, to: root.appendingPathComponent("\(tree.lastPathComponent).shard").path,
            manifest: manifest)
    }

    /// A layer shard putting /etc/vxlayer (and /etc/vxlayer-NAME) into the root.
    public func layer(name: String, order: Int) throws -> Shard {
        let tree = root.appendingPathComponent("layer-\(name)")
        try FileManager.default.createDirectory(at: tree.appendingPathComponent("etc"), withIntermediateDirectories: true)
        try Data("\(name)\n".utf8).write(to: tree.appendingPathComponent("etc/vxlayer"))
        try Data("\(name)\n".utf8).write(to: tree.appendingPathComponent("etc/vxlayer-\(name)"))
        return try ShardBuilder.create(
            from: tree.path, to: root.appendingPathComponent("layer-\(name).shard").path,
            manifest: ShardManifest(
                name: "layer-\(name)", version: "1", kind: .data,
                placement: .layer(order: order)))
    }

    /// Another release of the SDK: the same CPython with a marker module the script reads.
    public func sdk(release: String) throws -> Shard {
        let source = try sdkShardPath().replacingOccurrences(of: "sdk-python.shard", with: "sdk.tree")
        let tree = root.appendingPathComponent("sdk-\(release)")
        let copy = Process()
        copy.executableURL = URL(fileURLWithPath: "/bin/cp")
        copy.arguments = ["-a", source, tree.path]
        try copy.run()
        copy.waitUntilExit()
        try Data("RELEASE = \"\(release)\"\n".utf8).write(to: tree.appendingPathComponent("usr/lib/python3.11/vxsdk.py"))
        let original = try Shard.open(try sdkShardPath()).manifest
        var manifest = ShardManifest(
            name: original.name, version: "\(original.version)-\(release)", kind: .sdk,
            architecture: original.architecture, placement: original.placement,
            provides: original.provides)
        manifest.environment = original.environment
        return try ShardBuilder.create(
            from: tree.path, to: root.appendingPathComponent("sdk-\(release).shard").path,
            manifest: manifest)
    }

    private func sdkShardPath() throws -> String {
        guard let path = TestImages.sdkShardPath else { throw TestImagesMissing(reason: TestImages.missing ?? "no SDK shard") }
        return path
    }
}

/// The images a fixture needs are not built.
public struct TestImagesMissing: Error, CustomStringConvertible {
    public let reason: String
    public var description: String { reason }
}
