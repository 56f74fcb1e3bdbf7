/// What a shard is and where it goes: stored inside the shard file (see
/// `ShardFile`) and shown by `vmexec shard inspect`.
public struct ShardManifest: Codable, Sendable, Equatable {
    /// What a shard carries; each is updated on its own by the field engineer.
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case sdk, libs, program, data
    }

    /// Where a shard appears in the guest.
    public enum Placement: Codable, Sendable, Equatable, CustomStringConvertible {
        /// Mounted read-only at this absolute path (e.g. `/opt/libs/numpy`).
        case mount(String)
        /// Merged into the root file system as a read-only overlay lower layer,
        /// above the base; layers with a higher order lie above lower ones
        /// (ties are broken by name).
        case layer(order: Int)

        private enum CodingKeys: String, CodingKey { case mount, layer }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            if let path = try c.decodeIfPresent(String.self, forKey: .mount) {
                self = .mount(path)
            } else {
                self = .layer(order: try c.decode(Int.self, forKey: .layer))
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            switch self {
            case .mount(let path): try c.encode(path, forKey: .mount)
            case .layer(let order): try c.encode(order, forKey: .layer)
            }
        }

        public var description: String {
            switch self {
            case .mount(let path): return path
            case .layer(let order): return "layer \(order)"
            }
        }
    }

    /// The squashfs image the manifest vouches for.
    public struct Image: Codable, Sendable, Equatable {
        /// sha256 of the squashfs bytes (the start of the file up to the manifest).
        public var sha256: String
        public var bytes: UInt64
        public var compressor: String
        public var blockSize: UInt32
    }

    /// Manifest format; readers refuse a newer major format.
    public var format: Int = 1
    public var name: String
    public var version: String
    public var kind: Kind
    /// `x86_64`, `aarch64`, or `any` for shards without machine code.
    public var architecture: String
    public var placement: Placement
    /// Capabilities this shard offers, e.g. `python3.11` or `numpy==1.26.4`.
    public var provides: [String]
    /// Capabilities another attached shard must offer, e.g. `python3.11`.
    public var requires: [String]
    /// Path lists this shard adds to the environment of every command, e.g.
    /// `PYTHONPATH` = `/opt/libs/numpy`; prepended, with `:`, to what is there.
    public var environment: [String: String]
    /// Python modules a sandbox's warm interpreter imports before any job (e.g. `numpy`), so
    /// that jobs start without importing them. Optional: manifests before it have none.
    public var preload: [String]?
    /// A program shard's command: what `vmexec program run NAME ARGS…` runs (with ARGS after it),
    /// in the shard's folder, e.g. `python3 /opt/programs/report/main.py`. Optional.
    public var entrypoint: [String]?
    /// Filled in when the shard is built; `nil` only while building.
    public var image: Image?

    public init(
        name: String, version: String, kind: Kind, architecture: String = "any",
        placement: Placement, provides: [String] = [], requires: [String] = [],
        environment: [String: String] = [:], preload: [String]? = nil
    ) {
        self.name = name
        self.version = version
        self.kind = kind
        self.architecture = architecture
        self.placement = placement
        self.provides = provides
        self.requires = requires
        self.environment = environment
        self.preload = preload
    }

    /// Architectures a shard may name.
    public static let architectures = ["any", "x86_64", "aarch64"]

    /// Checks every field a user can get wrong, so that a bad manifest is
    /// refused when the shard is built, not when a guest mounts it.
    public func validate() throws(ShardError) {
        func bad(_ what: String) -> ShardError {
            ShardError(.invalidArgument, "shard manifest of '\(name)': \(what)")
        }
        guard format == 1 else { throw bad("format \(format) is newer than this vmexec understands (1); update vmexec") }
        guard Self.isToken(name) else { throw bad("the name must be 1-64 characters of letters, digits, '.', '_', '-', '+'") }
        guard Self.isToken(version) else {
            throw bad("the version must be 1-64 characters of letters, digits, '.', '_', '-', '+'")
        }
        guard Self.architectures.contains(architecture) else {
            throw bad("architecture '\(architecture)' is not one of \(Self.architectures.joined(separator: ", "))")
        }
        if case .mount(let path) = placement {
            if let problem = Self.mountPointProblem(path) { throw bad("mount point '\(path)' \(problem)") }
        }
        for capability in provides + requires where !Self.isCapability(capability) {
            throw bad("capability '\(capability)' must be a name, optionally followed by ==version")
        }
        for (key, value) in environment {
            guard Self.isEnvironmentName(key) else { throw bad("'\(key)' is not an environment variable name") }
            guard !value.isEmpty, !value.contains("\0"), value.utf8.count <= 1024 else {
                throw bad("the value of \(key) must be 1-1024 bytes without NUL")
            }
        }
        let preload = preload ?? []
        guard preload.count <= 32 else { throw bad("at most 32 modules to preload, not \(preload.count)") }
        for module in preload where !Self.isModuleName(module) {
            throw bad("'\(module)' to preload is not a Python module name (e.g. numpy or matplotlib.pyplot)")
        }
        if let entrypoint {
            guard !entrypoint.isEmpty, entrypoint.count <= 64,
                entrypoint.allSatisfy({ !$0.isEmpty && !$0.contains("\0") && $0.utf8.count <= 4096 })
            else { throw bad("the entry point must be 1-64 arguments of 1-4096 bytes without NUL") }
        }
    }

    /// A dotted Python module name (`numpy`, `matplotlib.pyplot`), at most 128 bytes.
    static func isModuleName(_ s: String) -> Bool {
        guard s.utf8.count <= 128 else { return false }
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        return parts.allSatisfy { part in
            guard let first = part.utf8.first, !(first >= 0x30 && first <= 0x39) else { return false }
            return part.utf8.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b == UInt8(ascii: "_")
            }
        }
    }

    /// Why `path` cannot be a shard's mount point, or nil when it can.
    public static func mountPointProblem(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return "is not absolute" }
        guard path.utf8.count <= 255 else { return "is longer than 255 bytes" }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        guard !parts.isEmpty, !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
            return "must be a normalised path below / (no empty, '.' or '..' parts, no trailing '/')"
        }
        guard !path.utf8.contains(where: { $0 < 0x20 || $0 == 0x7f }) else { return "contains control characters" }
        let reserved = ["proc", "sys", "dev", "tmp", "run"]
        if let first = parts.first, reserved.contains(String(first)) {
            return "lies under /\(first), which the guest mounts itself"
        }
        return nil
    }

    static func isToken(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64
            && s.utf8.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
                    || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "-") || b == UInt8(ascii: "+")
            }
    }

    static func isCapability(_ s: String) -> Bool {
        let parts = s.split(separator: "==", omittingEmptySubsequences: false)
        return (parts.count == 1 || parts.count == 2) && parts.allSatisfy { isToken(String($0)) }
    }

    static func isEnvironmentName(_ s: String) -> Bool {
        guard let first = s.utf8.first, !(first >= 0x30 && first <= 0x39), s.utf8.count <= 128 else { return false }
        return s.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b == UInt8(ascii: "_")
        }
    }

    /// Does `capability` (offered by this shard, or its own name) meet `requirement`?
    /// `numpy==1.26.4` meets `numpy` and `numpy==1.26.4`; `numpy` meets only `numpy`.
    public func satisfies(_ requirement: String) -> Bool {
        let offered = provides + [name, "\(name)==\(version)"]
        return offered.contains { capability in
            capability == requirement || capability.split(separator: "==").first.map(String.init) == requirement
        }
    }
}
