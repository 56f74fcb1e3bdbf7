import Foundation
import SquashMounts

/// Makes one libs shard from a folder of wheels (what `pip download -r requirements.txt`
/// writes on a connected machine) or from an existing `site-packages` folder, for one SDK.
///
/// Everything is decided on the host without running anything the packages hold: each
/// wheel's tags must fit the SDK's Python, ABI, architecture and glibc; its files must match
/// its RECORD; its shared objects must be for the SDK's architecture; every requirement its
/// METADATA declares for that Python must be met by another wheel of the folder (or be named
/// as external: provided by another shard). A wheel that does not fit is refused by name.
public struct LibsShardMaker {
    public var name: String
    public var version: String
    public var target: PythonTarget
    /// Where the shard mounts (default `/opt/libs/NAME`).
    public var mountPoint: String
    /// Distributions other shards provide (e.g. `numpy` for a matplotlib shard); required by name.
    public var external: [String] = []
    /// Modules the warm interpreter preloads.
    public var preload: [String] = []
    /// The guest's interpreter, for scripts' `#!` lines.
    public var python = "/usr/bin/python3"
    /// Bytes the wheels may unpack to in all (see ``UnpackBudget``).
    public var maxUnpackedBytes = UnpackBudget.defaultBytes

    public init(name: String, version: String, target: PythonTarget, mountPoint: String? = nil) {
        self.name = name
        self.version = version
        self.target = target
        self.mountPoint = mountPoint ?? "/opt/libs/\(name)"
    }

    /// What went into the shard.
    public struct Report: Sendable {
        public var shard: Shard
        /// `name==version` of every distribution.
        public var distributions: [String]
        /// Whether bytecode was compiled in (only when the host's python3 is the SDK's major.minor).
        public var bytecode: Bool
    }

    /// Builds the shard at `output` from `folder`: wheels when it holds `*.whl`, else a site-packages tree.
    public func make(from folder: String, to output: String) throws(ShardError) -> Report {
        let entries: [String]
        do {
            entries = try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
        } catch {
            throw ShardError(.io, "\(folder) cannot be read: \(error)")
        }
        let wheels = entries.filter { $0.hasSuffix(".whl") }
        if !wheels.isEmpty { return try fromWheels(folder, wheels, to: output) }
        if entries.contains(where: { $0.hasSuffix(".dist-info") }) { return try fromSitePackages(folder, to: output) }
        throw ShardError(
            .invalidArgument,
            "\(folder) holds neither wheels (*.whl, as `pip download -r requirements.txt -d DIR` writes them) nor a site-packages tree (*.dist-info)"
        )
    }

    private func fromWheels(_ folder: String, _ files: [String], to output: String) throws(ShardError) -> Report {
        var names: [WheelName] = []
        for file in files {
            guard let name = WheelName(file) else {
                throw ShardError(.invalidArgument, "\(file) is not named as a wheel is (NAME-VERSION-PYTHON-ABI-PLATFORM.whl)")
            }
            if let why = name.mismatch(for: target) {
                throw ShardError(.wrongArchitecture, "wheel \(file) does not fit the SDK: \(why); download the wheel for it")
            }
            names.append(name)
        }
        let site = try stagingFolder(output)
        defer { try? FileManager.default.removeItem(at: site) }
        var installed: [String: WheelArchive.Metadata] = [:]
        let budget = UnpackBudget(maxUnpackedBytes, source: folder)
        for name in names {
            let (metadata, _) = try WheelArchive(path: folder + "/" + name.file, name: name)
                .unpack(into: site, target: target, python: python, budget: budget)
            let key = PackageRequirement.normalize(metadata.name)
            if let other = installed[key] {
                throw ShardError(
                    .conflict, "\(name.file) and another wheel are both \(metadata.name) (\(other.version), \(metadata.version))")
            }
            if let requires = metadata.requiresPython, let full = PackageVersion(target.fullVersion),
                !full.satisfies(requires)
            {
                throw ShardError(
                    .wrongArchitecture, "wheel \(name.file) needs Python \(requires), and the SDK is \(target.fullVersion)")
            }
            installed[key] = metadata
        }
        try checkRequirements(installed)
        return try build(site: site, distributions: installed.values.map { ($0.name, $0.version) }, to: output)
    }

    private func fromSitePackages(_ folder: String, to output: String) throws(ShardError) -> Report {
        var distributions: [(String, String)] = []
        var installed: [String: WheelArchive.Metadata] = [:]
        let fm = FileManager.default
        for entry in (try? fm.contentsOfDirectory(atPath: folder)) ?? [] where entry.hasSuffix(".dist-info") {
            guard let text = fm.contents(atPath: "\(folder)/\(entry)/METADATA").map({ String(decoding: $0, as: UTF8.self) })
            else { continue }
            var name = "", version = ""
            var requirements: [PackageRequirement] = []
            for line in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
                if line.isEmpty { break }
                if line.hasPrefix("Name:") { name = line.dropFirst(5).trimmingCharacters(in: .whitespaces) }
                if line.hasPrefix("Version:") { version = line.dropFirst(8).trimmingCharacters(in: .whitespaces) }
                if line.hasPrefix("Requires-Dist:"), let r = PackageRequirement(String(line.dropFirst(14))) {
                    requirements.append(r)
                }
            }
            guard !name.isEmpty else { continue }
            distributions.append((name, version))
            installed[PackageRequirement.normalize(name)] = .init(
                name: name, version: version, requiresPython: nil, requirements: requirements, consoleScripts: [])
        }
        // Machine code in the tree must be for the SDK's architecture.
        if let walker = fm.enumerator(atPath: folder) {
            while let relative = walker.nextObject() as? String {
                guard relative.hasSuffix(".so") || relative.contains(".so.") else { continue }
                guard let handle = FileHandle(forReadingAtPath: "\(folder)/\(relative)") else { continue }
                let head = [UInt8]((try? handle.read(upToCount: 20)) ?? Data())
                try? handle.close()
                guard let arch = MachineCode.architecture(ofHeader: head) else { continue }
                guard arch == target.architecture else {
                    throw ShardError(
                        .wrongArchitecture,
                        "\(folder)/\(relative) is \(arch) machine code, and the SDK is \(target.architecture)")
                }
            }
        }
        try checkRequirements(installed)
        let site = try stagingFolder(output)
        defer { try? FileManager.default.removeItem(at: site) }
        try copyTree(folder, to: site)
        return try build(site: site, distributions: distributions, to: output)
    }

    /// Every requirement that applies to the SDK's Python must be met by a distribution of the set, or be external.
    private func checkRequirements(_ installed: [String: WheelArchive.Metadata]) throws(ShardError) {
        let externals = Set(external.map(PackageRequirement.normalize))
        var problems: [String] = []
        var environment = target.markerEnvironment
        for (_, metadata) in installed.sorted(by: { $0.key < $1.key }) {
            for requirement in metadata.requirements {
                environment["extra"] = ""
                guard requirement.applies(in: environment) else { continue }
                let key = PackageRequirement.normalize(requirement.name)
                if externals.contains(key) { continue }
                guard let dependency = installed[key] else {
                    problems.append(
                        "\(metadata.name) \(metadata.version) requires \(requirement.description), which no wheel of the folder is"
                    )
                    continue
                }
                if let v = PackageVersion(dependency.version), !v.satisfies(requirement.specifier) {
                    problems.append(
                        "\(metadata.name) \(metadata.version) requires \(requirement.description), and the folder has \(dependency.name) \(dependency.version)"
                    )
                }
                // The extras it asks of the dependency bring the dependency's requirements for them.
                for extra in requirement.extras {
                    environment["extra"] = extra
                    for r in dependency.requirements where r.marker?.contains("extra") == true && r.applies(in: environment) {
                        let k = PackageRequirement.normalize(r.name)
                        if installed[k] == nil && !externals.contains(k) {
                            problems.append(
                                "\(metadata.name) \(metadata.version) requires \(requirement.name)[\(extra)], which needs \(r.description), which no wheel of the folder is"
                            )
                        }
                    }
                }
            }
        }
        guard problems.isEmpty else {
            throw ShardError(
                .unmetRequirement,
                problems.joined(separator: "; ")
                    + ". Add the missing wheels (pip download them with the others), or, if another libs shard provides one, name it with --external NAME"
            )
        }
    }

    private func build(site: URL, distributions: [(String, String)], to output: String) throws(ShardError) -> Report {
        let bytecode = compileBytecode(site)
        let hasScripts = FileManager.default.fileExists(atPath: site.appendingPathComponent("bin").path)
        let hasMachineCode = Self.containsMachineCode(site.path)
        var environment = ["PYTHONPATH": mountPoint]
        if hasScripts { environment["PATH"] = mountPoint + "/bin" }
        let provides = distributions.map { "\(PackageRequirement.normalize($0.0))==\($0.1)" }.sorted()
        let manifest = ShardManifest(
            name: name, version: version, kind: .libs, architecture: hasMachineCode ? target.architecture : "any",
            placement: .mount(mountPoint), provides: provides,
            requires: [target.capability] + external.map(PackageRequirement.normalize), environment: environment,
            preload: preload.isEmpty ? nil : preload)
        var options = SquashfsOptions()
        options.rootOwned = true
        options.modificationTime = 0
        let shard = try ShardBuilder.create(from: site.path, to: output, manifest: manifest, options: options)
        return Report(shard: shard, distributions: provides, bytecode: bytecode)
    }

    /// Compiles bytecode into the tree with the host's python3 when it is the SDK's major.minor
    /// (a read-only shard cannot take `__pycache__` later). Compiling reads sources; it runs none.
    private func compileBytecode(_ site: URL) -> Bool {
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        probe.arguments = ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        let pipe = Pipe()
        probe.standardOutput = pipe
        probe.standardError = FileHandle.nullDevice
        guard (try? probe.run()) != nil else { return false }
        probe.waitUntilExit()
        let version = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guard probe.terminationStatus == 0,
            version.trimmingCharacters(in: .whitespacesAndNewlines) == "\(target.major).\(target.minor)"
        else { return false }
        let compile = Process()
        compile.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compile.arguments = [
            "python3", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", "-s", site.path, "-p",
            mountPoint, site.path,
        ]
        compile.standardOutput = FileHandle.nullDevice
        compile.standardError = FileHandle.nullDevice
        guard (try? compile.run()) != nil else { return false }
        compile.waitUntilExit()
        return compile.terminationStatus == 0
    }

    private static func containsMachineCode(_ root: String) -> Bool {
        guard let walker = FileManager.default.enumerator(atPath: root) else { return false }
        while let relative = walker.nextObject() as? String {
            guard relative.hasSuffix(".so") || relative.contains(".so.") else { continue }
            return true
        }
        return false
    }

    private func stagingFolder(_ output: String) throws(ShardError) -> URL {
        let url = URL(fileURLWithPath: output).deletingLastPathComponent()
            .appendingPathComponent(".\(URL(fileURLWithPath: output).lastPathComponent).\(getpid()).site")
        try? FileManager.default.removeItem(at: url)
        do {
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        } catch {
            throw ShardError(.io, "creating \(url.path): \(error)")
        }
        return url
    }

    private func copyTree(_ source: String, to destination: URL) throws(ShardError) {
        let cp = Process()
        cp.executableURL = URL(fileURLWithPath: "/bin/cp")
        cp.arguments = ["-a", "--no-preserve=ownership", source + "/.", destination.path]
        do {
            try cp.run()
        } catch {
            throw ShardError(.io, "copying \(source): \(error)")
        }
        cp.waitUntilExit()
        guard cp.terminationStatus == 0 else { throw ShardError(.io, "copying \(source) failed") }
    }
}
