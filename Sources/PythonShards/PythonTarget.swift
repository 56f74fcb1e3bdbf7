import SquashMounts

/// The Python a libs shard is made for, read from its SDK shard's manifest:
/// `python3.X` among its capabilities, its architecture, and `glibc==X.Y` when it says.
public struct PythonTarget: Sendable, Equatable {
    public var major: Int
    public var minor: Int
    /// The full version (the SDK shard's version when it looks like one, e.g. 3.11.2).
    public var fullVersion: String
    /// `x86_64` or `aarch64`.
    public var architecture: String
    /// The newest glibc its wheels may need (manylinux_X_Y).
    public var glibc: (major: Int, minor: Int)
    /// The capability a libs shard for it requires, e.g. `python3.11`.
    public var capability: String { "python\(major).\(minor)" }

    public static func == (a: PythonTarget, b: PythonTarget) -> Bool {
        a.major == b.major && a.minor == b.minor && a.fullVersion == b.fullVersion && a.architecture == b.architecture
            && a.glibc == b.glibc
    }

    public init(major: Int, minor: Int, fullVersion: String, architecture: String, glibc: (Int, Int)) {
        self.major = major
        self.minor = minor
        self.fullVersion = fullVersion
        self.architecture = architecture
        self.glibc = glibc
    }

    /// Without `glibc==X.Y` in the SDK's capabilities, only manylinux2014's baseline is assumed.
    public static let baselineGlibc = (2, 17)

    /// The target of an SDK shard; refused when it provides no `python3.X` or names no architecture.
    public init(sdk: ShardManifest) throws(ShardError) {
        let pythons = sdk.provides.compactMap { capability -> (Int, Int)? in
            guard capability.hasPrefix("python") else { return nil }
            let parts = capability.dropFirst(6).split(separator: ".")
            guard parts.count == 2, let major = Int(parts[0]), let minor = Int(parts[1]) else { return nil }
            return (major, minor)
        }
        guard let python = pythons.first else {
            throw ShardError(
                .invalidArgument,
                "shard \(sdk.name) \(sdk.version) provides no python3.X capability (\(sdk.provides.joined(separator: ", "))); give the SDK shard of the Python the libraries are for"
            )
        }
        guard sdk.architecture != "any" else {
            throw ShardError(.invalidArgument, "SDK shard \(sdk.name) \(sdk.version) names no architecture")
        }
        var glibc = Self.baselineGlibc
        for capability in sdk.provides where capability.hasPrefix("glibc==") {
            let parts = capability.dropFirst(7).split(separator: ".").compactMap { Int($0) }
            if parts.count >= 2 { glibc = (parts[0], parts[1]) }
        }
        let looksLikeVersion = sdk.version.split(separator: ".").first.flatMap { Int($0) } == python.0
        self.init(
            major: python.0, minor: python.1, fullVersion: looksLikeVersion ? sdk.version : "\(python.0).\(python.1).0",
            architecture: sdk.architecture, glibc: glibc)
    }

    /// The environment PEP 508 markers are evaluated in.
    var markerEnvironment: [String: String] {
        [
            "python_version": "\(major).\(minor)", "python_full_version": fullVersion, "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": architecture,
            "platform_python_implementation": "CPython", "implementation_name": "cpython",
            "implementation_version": fullVersion, "platform_release": "", "platform_version": "",
        ]
    }
}
