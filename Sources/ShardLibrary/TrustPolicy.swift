import SquashMounts

/// Which shards must carry a signature by a trusted key.
///
/// Per kind: by default SDK and libs shards must be signed (whoever replaces
/// the interpreter or a library owns every script), programs and data need not.
/// Whatever the kind, a shard that reaches beyond its own folder needs a
/// signature too: a layer of the root file system, a mount point outside
/// `/opt`, environment entries other than path lists into its own folder, or
/// modules for the warm interpreter (which runs as root) to preload. Otherwise
/// an unsigned "program" could lay a new `/usr/bin/python3` over the SDK.
public struct TrustPolicy: Sendable, Equatable, Codable {
    /// What a kind of shard must show.
    public enum Requirement: String, Sendable, Codable, CaseIterable {
        /// Signed by a trusted, unrevoked key.
        case signed
        /// A signature is not needed (one that is there must still be valid).
        case any
    }

    public var requirements: [ShardManifest.Kind: Requirement]

    public static let `default` = TrustPolicy(requirements: [.sdk: .signed, .libs: .signed, .program: .any, .data: .any])

    public init(requirements: [ShardManifest.Kind: Requirement]) {
        self.requirements = requirements
    }

    public func requirement(for kind: ShardManifest.Kind) -> Requirement { requirements[kind] ?? .signed }

    /// Environment names an unsigned shard may extend, with folders inside its own mount point.
    static let pathListNames: Set<String> = ["PATH", "PYTHONPATH", "NODE_PATH"]

    /// Why `manifest` needs a trusted signature whatever its kind's requirement, or nil.
    public static func reach(of manifest: ShardManifest) -> String? {
        guard case .mount(let mountPoint) = manifest.placement else {
            return "it is a layer of the guest's root file system"
        }
        guard mountPoint.hasPrefix("/opt/") else { return "it mounts at \(mountPoint), outside /opt" }
        for (name, value) in manifest.environment {
            let inside = value.split(separator: ":").allSatisfy { $0 == mountPoint || $0.hasPrefix(mountPoint + "/") }
            guard pathListNames.contains(name), inside else {
                return
                    "it sets \(name)=\(value) for every command (only PATH, PYTHONPATH and NODE_PATH into its own folder need no signature)"
            }
        }
        if let preload = manifest.preload, !preload.isEmpty {
            return "it asks the warm interpreter (root in the guest) to preload \(preload.joined(separator: ", "))"
        }
        return nil
    }

    /// Why `manifest` must be signed by a trusted key, or nil when it need not be.
    public func signatureReason(for manifest: ShardManifest) -> String? {
        if requirement(for: manifest.kind) == .signed {
            return "the trust policy wants \(manifest.kind.rawValue) shards signed by a trusted key"
        }
        return Self.reach(of: manifest).map { "\($0), which only a shard signed by a trusted key may do" }
    }
}
