import Foundation
import PersistOverlay
import SerialChannel
import SquashMounts
import Testing

@testable import VMExecutor

/// A store for one test, in a scratch directory removed at the end.
final class ScratchStore {
    let directory: URL
    let store: Store

    init(size: UInt64 = 512 << 20, shards: [Shard]? = nil) throws {
        directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-store-\(UUID().uuidString)")
        let c = SharedGuest.configuration()
        let images = try #require(c.images)
        store = try Store.create(
            at: directory, size: size, lower: try Sandbox.lower(rootfs: images.rootfs, shards: shards ?? c.shards))
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    /// A sandbox over this store (not started).
    func sandbox() -> Sandbox {
        var c = SharedGuest.configuration()
        c.store = store
        return Sandbox(configuration: c, logger: SharedGuest.logger())
    }
}

/// A minimal pure-Python wheel of the package `vxpure` (VALUE = 7), made with the host's zipfile.
private func pureWheel() throws -> [UInt8] {
    let out = NSTemporaryDirectory() + "vxpure-\(UUID().uuidString).whl"
    defer { unlink(out) }
    let script = """
        import sys, zipfile
        files = {
            "vxpure/__init__.py": "VALUE = 7\\n",
            "vxpure-1.0.dist-info/METADATA": "Metadata-Version: 2.1\\nName: vxpure\\nVersion: 1.0\\n",
            "vxpure-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: vmexec-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
        }
        files["vxpure-1.0.dist-info/RECORD"] = "".join(f"{name},,\\n" for name in files) + "vxpure-1.0.dist-info/RECORD,,\\n"
        with zipfile.ZipFile(sys.argv[1], "w") as z:
            for name, text in files.items():
                z.writestr(name, text)
        """
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", script, out]
    try p.run()
    p.waitUntilExit()
    return [UInt8](try Data(contentsOf: URL(fileURLWithPath: out)))
}

/// The entry names of a tar, sorted, as GNU tar lists them.
private func tarNames(_ tar: String) throws -> [String] {
    let listing = Process()
    listing.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    listing.arguments = ["tar", "tf", tar]
    let pipe = Pipe()
    listing.standardOutput = pipe
    try listing.run()
    let names = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    listing.waitUntilExit()
    return names.split(separator: "\n").map(String.init).sorted()
}

/// Hashes of every file under a directory, as the guest computes them.
private func treeHashes(_ s: Sandbox, _ dir: String) async throws -> String {
    try await s.exec(Command(["sh", "-c", "cd \(dir) && find . -type f | LC_ALL=C sort | xargs -r sha256sum"])).stdoutText
}

extension RealGuests {
    @Suite("Overlay stores in a guest", .timeLimit(.minutes(10)))
    struct StoreGuestTests {
        @Test(
            "what one guest writes, the next reads (user xattrs too); pip install --target in one run is importable in the next")
        func persists() async throws {
            let scratch = try ScratchStore()
            let first = scratch.sandbox()
            try await first.start()
            #expect(try await first.exec(Command(["sh", "-c", "echo kept > /home/vmexec/note"])).exitCode == 0)
            let tagged = try await first.exec(
                Command([
                    "python3", "-c",
                    "import os; os.setxattr('/home/vmexec/note', 'user.vmexec', b'kept')",
                ]))
            #expect(tagged.exitCode == 0, "user xattrs work on the store's ext4: \(tagged.stderrText)")
            let install = try await first.exec(
                Command(
                    [
                        "sh", "-c",
                        """
                        cat > /tmp/vxpure-1.0-py3-none-any.whl && \
                        python3 -m pip install --quiet --no-index --target /home/vmexec/pylib /tmp/vxpure-1.0-py3-none-any.whl
                        """,
                    ], stdin: .bytes(try pureWheel()), privateTmp: false))
            #expect(install.exitCode == 0, "\(install.stderrText)")
            await first.shutdown()

            let second = scratch.sandbox()
            try await second.start()
            #expect(try await second.exec(Command(["cat", "/home/vmexec/note"])).stdoutText == "kept\n")
            let tag = try await second.exec(
                Command([
                    "python3", "-c",
                    "import os; print(os.getxattr('/home/vmexec/note', 'user.vmexec').decode())",
                ]))
            #expect(tag.stdoutText == "kept\n", "\(tag.stderrText)")
            let imported = try await second.exec(
                Command(
                    ["python3", "-c", "import vxpure; print(vxpure.VALUE)"],
                    environment: ["PYTHONPATH": "/home/vmexec/pylib"]))
            #expect(imported.stdoutText == "7\n", "\(imported.stderrText)")
            #expect(
                try await second.exec(Command(["cat", "/tmp/vxpure-1.0-py3-none-any.whl"], privateTmp: false)).exitCode != 0,
                "the guest's shared /tmp is its own, not the store's")
            await second.shutdown()
        }

        @Test("QEMU killed mid-write: the next start recovers the store, the synced file is intact, e2fsck -n passes")
        func crash() async throws {
            let scratch = try ScratchStore()
            let s = scratch.sandbox()
            try await s.start()
            let written = try await s.exec(
                Command(["sh", "-c", "head -c 3000000 /dev/urandom > /home/vmexec/A && sha256sum /home/vmexec/A"]))
            try await s.sync()
            let writer = try await s.stream(
                Command(["sh", "-c", "while :; do head -c 1000000 /dev/urandom >> /home/vmexec/B; done"]))
            try await Task.sleep(for: .seconds(1))
            kill(try #require(await s.qemuProcessID), SIGKILL)
            do { for try await _ in writer {} } catch {}  // ends with the guest

            try await s.start()
            #expect(try await s.exec(Command(["sha256sum", "/home/vmexec/A"])).stdoutText == written.stdoutText)
            #expect(try await s.exec(Command(["true"])).exitCode == 0)
            await s.shutdown()
            let fsck = Process()
            fsck.executableURL = URL(fileURLWithPath: "/sbin/e2fsck")
            fsck.arguments = ["-n", "-f", scratch.store.image]
            fsck.standardOutput = FileHandle.nullDevice
            fsck.standardError = FileHandle.nullDevice
            try fsck.run()
            fsck.waitUntilExit()
            #expect(fsck.terminationStatus == 0, "e2fsck -n found problems after recovery")
        }

        @Test(
            "two guests on one store: the second is refused naming the first, which is unharmed; once it is killed the store opens"
        )
        func oneGuestAtATime() async throws {
            let scratch = try ScratchStore()
            let first = scratch.sandbox()
            try await first.start()
            let second = scratch.sandbox()
            let error = try await #require(throws: VMExecError.self) { try await second.start() }
            #expect(error.code == .storeBusy)
            #expect(error.message.contains("pid \(getpid())"), "\(error)")
            #expect(await second.qemuProcessID == nil)
            #expect(
                try await first.exec(Command(["sh", "-c", "echo fine > /home/vmexec/f && cat /home/vmexec/f"])).stdoutText
                    == "fine\n")
            try await first.sync()  // what was synced survives the kill below

            kill(try #require(await first.qemuProcessID), SIGKILL)
            var opened = false
            for _ in 0..<50 where !opened {
                do {
                    try await second.start()
                    opened = true
                } catch let e as VMExecError where e.code == .storeBusy {
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            #expect(opened)
            #expect(try await second.exec(Command(["cat", "/home/vmexec/f"])).stdoutText == "fine\n")
            await second.shutdown()
        }

        @Test("snapshot while running, change and delete, restore: every file's hash is the snapshot's")
        func snapshotRestore() async throws {
            let scratch = try ScratchStore()
            let s = scratch.sandbox()
            try await s.start()
            _ = try await s.exec(
                Command(
                    [
                        "sh", "-c",
                        """
                        mkdir -p /data/sub && head -c 200000 /dev/urandom > /data/a && echo b > /data/b && \
                        head -c 70000 /dev/urandom > /data/sub/c && rm -f /etc/issue
                        """,
                    ], user: .root))
            let before = try await treeHashes(s, "/data")
            // The deletion of a lower file exports as an OCI whiteout.
            let etcTar = scratch.directory.appendingPathComponent("etc.tar").path
            try await s.export("/etc", to: etcTar)
            #expect(try tarNames(etcTar).contains("etc/.wh.issue"))
            // A writer busy during the snapshot is held, then goes on.
            let writer = try await s.stream(
                Command(["sh", "-c", "i=0; while [ $i -lt 300 ]; do echo $i >> /home/vmexec/log; i=$((i+1)); done; echo done"]))
            try await s.snapshot("first")
            var said = ""
            for try await event in writer { if case .stdout(let b) = event { said += String(decoding: b, as: UTF8.self) } }
            #expect(said == "done\n")
            #expect(try await s.exec(Command(["sh", "-c", "wc -l < /home/vmexec/log"])).stdoutText == "300\n")
            _ = try await s.exec(Command(["rm", "/home/vmexec/log"]))
            _ = try await s.exec(
                Command(
                    ["sh", "-c", "echo changed > /data/b && rm /data/sub/c && echo new > /data/d && echo back > /etc/issue"],
                    user: .root))
            #expect(try await treeHashes(s, "/data") != before)

            // The diff since the snapshot is exactly what changed (read from a copy while the guest runs).
            let changes = try await s.diff(since: "first")
            let summary = changes.map { "\($0.kind.rawValue) \($0.path)" }
            let expected: [String] = ["changed /data/b", "added /data/d", "deleted /data/sub/c", "added /etc/issue"]
            #expect(summary == expected, "\(summary)")
            #expect(changes.first { $0.path == "/data/b" }?.size == 8)
            let sinceCreation = try await s.diff().map { "\($0.kind.rawValue) \($0.path)" }
            #expect(sinceCreation.contains("added /data/a") && sinceCreation.contains("changed /etc/issue"), "\(sinceCreation)")

            let tar = scratch.directory.appendingPathComponent("data.tar").path
            try await s.export("/data", to: tar)
            #expect(try tarNames(tar) == ["data/", "data/a", "data/b", "data/d", "data/sub/"])

            try await s.restore(snapshot: "first")
            #expect(await s.isRunning)
            #expect(try await treeHashes(s, "/data") == before)
            #expect(try await s.exec(Command(["test", "-e", "/etc/issue"])).exitCode == 1, "the deletion is restored too")
            try await s.resetStore()
            #expect(try await s.exec(Command(["test", "-e", "/data"])).exitCode == 1, "reset empties the store")
            #expect(try await s.exec(Command(["test", "-e", "/etc/issue"])).exitCode == 0, "the base shows through again")
            await s.shutdown()
            let error = try await #require(throws: VMExecError.self) { try await s.restore(snapshot: "nope") }
            #expect(error.code == .storeRefused)
        }

        @Test("a store frozen by a host that goes away thaws: writers go on")
        func freezeThawsOnDisconnect() async throws {
            let scratch = try ScratchStore()
            let s = scratch.sandbox()
            try await s.start()
            try await #require(await s.channelForTesting).request(.freeze)
            try await s.reconnect()
            // A write into a store left frozen would block for good: give it 30 s, then kill the guest.
            let pid = await s.qemuProcessID
            let watchdog = Task {
                try await Task.sleep(for: .seconds(30))
                if let pid { kill(pid, SIGKILL) }
            }
            let wrote = try? await s.exec(Command(["sh", "-c", "echo after > /home/vmexec/after && cat /home/vmexec/after"]))
            watchdog.cancel()
            #expect(wrote?.stdoutText == "after\n", "a write into the store did not finish: it stayed frozen")
            await s.shutdown()
        }

        @Test("a command filling the store gets ENOSPC; the guest answers; deleting frees the space")
        func diskFull() async throws {
            let scratch = try ScratchStore(size: 128 << 20)
            let s = scratch.sandbox()
            try await s.start()
            let fill = try await s.exec(Command(["sh", "-c", "head -c 300M /dev/zero > /home/vmexec/big"]))
            #expect(fill.exitCode != 0)
            #expect(fill.stderrText.contains("No space left on device"), "\(fill.stderrText)")
            #expect(try await s.exec(Command(["true"])).exitCode == 0)
            let full = try await s.exec(
                Command(["sh", "-c", "df -k --output=avail /mnt 2>/dev/null | tail -1; stat -f -c '%a %S' /root"]))
            let freeBytes = { (text: String) -> Int in
                let parts = text.split(separator: "\n").last?.split(separator: " ").compactMap { Int($0) } ?? []
                return parts.count == 2 ? parts[0] * parts[1] : -1
            }
            #expect(freeBytes(full.stdoutText) < 4 << 20, "the store is full: \(full.stdoutText)")
            _ = try await s.exec(Command(["rm", "/home/vmexec/big"]))
            let freed = try await s.exec(Command(["stat", "-f", "-c", "%a %S", "/root"]))
            #expect(freeBytes(freed.stdoutText) > 50 << 20, "deleting frees the space: \(freed.stdoutText)")
            #expect(
                try await s.exec(Command(["sh", "-c", "echo more > /home/vmexec/small && cat /home/vmexec/small"])).stdoutText
                    == "more\n")
            await s.shutdown()
        }

        @Test("a store made over another lower is refused before boot unless allowed")
        func lowerChanged() async throws {
            let scratch = try ScratchStore(shards: [])  // made over the base alone
            let s = scratch.sandbox()
            let error = try await #require(throws: VMExecError.self) { try await s.start() }
            #expect(error.code == .storeRefused)
            #expect(error.message.contains("allowLowerChange"), "\(error)")
            var c = SharedGuest.configuration()
            c.store = scratch.store
            c.allowLowerChange = true
            let allowed = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await allowed.start()
            #expect(try await allowed.exec(Command(["true"])).exitCode == 0)
            await allowed.shutdown()
        }
    }
}
