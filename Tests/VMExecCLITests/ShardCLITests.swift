import Foundation
import SquashMounts
import Testing
import VMExecTestSupport

extension CLISuites {
    /// `vmexec shard …` and `vmexec run --shard` through the real binary.
    @Suite("vmexec shard", .timeLimit(.minutes(5)))
    struct ShardCLITests {
        @Test(
            "create, inspect and verify (text and JSON), cat a file; run with the shard; a damaged one exits 125 with the reason")
        func roundTrip() async throws {
            let workshop = try ShardWorkshop()
            let tree = workshop.root.appendingPathComponent("tree")
            try FileManager.default.createDirectory(at: tree.appendingPathComponent("tool"), withIntermediateDirectories: true)
            try Data("#!/bin/sh\necho tool says hi\n".utf8).write(to: tree.appendingPathComponent("tool/hi"))
            chmod(tree.appendingPathComponent("tool/hi").path, 0o755)
            let shard = workshop.root.appendingPathComponent("tool.shard").path

            let create = try await CLITests.vmexec([
                "shard", "create", tree.path, "-o", shard, "--name", "tool", "--version", "1.2",
                "--kind", "program", "--mount", "/opt/tool", "--env", "PATH=/opt/tool/tool",
                "--compressor", "xz", "--block-size", "65536",
            ])
            #expect(create.status == 0, "\(create.stderr)")
            #expect(create.stdout.contains("tool 1.2"))

            let inspect = try await CLITests.vmexec(["shard", "inspect", shard, "--hashes"])
            #expect(inspect.status == 0)
            #expect(inspect.stdout.contains("xz, block 65536"), "\(inspect.stdout)")
            #expect(inspect.stdout.contains("/tool/hi"))
            let json = try await CLITests.vmexec(["shard", "inspect", shard, "--json"])
            let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
            let manifest = try #require(object["manifest"] as? [String: Any])
            #expect(manifest["name"] as? String == "tool")
            #expect((object["entries"] as? [[String: Any]])?.contains { $0["path"] as? String == "/tool/hi" } == true)
            let cat = try await CLITests.vmexec(["shard", "inspect", shard, "--cat", "/tool/hi"])
            #expect(cat.stdout == "#!/bin/sh\necho tool says hi\n")
            let verify = try await CLITests.vmexec(["shard", "verify", shard, "--json"])
            #expect(verify.status == 0)
            #expect(verify.stdout.contains("\"checks\""))

            let run = try await CLITests.vmexec(["run", "--shard", shard, "--", "hi"])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.stdout == "tool says hi\n", "the shard's PATH entry reaches the command")

            let handle = try #require(FileHandle(forUpdatingAtPath: shard))
            try handle.seek(toOffset: 1000)
            try handle.write(contentsOf: Data([0xff, 0x00, 0xff]))
            try handle.close()
            let bad = try await CLITests.vmexec(["shard", "verify", shard])
            #expect(bad.status == 125)
            #expect(bad.stderr.contains("tool 1.2") && bad.stderr.contains("damaged"), "\(bad.stderr)")
            let badRun = try await CLITests.vmexec(["run", "--shard", shard, "--", "true"])
            #expect(badRun.status == 125)
            #expect(badRun.stderr.contains("damaged"), "\(badRun.stderr)")
            let missing = try await CLITests.vmexec(["run", "--shard", "/nonexistent.shard", "--", "true"])
            #expect(missing.status == 125)
            #expect(missing.stderr.contains("does not exist"))
        }
    }
}
