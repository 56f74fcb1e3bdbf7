import Foundation
import VMExecutor

/// The guest images the guest and CLI suites run on: those `make test` points
/// VMEXEC_IMAGES at (`make images` builds them), with the SDK shard beside them.
///
/// Suites that need them are enabled only when they are all there; one test
/// per target fails instead, saying to run `make images` (never a pile of
/// failures, never a silent skip).
public enum TestImages {
    /// The guests' architecture: `$VMEXEC_ARCH` (`make test ARCH=aarch64` sets it), else the host's.
    public static var architecture: GuestArchitecture { .preferred }

    /// An architecture the guests are not, for tests of what is refused as foreign.
    public static var otherArchitecture: GuestArchitecture { architecture == .x86_64 ? .aarch64 : .x86_64 }

    /// The images, or nil when they are not built.
    public static var images: GuestImages? { try? GuestImages.locate() }

    /// The images of `architecture`: the suites' own, or the folder of that
    /// name beside them (`images/build/<arch>`), or nil when they are not built.
    public static func images(for architecture: GuestArchitecture) -> GuestImages? {
        guard let images else { return nil }
        if architecture == self.architecture { return images }
        let folder = images.directory.deletingLastPathComponent().appendingPathComponent(architecture.rawValue)
        return GuestImages(directory: folder, architecture: architecture)
    }

    /// The SDK shard `make images` builds beside the guest images.
    public static var sdkShardPath: String? {
        guard let dir = images?.directory else { return nil }
        let path = dir.appendingPathComponent("sdk-python.shard").path
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    /// The Node.js SDK shard `make images` builds beside the guest images.
    public static var nodeShardPath: String? {
        guard let dir = images?.directory else { return nil }
        let path = dir.appendingPathComponent("sdk-node.shard").path
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    /// A libs shard `make images` builds beside the guest images (`libs-NAME-VERSION.shard`), or nil.
    public static func libsShardPath(_ name: String) -> String? {
        guard let dir = images?.directory,
            let file = try? FileManager.default.contentsOfDirectory(atPath: dir.path)
                .first(where: { $0.hasPrefix("libs-\(name)-") && $0.hasSuffix(".shard") })
        else { return nil }
        return dir.appendingPathComponent(file).path
    }

    /// Why the suites cannot run, or nil when everything they need is there.
    public static var missing: String? {
        do {
            _ = try GuestImages.locate()
        } catch {
            return error.message
        }
        if sdkShardPath == nil {
            return "the SDK shard (sdk-python.shard) is not beside the guest images; run `make images` first."
        }
        return nil
    }

    /// Whether everything the suites need is there.
    public static var ready: Bool { missing == nil }
}
