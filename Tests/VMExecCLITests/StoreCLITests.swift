import Foundation
import Testing
import VMExecTestSupport

extension CLISuites {
    /// `vmexec store`, `snapshot`, `diff`, `export` and `run --store` through the real binary.
    @Suite("vmexec store", .timeLimit(.minutes(5)))
    struct StoreCLITests {
        @Test("a file written by one run --store is read by the next; info, snapshots, diff and export; a busy store exits 125")
        func storeCommands() async throws {
            let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-cli-store-\(UUID().uuidString)")
                .path
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sdk = try #require(TestImages.sdkShardPath)
            let create = try await CLITests.vmexec(["store", "create", dir, "--size", "256M", "--shard", sdk])
            #expect(create.status == 0, "\(create.stderr)")
            let write = try await CLITests.vmexec([
                "run", "--store", dir, "--shard", sdk, "--", "sh", "-c", "echo kept > /home/vmexec/note",
            ])
            #expect(write.status == 0, "\(write.stderr)")
            let read = try await CLITests.vmexec(["run", "--store", dir, "--shard", sdk, "--", "cat", "/home/vmexec/note"])
            #expect(read.stdout == "kept\n", "\(read.stderr)")

            let info = try await CLITests.vmexec(["store", "info", dir, "--json"])
            let object = try #require(try JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any])
            #expect(object["sizeBytes"] as? Int == 256 << 20)

            #expect(try await CLITests.vmexec(["snapshot", "create", "--store", dir, "one"]).status == 0)
            let list = try await CLITests.vmexec(["snapshot", "list", "--store", dir])
            #expect(list.stdout.hasPrefix("one\t"))
            _ = try await CLITests.vmexec([
                "run", "--store", dir, "--shard", sdk, "--", "sh", "-c", "echo two > /home/vmexec/two",
            ])
            let diff = try await CLITests.vmexec(["diff", "--store", dir, "--shard", sdk, "--since", "one"])
            #expect(diff.stdout == "A /home/vmexec/two  4 bytes\n", "\(diff.stdout)\(diff.stderr)")
            let wrongLower = try await CLITests.vmexec(["diff", "--store", dir])
            #expect(wrongLower.status == 125, "without the SDK layer the lower differs")
            #expect(wrongLower.stderr.contains("allow-lower-change") || wrongLower.stderr.contains("allowLowerChange"))

            let tar = dir + "/root.tar"
            #expect(try await CLITests.vmexec(["export", "--store", dir, "--shard", sdk, "/home/vmexec", "-o", tar]).status == 0)
            #expect(FileManager.default.fileExists(atPath: tar))

            #expect(try await CLITests.vmexec(["snapshot", "restore", "--store", dir, "one"]).status == 0)
            let restored = try await CLITests.vmexec([
                "run", "--store", dir, "--shard", sdk, "--", "sh", "-c",
                "cat /home/vmexec/note; test -e /home/vmexec/two || echo gone",
            ])
            #expect(restored.stdout == "kept\ngone\n")
            let grow = try await CLITests.vmexec(["store", "grow", dir, "--size", "512M"])
            #expect(grow.status == 0, "\(grow.stderr)")
            let missing = try await CLITests.vmexec(["run", "--store", dir + "/nope", "--", "true"])
            #expect(missing.status == 125)
            #expect(missing.stderr.contains("not a store"))
        }
    }
}
