import Foundation
import SquashMounts
import Testing
import VMExecTestSupport

extension CLISuites {
    /// The shard library as a field engineer drives it: keys, trust, install, --use, activate,
    /// rollback, and a daemon whose sandboxes keep their versions until it restarts.
    @Suite("vmexec keygen, trust, shard install/list/activate/rollback/remove/gc, --use", .timeLimit(.minutes(10)))
    struct LibraryCLITests {
        /// A vendor key, the images' SDK and two versions of a small library, signed; a home for the library.
        final class Setup {
            let home: DaemonHome
            let workshop: ShardWorkshop
            let sdk: String
            let libs: [String]

            init() async throws {
                home = try DaemonHome()
                workshop = try ShardWorkshop()
                let key = home.directory + "/vendor"
                let keygen = try await home.vmexec(["keygen", "-o", key])
                #expect(keygen.status == 0, "\(keygen.stderr)")
                sdk = home.directory + "/sdk-python.shard"
                try FileManager.default.copyItem(atPath: try #require(TestImages.sdkShardPath), toPath: sdk)
                libs = [try workshop.libs(version: "1").path, try workshop.libs(version: "2").path]
                let sign = try await home.vmexec(["shard", "sign", "--key", key + ".key", sdk] + libs)
                #expect(sign.status == 0, "\(sign.stderr)")
                let trust = try await home.vmexec(["trust", "add", key + ".pub"])
                #expect(trust.status == 0 && trust.stdout.contains("trusted key"), "\(trust.stderr)")
            }

            func vmexec(_ args: [String]) async throws -> CLITests.Outcome { try await home.vmexec(args) }

            deinit { home.remove() }
        }

        @Test("install, list, --use with requirements resolved, activate, rollback, remove, gc; the log says who")
        func installAndUse() async throws {
            let s = try await Setup()
            let install = try await s.vmexec(["shard", "install", s.sdk] + s.libs)
            #expect(install.status == 0, "\(install.stderr)")
            #expect(install.stdout.contains("installed vxlib 2 (libs, signed by"), "\(install.stdout)")
            let list = try await s.vmexec(["shard", "list", "--json"])
            let versions = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]] ?? []
            #expect(versions.count == 3, "\(list.stdout)")
            #expect(versions.filter { $0["active"] as? Bool == true }.compactMap { $0["version"] as? String }.count == 2)

            // --use vxlib brings the SDK it requires (python3.11) from the library.
            let script = ["--", "python3", "-c", "import vxlib, sys; print(vxlib.VERSION, sys.version_info[:2])"]
            let run = try await s.vmexec(["run", "--use", "vxlib"] + script)
            #expect(run.status == 0 && run.stdout == "2 (3, 11)\n", "\(run.stdout)\(run.stderr)")
            let rollback = try await s.vmexec(["shard", "rollback", "vxlib"])
            #expect(rollback.stdout == "vxlib: 1 is active (was 2)\n", "\(rollback.stdout)\(rollback.stderr)")
            let older = try await s.vmexec(["run", "--use", "vxlib"] + script)
            #expect(older.stdout == "1 (3, 11)\n", "\(older.stdout)\(older.stderr)")
            let pinned = try await s.vmexec(["run", "--use", "vxlib==2"] + script)
            #expect(pinned.stdout == "2 (3, 11)\n", "\(pinned.stdout)\(pinned.stderr)")

            let removeActive = try await s.vmexec(["shard", "remove", "vxlib", "1"])
            #expect(removeActive.status == 125 && removeActive.stderr.contains("is the active version"), "\(removeActive.stderr)")
            let gc = try await s.vmexec(["shard", "gc"])
            #expect(gc.stdout == "nothing to remove\n", "the rollback target stays: \(gc.stdout)")
            let remove = try await s.vmexec(["shard", "remove", "vxlib", "2"])
            #expect(remove.stdout == "removed vxlib 2\n", "\(remove.stderr)")
            let unknown = try await s.vmexec(["run", "--use", "pandas", "--", "true"])
            #expect(unknown.status == 125 && unknown.stderr.contains("no shard named pandas is installed"), "\(unknown.stderr)")
            let log = try await s.vmexec(["shard", "log"])
            #expect(log.stdout.contains("rollback  vxlib 1"), "\(log.stdout)")
            #expect(log.stdout.contains("remove    vxlib 2"), "\(log.stdout)")
        }

        @Test("from-wheels: numpy's wheel and a pure-Python package that depends on another, in one signed libs shard")
        func fromWheels() async throws {
            let s = try await Setup()
            let wheels = s.home.directory + "/wheels"
            try FileManager.default.createDirectory(atPath: wheels, withIntermediateDirectories: true)
            // The numpy wheel `make images` downloaded (pip download's folder on a connected machine).
            let cache = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("../../images/build/cache/wheels/\(TestImages.architecture.rawValue)/numpy").standardized
                .path
            let numpy = try #require(
                try FileManager.default.contentsOfDirectory(atPath: cache).first {
                    $0.hasPrefix("numpy-") && $0.hasSuffix("_\(TestImages.architecture.rawValue).whl")
                })
            try FileManager.default.copyItem(atPath: cache + "/" + numpy, toPath: wheels + "/" + numpy)
            try WheelFactory.wheel(
                in: wheels, name: "alpha", version: "1.2", requires: ["beta>=1.0", "numpy>=1.20"],
                files: [
                    "alpha/__init__.py":
                        "import numpy\nfrom beta import BETA\ndef main():\n    print('alpha-cli', BETA, int(numpy.arange(4).sum()))\n"
                ],
                consoleScripts: ["alpha-cli": "alpha:main"])
            try WheelFactory.wheel(in: wheels, name: "beta", version: "1.1", files: ["beta/__init__.py": "BETA = 'beta 1.1'\n"])
            let shard = s.home.directory + "/field-libs.shard"
            let made = try await s.vmexec([
                "shard", "from-wheels", wheels, "-o", shard, "--name", "field-libs", "--version", "1", "--sdk", s.sdk,
            ])
            #expect(made.status == 0, "\(made.stderr)")
            #expect(made.stdout.contains("provides alpha==1.2 beta==1.1 numpy==1.26.4"), "\(made.stdout)")
            #expect(try await s.vmexec(["shard", "install", shard]).stderr.contains("is not signed"))
            #expect(try await s.vmexec(["shard", "sign", "--key", s.home.directory + "/vendor.key", shard]).status == 0)
            #expect(try await s.vmexec(["shard", "install", s.sdk, shard]).status == 0)
            let run = try await s.vmexec([
                "run", "--use", "field-libs", "--", "sh", "-c",
                "python3 -c 'import numpy, alpha; print(numpy.__version__, alpha.BETA)' && alpha-cli",
            ])
            #expect(run.status == 0 && run.stdout == "1.26.4 beta 1.1\nalpha-cli beta 1.1 6\n", "\(run.stdout)\(run.stderr)")

            // A wheel for another architecture is refused by name.
            try WheelFactory.wheel(
                in: wheels, name: "gamma", version: "1", python: "cp311", abi: "cp311",
                platform: "manylinux_2_17_\(TestImages.otherArchitecture.rawValue)",
                files: ["gamma/__init__.py": ""])
            let misfit = try await s.vmexec([
                "shard", "from-wheels", wheels, "-o", shard + "2", "--name", "x", "--version", "1", "--sdk", "cpython",
            ])
            #expect(
                misfit.status == 125
                    && misfit.stderr.contains(
                        "gamma-1-cp311-cp311-manylinux_2_17_\(TestImages.otherArchitecture.rawValue).whl does not fit"),
                "\(misfit.stderr)")
        }

        @Test("a program of several files with a package folder: installed, listed and run by name; from a zip and an sdist too")
        func programs() async throws {
            let s = try await Setup()
            #expect(try await s.vmexec(["shard", "install", s.sdk] + s.libs).status == 0)
            let folder = s.home.directory + "/report"
            try FileManager.default.createDirectory(atPath: folder + "/report", withIntermediateDirectories: true)
            try Data(
                "import sys, vxlib\nfrom report.summary import total\nprint('total', total([1, 2, 3]), vxlib.VERSION, sys.argv[1:])\n"
                    .utf8
            )
            .write(to: URL(fileURLWithPath: folder + "/main.py"))
            try Data("".utf8).write(to: URL(fileURLWithPath: folder + "/report/__init__.py"))
            try Data("def total(xs):\n    return sum(xs)\n".utf8).write(to: URL(fileURLWithPath: folder + "/report/summary.py"))
            try Data("vxlib>=1  # the field library\n".utf8).write(to: URL(fileURLWithPath: folder + "/requirements.txt"))
            let install = try await s.vmexec(["program", "install", folder, "--name", "report"])
            #expect(install.stdout.hasPrefix("installed program report 1: python3 /opt/programs/report/main.py"), "\(install)")
            let list = try await s.vmexec(["program", "list"])
            #expect(list.stdout.contains("python3, vxlib"), "\(list.stdout)")
            let run = try await s.vmexec(["program", "run", "report", "--", "north", "--fast"])
            #expect(run.status == 0 && run.stdout == "total 6 2 ['north', '--fast']\n", "\(run.stdout)\(run.stderr)")

            // The same folder as a zip, and as an sdist (NAME-VERSION/ inside), with a package entry point.
            try Data("from report.summary import total\nprint('pkg', total([4]))\n".utf8)
                .write(to: URL(fileURLWithPath: folder + "/report/__main__.py"))
            try FileManager.default.removeItem(atPath: folder + "/main.py")
            let zip = s.home.directory + "/report.zip", sdist = s.home.directory + "/report-2.0.tar.gz"
            let pack = Process()
            pack.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            pack.arguments = [
                "python3", "-c",
                "import shutil, sys; shutil.make_archive(sys.argv[1][:-4], 'zip', sys.argv[3]); shutil.make_archive(sys.argv[2][:-7], 'gztar', sys.argv[3] + '/..', 'report')",
                zip, sdist, folder,
            ]
            try pack.run()
            pack.waitUntilExit()
            for (source, version) in [(zip, "2"), (sdist, "3")] {
                let installed = try await s.vmexec(["program", "install", source, "--name", "report"])
                #expect(installed.stdout.hasPrefix("installed program report \(version) (was"), "\(installed)")
                #expect(installed.stdout.contains("python3 -m report"), "\(installed.stdout)")
                let again = try await s.vmexec(["program", "run", "report"])
                #expect(again.stdout == "pkg 4\n", "\(again.stdout)\(again.stderr)")
            }
        }

        @Test("a program that needs a library absent from the library is refused before boot")
        func programMissingLibrary() async throws {
            let s = try await Setup()
            #expect(try await s.vmexec(["shard", "install", s.sdk]).status == 0)
            let folder = s.home.directory + "/needs"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try Data("import pandas\n".utf8).write(to: URL(fileURLWithPath: folder + "/main.py"))
            let install = try await s.vmexec(["program", "install", folder, "--name", "needs", "--requires", "pandas"])
            #expect(install.status == 0 && install.stdout.contains("note: it cannot run yet"), "\(install)")
            let started = Date()
            let run = try await s.vmexec(["program", "run", "needs"])
            #expect(run.status == 125, "\(run)")
            #expect(run.stderr.contains("needs 1 requires pandas, which no active shard provides"), "\(run.stderr)")
            #expect(Date().timeIntervalSince(started) < 20, "refused before a guest boots")
        }

        @Test("unsigned and revoked shards are refused at install and at attach, before anything boots")
        func refusals() async throws {
            let s = try await Setup()
            let unsigned = try s.workshop.libs(version: "3").path
            let refused = try await s.vmexec(["shard", "install", unsigned])
            #expect(refused.status == 125 && refused.stderr.contains("is not signed"), "\(refused.stderr)")
            #expect(try await s.vmexec(["shard", "install", s.sdk, s.libs[0]]).status == 0)
            let revoke = try await s.vmexec(["trust", "revoke", "vendor"])
            #expect(revoke.status == 0, "\(revoke.stderr)")
            let started = Date()
            let atAttach = try await s.vmexec(["run", "--use", "vxlib", "--", "true"])
            #expect(atAttach.status == 125 && atAttach.stderr.contains("which was revoked on"), "\(atAttach.stderr)")
            #expect(Date().timeIntervalSince(started) < 20, "refused before a guest boots")
            let list = try await s.vmexec(["trust", "list"])
            #expect(list.stdout.contains("revoked"), "\(list.stdout)")
        }

        @Test("the daemon names library shards; a sandbox keeps its versions until the daemon restarts; held versions stay")
        func daemonUsesLibrary() async throws {
            let s = try await Setup()
            #expect(try await s.vmexec(["shard", "install", s.sdk] + s.libs).status == 0)
            let up = try await s.vmexec(["up", "dev", "--shard", "vxlib"])
            #expect(up.status == 0, "\(up.stderr)")
            let probe = ["exec", "dev", "--", "python3", "-c", "import vxlib; print(vxlib.VERSION)"]
            #expect(try await s.vmexec(probe).stdout == "2\n")
            #expect(try await s.vmexec(["shard", "activate", "vxlib", "1"]).status == 0)
            #expect(try await s.vmexec(probe).stdout == "2\n", "the running sandbox keeps its version")
            let held = try await s.vmexec(["shard", "remove", "vxlib", "2"])
            #expect(held.status == 125 && held.stderr.contains("in use by a running sandbox"), "\(held.stderr)")

            // Restarted, the daemon brings the sandbox back with the active version.
            let pid = try #require(s.home.daemonPID)
            kill(pid, SIGTERM)
            for _ in 0..<300 where kill(pid, 0) == 0 { try await Task.sleep(for: .milliseconds(100)) }
            let daemon = try await s.home.serve()
            defer { daemon.terminate() }
            var after = ""
            for _ in 0..<60 {
                after = try await s.vmexec(probe).stdout
                if after == "1\n" { break }
                try await Task.sleep(for: .seconds(1))
            }
            #expect(after == "1\n", "after the restart the sandbox has the active version")
            #expect(try await s.vmexec(["shard", "remove", "vxlib", "2"]).status == 0)
        }
    }
}
