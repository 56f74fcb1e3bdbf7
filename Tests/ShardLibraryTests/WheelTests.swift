import Foundation
import SquashMounts
import Testing
import VMExecTestSupport

@testable import PythonShards

/// Libs shards from wheels, decided on the host: versions, markers, tags, RECORDs, requirements.
@Suite("Libs shards from wheels")
struct WheelTests {
    static let cpython311 = PythonTarget(major: 3, minor: 11, fullVersion: "3.11.2", architecture: "x86_64", glibc: (2, 36))

    @Test("PEP 440 order and specifiers")
    func versions() throws {
        let ordered = ["1.0.dev1", "1.0a1", "1.0b2", "1.0rc1", "1.0", "1.0.post1", "1.1", "1!0.5"]
        let parsed = ordered.compactMap(PackageVersion.init)
        #expect(parsed.count == ordered.count)
        #expect(zip(parsed, parsed.dropFirst()).allSatisfy { $0 < $1 })
        #expect(PackageVersion("1.0") == PackageVersion("1.0.0"))
        let v = try #require(PackageVersion("1.26.4"))
        #expect(v.satisfies(">=1.21,<2") && v.satisfies("~=1.26") && v.satisfies("==1.26.*") && v.satisfies(""))
        #expect(!v.satisfies(">=2") && !v.satisfies("!=1.26.4") && !v.satisfies("~=1.25.0") && !v.satisfies("==1.25.*"))
        #expect(PackageVersion("not a version") == nil)
    }

    @Test("PEP 508 requirements and markers")
    func markers() throws {
        let env = Self.cpython311.markerEnvironment
        let plain = try #require(PackageRequirement("numpy (>=1.21)"))
        #expect(plain.name == "numpy" && plain.specifier == ">=1.21" && plain.applies(in: env))
        let old = try #require(PackageRequirement("importlib-metadata>=4; python_version < \"3.10\""))
        #expect(!old.applies(in: env))
        let linux = try #require(
            PackageRequirement("x[a,b]>=1 ; sys_platform == 'linux' and (python_version >= '3.8' or os_name == 'nt')"))
        #expect(linux.extras == ["a", "b"] && linux.applies(in: env))
        let extra = try #require(PackageRequirement("pytest; extra == \"test\""))
        #expect(!extra.applies(in: env))
        #expect(extra.applies(in: env.merging(["extra": "test"]) { $1 }))
        #expect(try #require(PackageRequirement("y; platform_machine in 'x86_64 aarch64'")).applies(in: env))
        #expect(PackageRequirement.normalize("Python_Dateutil.x") == "python-dateutil-x")
    }

    @Test("wheel tags fit CPython 3.11 on x86_64 with glibc 2.36 as pip decides")
    func tags() throws {
        let fits = [
            "a-1-py3-none-any.whl", "a-1-py2.py3-none-any.whl", "a-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "a-1-cp38-abi3-manylinux_2_28_x86_64.whl", "a-1-cp311-none-any.whl", "a-1-py310-none-any.whl",
        ]
        for file in fits { #expect(WheelName(file)?.mismatch(for: Self.cpython311) == nil, "\(file)") }
        let misfits = [
            "a-1-cp312-cp312-manylinux_2_17_x86_64.whl", "a-1-cp311-cp311-manylinux_2_17_aarch64.whl",
            "a-1-cp311-cp311-manylinux_2_39_x86_64.whl", "a-1-cp311-cp311-musllinux_1_1_x86_64.whl",
            "a-1-cp311-cp311-win_amd64.whl", "a-1-py2-none-any.whl", "a-1-cp313-abi3-manylinux_2_17_x86_64.whl",
        ]
        for file in misfits { #expect(WheelName(file)?.mismatch(for: Self.cpython311) != nil, "\(file)") }
    }

    @Test("a folder of wheels becomes one shard; misfits, damage and missing requirements are refused by name")
    func folder() throws {
        let root = NSTemporaryDirectory() + "vmexec-wheels-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let wheels = root + "/wheels"
        try FileManager.default.createDirectory(atPath: wheels, withIntermediateDirectories: true)
        try WheelFactory.wheel(
            in: wheels, name: "alpha", version: "1.2",
            requires: ["beta>=1.0", "gamma; extra == \"docs\"", "delta; python_version < \"3.8\""],
            files: ["alpha/__init__.py": "from beta import BETA\n"], consoleScripts: ["alpha-cli": "alpha:main"])
        try WheelFactory.wheel(in: wheels, name: "beta", version: "1.1", files: ["beta/__init__.py": "BETA = 1\n"])
        let maker = LibsShardMaker(name: "field", version: "1", target: Self.cpython311)
        let report = try maker.make(from: wheels, to: root + "/field.shard")
        #expect(report.distributions == ["alpha==1.2", "beta==1.1"])
        let m = report.shard.manifest
        #expect(m.kind == .libs && m.architecture == "any" && m.requires == ["python3.11"])
        #expect(m.placement == .mount("/opt/libs/field") && m.environment["PATH"] == "/opt/libs/field/bin")
        let paths = try report.shard.paths()
        #expect(paths.contains("/alpha/__init__.py") && paths.contains("/beta/__init__.py") && paths.contains("/bin/alpha-cli"))
        var script = Data()
        try report.shard.readFile("/bin/alpha-cli") { script.append(contentsOf: $0) }
        #expect(String(decoding: script, as: UTF8.self).hasPrefix("#!/usr/bin/python3\n"))

        // beta too old for alpha's >=1.0... is fine; beta missing is not.
        try FileManager.default.removeItem(atPath: wheels + "/beta-1.1-py3-none-any.whl")
        let missing = shardError { _ = try maker.make(from: wheels, to: root + "/x.shard") }
        #expect(missing?.code == .unmetRequirement)
        #expect(
            missing?.message.contains("alpha 1.2 requires beta>=1.0, which no wheel of the folder is") == true,
            "\(missing?.message ?? "")")
        var external = maker
        external.external = ["beta"]
        #expect(try external.make(from: wheels, to: root + "/x.shard").shard.manifest.requires == ["python3.11", "beta"])
        try FileManager.default.removeItem(atPath: root + "/x.shard")
        try WheelFactory.wheel(in: wheels, name: "beta", version: "0.9", files: ["beta/__init__.py": "BETA = 0\n"])
        #expect(
            shardError { _ = try maker.make(from: wheels, to: root + "/x.shard") }?.message.contains("the folder has beta 0.9")
                == true)
        try FileManager.default.removeItem(atPath: wheels + "/beta-0.9-py3-none-any.whl")
        try WheelFactory.wheel(in: wheels, name: "beta", version: "1.1", files: ["beta/__init__.py": "BETA = 1\n"])

        // A wheel for another Python is refused naming it; so is a damaged one.
        let other = try WheelFactory.wheel(
            in: wheels, name: "gamma", version: "1", python: "cp312", abi: "cp312", platform: "manylinux_2_17_x86_64",
            files: ["gamma/__init__.py": ""])
        let misfit = shardError { _ = try maker.make(from: wheels, to: root + "/x.shard") }
        #expect(
            misfit?.message.contains("gamma-1-cp312-cp312-manylinux_2_17_x86_64.whl does not fit the SDK") == true,
            "\(misfit?.message ?? "")")
        try FileManager.default.removeItem(atPath: other)
        try WheelFactory.wheel(in: wheels, name: "epsilon", version: "1", files: ["epsilon.py": "x = 1\n"], corruptRecord: true)
        #expect(shardError { _ = try maker.make(from: wheels, to: root + "/x.shard") }?.code == .checksumMismatch)
        // Refused builds leave neither a shard nor their staging folder behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).sorted() == ["field.shard", "wheels"])
    }

    @Test("a wheel whose entries climb out of the site folder is refused")
    func traversal() throws {
        let root = NSTemporaryDirectory() + "vmexec-wheels-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root + "/w", withIntermediateDirectories: true)
        try WheelFactory.wheel(in: root + "/w", name: "evil", version: "1", files: ["../../escape.py": "x = 1\n"])
        let error = shardError {
            _ = try LibsShardMaker(name: "e", version: "1", target: Self.cpython311).make(
                from: root + "/w", to: root + "/e.shard")
        }
        #expect(error?.code == .pathTraversal, "\(String(describing: error))")
        #expect(!FileManager.default.fileExists(atPath: root + "/escape.py"))
    }
}

/// Program shards and libs from a site-packages folder, made on the host.
@Suite("Program shards")
struct ProgramShardTests {
    func scratch() throws -> String {
        let root = NSTemporaryDirectory() + "vmexec-programs-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        return root
    }

    func write(_ text: String, _ path: String) throws {
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    @Test("entry points: main.py, __main__.py, a package's __main__, pyproject scripts, --entry; none is refused")
    func entryPoints() throws {
        let root = try scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        func entry(_ folder: String, _ given: String? = nil) throws -> [String]? {
            var maker = ProgramShardMaker(name: "p", version: "1")
            maker.entry = given
            return try maker.make(from: folder, to: root + "/p-\(UUID().uuidString.prefix(6)).shard").manifest.entrypoint
        }
        try write("print(1)\n", root + "/a/main.py")
        #expect(try entry(root + "/a") == ["python3", "/opt/programs/p/main.py"])
        try write("print(1)\n", root + "/b/__main__.py")
        #expect(try entry(root + "/b") == ["python3", "/opt/programs/p"])
        try write("", root + "/c/tool/__init__.py")
        try write("print(1)\n", root + "/c/tool/__main__.py")
        #expect(try entry(root + "/c") == ["python3", "-m", "tool"])
        try write("", root + "/d/tool/__init__.py")
        try write("[project]\nname = \"tool\"\n\n[project.scripts]\ntool-run = \"tool.cli:main\"\n", root + "/d/pyproject.toml")
        #expect(try entry(root + "/d") == ["python3", "-c", "import sys; from tool.cli import main; sys.exit(main())"])
        #expect(try entry(root + "/d", "tool.cli") == ["python3", "-m", "tool.cli"])
        #expect(shardError { _ = try entry(root + "/d", "missing.py") }?.code == .notFound)
        try write("", root + "/e/lib/__init__.py")
        #expect(shardError { _ = try entry(root + "/e") }?.message.contains("no entry point found") == true)
    }

    @Test("a program from a wheel: its console script is the entry point, its dependencies the requirements")
    func wheelProgram() throws {
        let root = try scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let wheel = try WheelFactory.wheel(
            in: root, name: "field-report", version: "2.0", requires: ["numpy>=1.20", "colorama; sys_platform == \"win32\""],
            files: ["field_report/__init__.py": "def main():\n    print('report')\n"],
            consoleScripts: ["field-report": "field_report:main"])
        var maker = ProgramShardMaker(name: "report", version: "2.0")
        maker.target = WheelTests.cpython311
        let shard = try maker.make(from: wheel, to: root + "/report.shard")
        #expect(shard.manifest.kind == .program && shard.manifest.placement == .mount("/opt/programs/report"))
        #expect(shard.manifest.requires == ["python3", "numpy"], "the Windows-only dependency does not apply")
        #expect(
            shard.manifest.entrypoint == ["python3", "-c", "import sys; from field_report import main; sys.exit(main())"])
        #expect(try shard.paths().contains("/field_report/__init__.py"))
        maker.target = nil
        #expect(shardError { _ = try maker.make(from: wheel, to: root + "/x.shard") }?.message.contains("--sdk") == true)
    }

    @Test("wheel files stream to disk: big files intact, a script's #!python line, foreign machine code, shared paths")
    func streamedFiles() throws {
        let root = try scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let wheels = root + "/wheels"
        try FileManager.default.createDirectory(atPath: wheels, withIntermediateDirectories: true)
        // 3 MiB and a bit: several of the reader's 1 MiB chunks, the last one partial.
        let big = (0..<(3 << 20) + 12345).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
        try WheelFactory.wheel(
            in: wheels, name: "alpha", version: "1", files: ["alpha-1.data/scripts/tool": "#!python\nprint('tool')\n"],
            binaryFiles: ["alpha/blob.bin": big])
        try WheelFactory.wheel(in: wheels, name: "beta", version: "1", files: ["shared/common.py": "X = 1\n"])
        try WheelFactory.wheel(in: wheels, name: "gamma", version: "1", files: ["shared/common.py": "X = 1\n"])
        let maker = LibsShardMaker(name: "streamed", version: "1", target: WheelTests.cpython311)
        let shard = try maker.make(from: wheels, to: root + "/streamed.shard").shard
        var blob = [UInt8]()
        try shard.readFile("/alpha/blob.bin") { blob.append(contentsOf: $0) }
        #expect(blob == big)
        var script = Data()
        try shard.readFile("/bin/tool") { script.append(contentsOf: $0) }
        #expect(String(decoding: script, as: UTF8.self) == "#!/usr/bin/python3\nprint('tool')\n")

        // The same path with other bytes in another wheel is a conflict naming it.
        try WheelFactory.wheel(in: wheels, name: "delta", version: "1", files: ["shared/common.py": "X = 2\n"])
        let conflict = shardError { _ = try maker.make(from: wheels, to: root + "/x.shard") }
        #expect(conflict?.code == .conflict && conflict?.message.contains("shared/common.py") == true)
        try FileManager.default.removeItem(atPath: wheels + "/delta-1-py3-none-any.whl")

        // A shared object for aarch64 in a wheel for this x86_64 SDK is refused by its ELF header.
        var elf = [UInt8](repeating: 0, count: 64)
        elf[0...5] = [0x7f, 0x45, 0x4c, 0x46, 2, 1]
        elf[18] = 183
        try WheelFactory.wheel(in: wheels, name: "epsilon", version: "1", files: [:], binaryFiles: ["epsilon/_ext.so": elf])
        let foreign = shardError { _ = try maker.make(from: wheels, to: root + "/x.shard") }
        #expect(foreign?.code == .wrongArchitecture && foreign?.message.contains("epsilon/_ext.so") == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).sorted() == ["streamed.shard", "wheels"])
    }

    @Test("an archive or wheels that unpack past the budget are refused, and leave nothing behind")
    func decompressionBomb() throws {
        let root = try scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        // 4 MiB of zeros compress to a few KiB: a bomb in small.
        let zip = root + "/bomb.zip"
        let make = Process()
        make.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        make.arguments = [
            "python3", "-c",
            "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n    z.writestr('main.py', 'print(1)\\n')\n    z.writestr('zeros.bin', bytes(4 << 20))",
            zip,
        ]
        try make.run()
        make.waitUntilExit()
        var program = ProgramShardMaker(name: "bomb", version: "1")
        program.maxUnpackedBytes = 1 << 20
        let refused = shardError { _ = try program.make(from: zip, to: root + "/bomb.shard") }
        #expect(refused?.message.contains("unpacks to more than 1 MiB (at zeros.bin)") == true, "\(String(describing: refused))")
        program.maxUnpackedBytes = 8 << 20
        #expect(try program.make(from: zip, to: root + "/fits.shard").manifest.name == "bomb")

        let wheels = root + "/wheels"
        try FileManager.default.createDirectory(atPath: wheels, withIntermediateDirectories: true)
        try WheelFactory.wheel(
            in: wheels, name: "big", version: "1", files: ["big/data.txt": String(repeating: "0", count: 100_000)])
        var libs = LibsShardMaker(name: "big", version: "1", target: WheelTests.cpython311)
        libs.maxUnpackedBytes = 64 << 10
        #expect(
            shardError { _ = try libs.make(from: wheels, to: root + "/big.shard") }?.message.contains("more than 65536 bytes")
                == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).sorted() == ["bomb.zip", "fits.shard", "wheels"])
    }

    @Test("libs from a site-packages folder: its distributions provided, machine code for another architecture refused")
    func sitePackages() throws {
        let root = try scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let site = root + "/site-packages"
        try write("X = 1\n", site + "/alpha/__init__.py")
        try write(
            "Metadata-Version: 2.1\nName: alpha\nVersion: 1.0\nRequires-Dist: beta\n\n", site + "/alpha-1.0.dist-info/METADATA")
        let maker = LibsShardMaker(name: "site", version: "1", target: WheelTests.cpython311)
        #expect(shardError { _ = try maker.make(from: site, to: root + "/s.shard") }?.code == .unmetRequirement)
        try write("Y = 2\n", site + "/beta.py")
        try write("Metadata-Version: 2.1\nName: beta\nVersion: 3\n\n", site + "/beta-3.dist-info/METADATA")
        let report = try maker.make(from: site, to: root + "/s.shard")
        #expect(report.distributions == ["alpha==1.0", "beta==3"])
        #expect(report.shard.manifest.architecture == "any")
        // An aarch64 shared object in an x86_64 folder.
        var elf = [UInt8](repeating: 0, count: 64)
        elf[0...3] = [0x7f, 0x45, 0x4c, 0x46]
        elf[18] = 183
        try Data(elf).write(to: URL(fileURLWithPath: site + "/alpha/_speedups.cpython-311-aarch64-linux-gnu.so"))
        let wrong = shardError { _ = try maker.make(from: site, to: root + "/t.shard") }
        #expect(wrong?.code == .wrongArchitecture, "\(String(describing: wrong))")
    }
}
