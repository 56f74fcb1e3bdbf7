import Foundation
import SquashMounts
import Testing
import VMExecTestSupport

@testable import VMExecutor

/// What the test script sees: the SDK release (its marker, or "base" without one) and vxlib's version.
private let probe = Command([
    "python3", "-c",
    """
    try:
        import vxsdk; sdk = vxsdk.RELEASE
    except ImportError:
        sdk = "base"
    import vxlib
    print(sdk, vxlib.VERSION)
    """,
])

extension RealGuests {
    @Suite("Shards in a guest", .timeLimit(.minutes(10)))
    struct ShardGuestTests {
        @Test("bad shards are refused before boot, each with an error naming the shard and the reason")
        func refusedBeforeBoot() async throws {
            let workshop = try ShardWorkshop()
            let sdk = try Shard.open(try #require(SharedGuest.sdkShardPath))
            let good = try workshop.libs(version: "1.0")

            let damaged = try workshop.libs(version: "1.1")
            let handle = try #require(FileHandle(forUpdatingAtPath: damaged.path))
            try handle.seek(toOffset: damaged.imageBytes / 2)  // inside the squashfs image
            try handle.write(contentsOf: Data([0x5a]))
            try handle.close()

            let cases: [(String, [Shard], String)] = [
                ("damaged", [sdk, damaged], "sha256"),
                ("unmet requirement", [try workshop.libs(version: "2.0", requires: ["python9.9"])], "python9.9"),
                (
                    "other architecture",
                    [sdk, try workshop.libs(version: "3.0", architecture: TestImages.otherArchitecture.rawValue)],
                    TestImages.otherArchitecture.rawValue
                ),
                ("same mount point", [sdk, good, try otherShard(workshop, at: "/opt/libs/vxlib")], "/opt/libs/vxlib"),
            ]
            for (what, shards, reason) in cases {
                var c = SharedGuest.configuration()
                c.shards = shards
                let sandbox = Sandbox(configuration: c, logger: SharedGuest.logger())
                let error = try await #require(throws: VMExecError.self, "\(what)") { try await sandbox.start() }
                #expect(error.code == .shardRefused, "\(what): \(error)")
                #expect(error.message.contains(reason), "\(what): \(error)")
                #expect(await sandbox.qemuProcessID == nil, "\(what): refused before QEMU was launched")
            }
        }

        /// A started sandbox with the SDK shard and `shard`.
        static func started(with shard: Shard) async throws -> Sandbox {
            var c = SharedGuest.configuration()
            c.shards.append(shard)
            let sandbox = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await sandbox.start()
            return sandbox
        }

        private func otherShard(_ workshop: ShardWorkshop, at mount: String) throws -> Shard {
            let tree = workshop.root.appendingPathComponent("other")
            try FileManager.default.createDirectory(at: tree, withIntermediateDirectories: true)
            try Data("x".utf8).write(to: tree.appendingPathComponent("x"))
            return try ShardBuilder.create(
                from: tree.path, to: workshop.root.appendingPathComponent("other.shard").path,
                manifest: ShardManifest(name: "other", version: "1", kind: .data, placement: .mount(mount)))
        }

        @Test("a mounted shard is read-only (EROFS), nosuid and nodev; its environment reaches commands")
        func readOnly() async throws {
            let workshop = try ShardWorkshop()
            let sandbox = try await Self.started(with: try workshop.libs(version: "1.0"))
            defer { Task { await sandbox.shutdown() } }
            let write = try await sandbox.exec(Command(["sh", "-c", "echo x > /opt/libs/vxlib/vxlib/new.py"]))
            #expect(write.exitCode != 0)
            #expect(write.stderrText.contains("Read-only file system"), "\(write.stderrText)")
            let mounts = try await sandbox.exec(Command(["sh", "-c", "grep ' /opt/libs/vxlib ' /proc/mounts"]))
            #expect(mounts.stdoutText.contains("squashfs ro,nosuid,nodev"), "\(mounts.stdoutText)")
            let env = try await sandbox.exec(Command(["sh", "-c", "echo $PYTHONPATH"]))
            #expect(env.stdoutText == "/opt/libs/vxlib\n")
            #expect(try await sandbox.exec(probe).stdoutText == "base 1.0\n")

            // Layers stack by order, above the base: the higher one's file wins.
            try await sandbox.attach(try workshop.layer(name: "high", order: 30))
            try await sandbox.attach(try workshop.layer(name: "low", order: 20))
            let layered = try await sandbox.exec(Command(["sh", "-c", "cat /etc/vxlayer /etc/vxlayer-low /etc/vxlayer-high"]))
            #expect(layered.stdoutText == "high\nlow\nhigh\n", "\(layered.stderrText)")
            let root = try await sandbox.exec(Command(["sh", "-c", "grep '^overlay / ' /proc/mounts"]))
            #expect(root.stdoutText.contains("nosuid,nodev"), "the root with its layers is nosuid and nodev: \(root.stdoutText)")
        }

        @Test("libs and SDK shards are replaced independently: in a running guest by detach and attach, and across restarts")
        func replaceIndependently() async throws {
            let workshop = try ShardWorkshop()
            let sdk = try Shard.open(try #require(SharedGuest.sdkShardPath))
            let libs1 = try workshop.libs(version: "1.0"), libs2 = try workshop.libs(version: "2.0")
            let sdkB = try workshop.sdk(release: "B")
            var c = SharedGuest.configuration()
            c.shards = [sdk, libs1]
            let sandbox = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await sandbox.start()
            #expect(try await sandbox.exec(probe).stdoutText == "base 1.0\n")

            // A libs update reaches the running guest; the SDK stays.
            try await sandbox.detach("vxlib")
            #expect(try await sandbox.exec(Command(["python3", "-c", "import vxlib"])).exitCode == 1)
            try await sandbox.attach(libs2)
            #expect(try await sandbox.exec(probe).stdoutText == "base 2.0\n")

            // An SDK update (a layer) reaches it too; the libs stay.
            try await sandbox.detach("cpython")
            #expect(
                try await sandbox.exec(Command(["sh", "-c", "command -v python3"])).exitCode != 0,
                "without the SDK layer the base has no Python")
            try await sandbox.attach(sdkB)
            #expect(try await sandbox.exec(probe).stdoutText == "B 2.0\n")

            // Across a restart the guest gets the shards it had.
            await sandbox.shutdown()
            try await sandbox.start()
            #expect(try await sandbox.exec(probe).stdoutText == "B 2.0\n")
            #expect(await sandbox.shards.map(\.manifest.version).sorted() == ["2.0", sdkB.manifest.version].sorted())
            await sandbox.shutdown()

            // And a fresh sandbox given other versions runs with those.
            var other = SharedGuest.configuration()
            other.shards = [sdk, libs2]
            let fresh = Sandbox(configuration: other, logger: SharedGuest.logger())
            try await fresh.start()
            #expect(try await fresh.exec(probe).stdoutText == "base 2.0\n")
            await fresh.shutdown()
        }

        @Test("while a drive request waits for a disk that never comes, commands go on; it fails after 10 s naming the drive")
        func driveWaitDoesNotStall() async throws {
            let s = try await SharedGuest.shared.get()
            let channel = try #require(await s.channelForTesting)
            let asked = ContinuousClock.now
            let waiting = Task { try await channel.request(.mount(serial: "vxs-never", target: "/opt/never")) }
            try await Task.sleep(for: .milliseconds(200))
            let during = ContinuousClock.now
            let echo = try await s.exec(Command(["echo", "served"]))
            #expect(echo.stdoutText == "served\n")
            #expect(ContinuousClock.now - during < .seconds(3), "a command is served while the drive request waits")
            await #expect {
                try await waiting.value
            } throws: { error in
                "\(error)".contains("vxs-never") && "\(error)".contains("10 s")
            }
            #expect(ContinuousClock.now - asked >= .seconds(9), "the request waited for its disk before failing")
        }

        @Test("detaching a shard in use is refused with the reason; once the user is gone it detaches")
        func detachInUse() async throws {
            let workshop = try ShardWorkshop()
            let sandbox = try await Self.started(with: try workshop.libs(version: "1.0"))
            defer { Task { await sandbox.shutdown() } }
            let user = try await sandbox.stream(Command(["sleep", "300"], workingDirectory: "/opt/libs/vxlib"))
            try await Task.sleep(for: .milliseconds(300))
            let busy = try await #require(throws: VMExecError.self) { try await sandbox.detach("vxlib") }
            #expect(busy.code == .shardBusy)
            #expect(busy.message.contains("in use by pid") && busy.message.contains("sleep"), "\(busy)")
            let layerBusy = try await #require(throws: VMExecError.self) { try await sandbox.detach("cpython") }
            #expect(layerBusy.code == .shardBusy, "a layer changes only while no command runs: \(layerBusy)")

            try await user.signal(SIGKILL)
            for try await _ in user {}

            // A command with a mount namespace of its own (its private /tmp)
            // that does not use the shard does not hold it, and sees it go.
            let (input, go) = AsyncStream<[UInt8]>.makeStream()
            let bystander = try await sandbox.stream(
                Command(
                    ["sh", "-c", "ls /opt/libs/vxlib; read x; ls /opt/libs/vxlib; echo done"],
                    stdin: .stream(input), privateTmp: true))
            var events = bystander.makeAsyncIterator()
            var seen: [UInt8] = []
            while !seen.contains(UInt8(ascii: "\n")), let e = try await events.next() {
                if case .stdout(let b) = e { seen += b }
            }
            #expect(!seen.isEmpty, "the bystander saw the shard before")
            try await sandbox.detach("vxlib")
            go.yield([UInt8]("go\n".utf8))
            go.finish()
            var after: [UInt8] = []
            while let e = try await events.next() { if case .stdout(let b) = e { after += b } }
            #expect(
                String(decoding: after, as: UTF8.self) == "done\n",
                "gone from the bystander's view too: \(String(decoding: after, as: UTF8.self))")
            try await sandbox.attach(try workshop.libs(version: "1.0"))
            try await sandbox.detach("vxlib")
            #expect(try await sandbox.exec(Command(["ls", "/opt/libs/vxlib"])).stdoutText == "")
            #expect(await sandbox.shards.map(\.manifest.name) == ["cpython"])
            let unknown = try await #require(throws: VMExecError.self) { try await sandbox.detach("vxlib") }
            #expect(unknown.code == .invalidRequest)
        }
    }
}
