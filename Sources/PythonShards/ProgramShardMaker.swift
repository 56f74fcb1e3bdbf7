import Foundation
import SquashMounts

/// Makes a program shard from what a field engineer brings: a folder, a zip, a wheel or an
/// sdist. The program mounts at `/opt/programs/NAME` (on `PYTHONPATH`, so its packages
/// import), and its manifest records the entry point and what it requires: `python3`,
/// `--requires` names, the names in a top-level `requirements.txt`, and a wheel's
/// `Requires-Dist`. Those are looked for among the library's shards when it runs, not here:
/// a program may arrive before its libraries.
///
/// The entry point, unless given (`--entry main.py`, `--entry pkg.module`, `--entry pkg.mod:func`):
/// a `main.py` at the top, else a `__main__.py` at the top, else the one package with a
/// `__main__.py`, else the one console script (a wheel's, or `[project.scripts]` of a
/// `pyproject.toml`).
public struct ProgramShardMaker: Sendable {
    public var name: String
    public var version: String
    public var requires: [String] = []
    public var entry: String?
    /// Needed for wheels (their tags and shared objects are checked against it).
    public var target: PythonTarget?
    /// Bytes an archive or wheel may unpack to (see ``UnpackBudget``).
    public var maxUnpackedBytes = UnpackBudget.defaultBytes

    public init(name: String, version: String) {
        self.name = name
        self.version = version
    }

    public var mountPoint: String { "/opt/programs/\(name)" }

    public func make(from source: String, to output: String) throws(ShardError) -> Shard {
        let staging = URL(fileURLWithPath: output).deletingLastPathComponent()
            .appendingPathComponent(".\(URL(fileURLWithPath: output).lastPathComponent).\(getpid()).program")
        try? FileManager.default.removeItem(at: staging)
        defer { try? FileManager.default.removeItem(at: staging) }
        do {
            try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: true)
        } catch {
            throw ShardError(.io, "creating \(staging.path): \(error)")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: source, isDirectory: &isDirectory) else {
            throw ShardError(.io, "\(source) does not exist")
        }
        var root = staging
        var requirements = requires
        var scripts: [(name: String, target: String)] = []
        if isDirectory.boolValue {
            root = URL(fileURLWithPath: source)
        } else if let wheel = WheelName(URL(fileURLWithPath: source).lastPathComponent) {
            guard let target else {
                throw ShardError(.invalidArgument, "a program from a wheel needs the SDK it runs on: give --sdk")
            }
            if let why = wheel.mismatch(for: target) {
                throw ShardError(.wrongArchitecture, "wheel \(wheel.file) does not fit the SDK: \(why)")
            }
            let (metadata, _) = try WheelArchive(path: source, name: wheel).unpack(
                into: staging, target: target, python: "/usr/bin/python3",
                budget: UnpackBudget(maxUnpackedBytes, source: source))
            requirements += metadata.requirements.filter { $0.applies(in: target.markerEnvironment) }.map(\.name)
            scripts = metadata.consoleScripts
        } else {
            try ArchiveExtractor.extract(source, into: staging, budget: UnpackBudget(maxUnpackedBytes, source: source))
            // A zip of a folder, or an sdist (NAME-VERSION/ at its top): the program is that folder.
            let top = (try? FileManager.default.contentsOfDirectory(atPath: staging.path)) ?? []
            var isDir: ObjCBool = false
            if top.count == 1,
                FileManager.default.fileExists(atPath: staging.appendingPathComponent(top[0]).path, isDirectory: &isDir),
                isDir.boolValue
            {
                root = staging.appendingPathComponent(top[0])
            }
        }
        requirements += Self.requirementsFile(root)
        if scripts.isEmpty { scripts = Self.pyprojectScripts(root) }
        let entrypoint = try entryPoint(root, scripts: scripts)
        var seen = Set<String>()
        let capabilities = (["python3"] + requirements.map(PackageRequirement.normalize)).filter { seen.insert($0).inserted }
        var environment = ["PYTHONPATH": mountPoint]
        if FileManager.default.fileExists(atPath: root.appendingPathComponent("bin").path) {
            environment["PATH"] = mountPoint + "/bin"
        }
        // Machine code in a program (a vendored extension module) ties it to the SDK's architecture.
        let architecture = try MachineCode.shardArchitecture(of: root.path, declared: nil)
        if let target, architecture != "any", architecture != target.architecture {
            throw ShardError(
                .wrongArchitecture,
                "the program holds \(architecture) machine code (\(MachineCode.scan(root.path)[architecture] ?? "")), "
                    + "and the SDK is \(target.architecture)")
        }
        var manifest = ShardManifest(
            name: name, version: version, kind: .program, architecture: architecture, placement: .mount(mountPoint),
            requires: capabilities, environment: environment)
        manifest.entrypoint = entrypoint
        var options = SquashfsOptions()
        options.rootOwned = true
        return try ShardBuilder.create(from: root.path, to: output, manifest: manifest, options: options)
    }

    /// The command the entry point stands for.
    private func entryPoint(_ root: URL, scripts: [(name: String, target: String)]) throws(ShardError) -> [String] {
        let fm = FileManager.default
        func exists(_ relative: String) -> Bool { fm.fileExists(atPath: root.appendingPathComponent(relative).path) }
        if let entry {
            if entry.hasSuffix(".py") {
                guard exists(entry), !entry.hasPrefix("/"), !entry.split(separator: "/").contains("..") else {
                    throw ShardError(.notFound, "--entry \(entry): the program has no such file")
                }
                return ["python3", "\(mountPoint)/\(entry)"]
            }
            if entry.contains(":") { return Self.callCommand(entry) }
            return ["python3", "-m", entry]
        }
        if exists("main.py") { return ["python3", "\(mountPoint)/main.py"] }
        if exists("__main__.py") { return ["python3", mountPoint] }
        let packages = ((try? fm.contentsOfDirectory(atPath: root.path)) ?? []).sorted().filter {
            exists("\($0)/__init__.py") && exists("\($0)/__main__.py")
        }
        if packages.count == 1 { return ["python3", "-m", packages[0]] }
        if scripts.count == 1 { return Self.callCommand(scripts[0].target) }
        throw ShardError(
            .invalidArgument,
            "no entry point found in the program (no main.py or __main__.py at its top, no single package with a __main__.py\(scripts.count > 1 ? ", several console scripts: \(scripts.map(\.name).joined(separator: ", "))" : "")); give one with --entry main.py, --entry package.module or --entry module:function"
        )
    }

    /// `module:function` as a command, as a console script calls it.
    static func callCommand(_ target: String) -> [String] {
        let parts = target.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        let attribute = parts.count == 2 ? parts[1] : "main"
        let head = attribute.split(separator: ".").first.map(String.init) ?? attribute
        return ["python3", "-c", "import sys; from \(parts[0]) import \(head); sys.exit(\(attribute)())"]
    }

    /// Distribution names of a top-level requirements.txt (`name`, `name==1.0`, `name>=1; marker`).
    static func requirementsFile(_ root: URL) -> [String] {
        guard let text = FileManager.default.contents(atPath: root.appendingPathComponent("requirements.txt").path) else {
            return []
        }
        return String(decoding: text, as: UTF8.self).split(whereSeparator: \.isNewline).compactMap { line in
            let trimmed = line.split(separator: "#").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
            guard !trimmed.isEmpty, !trimmed.hasPrefix("-") else { return nil }
            return PackageRequirement(trimmed)?.name
        }
    }

    /// `[project.scripts]` of a pyproject.toml: `name = "module:function"` lines.
    static func pyprojectScripts(_ root: URL) -> [(name: String, target: String)] {
        guard let text = FileManager.default.contents(atPath: root.appendingPathComponent("pyproject.toml").path) else {
            return []
        }
        var section = ""
        var scripts: [(String, String)] = []
        for line in String(decoding: text, as: UTF8.self).split(whereSeparator: \.isNewline) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("[") {
                section = trimmed
                continue
            }
            guard section == "[project.scripts]", let eq = trimmed.firstIndex(of: "=") else { continue }
            let key = trimmed[..<eq].trimmingCharacters(in: CharacterSet(charactersIn: " \"'"))
            let value = trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: CharacterSet(charactersIn: " \"'"))
            if !key.isEmpty && !value.isEmpty { scripts.append((key, value)) }
        }
        return scripts
    }
}
