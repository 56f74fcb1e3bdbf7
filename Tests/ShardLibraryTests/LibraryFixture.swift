import Foundation
import ShardLibrary
import SquashMounts

/// A scratch folder with a library, a vendor key the library trusts, and helpers to build small shards.
final class LibraryFixture {
    let root: URL
    let library: ShardLibrary
    let vendor: ShardSigningKey

    init(trustVendor: Bool = true) throws {
        root = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-library-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        library = try ShardLibrary(directory: root.appendingPathComponent("lib"))
        vendor = ShardSigningKey(name: "vendor")
        if trustVendor { try library.trust.add(vendor.publicKey, by: "test") }
    }

    deinit { try? FileManager.default.removeItem(at: root) }

    func path(_ name: String) -> String { root.appendingPathComponent(name).path }

    /// Builds a shard of one file; signed by `signer` unless nil.
    func shard(
        _ name: String, _ version: String, kind: ShardManifest.Kind = .libs, provides: [String] = [],
        requires: [String] = [], mount: String? = nil, layer: Int? = nil, signer: ShardSigningKey? = nil,
        environment: [String: String] = [:], content: String = "content"
    ) throws -> String {
        let tree = root.appendingPathComponent("tree-\(name)-\(version)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tree, withIntermediateDirectories: true)
        try Data("\(name) \(version) \(content)\n".utf8).write(to: tree.appendingPathComponent("\(name).txt"))
        let placement: ShardManifest.Placement = layer.map { .layer(order: $0) } ?? .mount(mount ?? "/opt/libs/\(name)")
        let manifest = ShardManifest(
            name: name, version: version, kind: kind, architecture: "any", placement: placement, provides: provides,
            requires: requires, environment: environment)
        let file = path("\(name)-\(version)-\(UUID().uuidString.prefix(8)).shard")
        try ShardBuilder.create(from: tree.path, to: file, manifest: manifest)
        if let signer { try ShardSigner.sign(file, with: signer) }
        return file
    }

    /// An SDK shard (a layer providing python3 and python3.X), signed by the vendor.
    func sdk(_ version: String, python: String) throws -> String {
        try shard("cpython", version, kind: .sdk, provides: ["python3", python], layer: 10, signer: vendor)
    }
}

/// The error `body` throws, as a `ShardError`.
func shardError(_ body: () throws -> Void) -> ShardError? {
    do {
        try body()
        return nil
    } catch let error as ShardError {
        return error
    } catch {
        return ShardError(.io, "not a ShardError: \(error)")
    }
}
