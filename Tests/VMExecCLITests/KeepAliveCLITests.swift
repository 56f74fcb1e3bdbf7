import Crypto
import Foundation
import Testing
import VMExecTestSupport

/// Peak resident memory (VmHWM) of a running process, in KiB; nil once it is gone.
func peakKiB(of pid: Int32) -> Int? { memoryKiB("VmHWM", of: pid) }

/// The CLI binary `make test` builds.
var vmexecBinary: String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/debug/vmexec")
        .standardized.path
}

/// A CLI process run to its end on a Dispatch thread, with its peak memory sampled while it runs.
func runMeasured(_ args: [String], timeout: Double = 300) async throws -> (status: Int32, stderr: String, peakKiB: Int) {
    try await withCheckedThrowingContinuation { c in
        DispatchQueue.global().async {
            c.resume(
                with: Result {
                    let p = Process()
                    p.executableURL = URL(fileURLWithPath: vmexecBinary)
                    p.arguments = args
                    let err = Pipe()
                    p.standardError = err
                    p.standardOutput = FileHandle.nullDevice
                    try p.run()
                    let deadline = Date().addingTimeInterval(timeout)
                    var peak = 0
                    while p.isRunning {
                        if let kib = peakKiB(of: p.processIdentifier) { peak = max(peak, kib) }
                        if Date() > deadline { kill(p.processIdentifier, SIGKILL) }
                        usleep(20_000)
                    }
                    p.waitUntilExit()
                    let e = err.fileHandleForReading.readDataToEndOfFile()
                    return (p.terminationStatus, String(decoding: e, as: UTF8.self), peak)
                })
        }
    }
}

/// sha256 of a host file, read in 1 MiB pieces.
func sha256(ofFile path: String) throws -> String {
    let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
    defer { try? h.close() }
    var hasher = SHA256()
    while let d = try h.read(upToCount: 1 << 20), !d.isEmpty { hasher.update(data: d) }
    return hasher.finalize().map { String(format: "%02x", $0) }.joined()
}

extension CLISuites {
    /// A guest kept alive by `vmexec run --keep-alive`, driven by `vmexec exec`, `cp`, `ps`, `kill` and `stop`.
    @Suite("vmexec run --keep-alive", .timeLimit(.minutes(10)))
    struct KeepAliveCLITests {
        @Test(
            "cp moves 1 GiB in and out with equal checksums in bounded memory; ps lists and kill ends a command's group; stop ends the guest"
        )
        func keepAlive() async throws {
            let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-keep-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sdk = try #require(TestImages.sdkShardPath)
            let store = dir + "/store"
            #expect(try await CLITests.vmexec(["store", "create", store, "--size", "3G", "--shard", sdk]).status == 0)
            let name = "t\(UInt32.random(in: 0...UInt32.max))"

            // The keeper: a guest with the store, up until `vmexec stop`.
            let keeper = Process()
            keeper.executableURL = URL(fileURLWithPath: vmexecBinary)
            keeper.arguments = ["run", "--keep-alive", name, "--store", store, "--shard", sdk]
            keeper.standardError = FileHandle.nullDevice
            try keeper.run()
            defer { if keeper.isRunning { kill(keeper.processIdentifier, SIGKILL) } }
            var up = false
            for _ in 0..<120 where !up {
                up = try await CLITests.vmexec(["ps", name]).status == 0
                if !up { try await Task.sleep(for: .milliseconds(500)) }
            }
            try #require(up, "the kept-alive guest answers vmexec ps")

            // ps shows a running command under its stream; kill --group ends it and everything it started.
            let sleeper = Task { try await CLITests.vmexec(["exec", name, "--", "sh", "-c", "sleep 300 & sleep 301"]) }
            var pids: [Int] = []
            for _ in 0..<60 where pids.count < 2 {
                let ps = try await CLITests.vmexec(["ps", name, "--json"])
                let list = try JSONSerialization.jsonObject(with: Data(ps.stdout.utf8)) as? [[String: Any]] ?? []
                pids = list.filter { ($0["arguments"] as? [String])?.first == "sleep" && ($0["stream"] as? Int ?? 0) != 0 }
                    .compactMap { $0["pid"] as? Int }
                if pids.count < 2 { try await Task.sleep(for: .milliseconds(200)) }
            }
            #expect(pids.count == 2)
            let killed = try await CLITests.vmexec(["kill", name, "\(pids[0])", "--signal", "KILL", "--group"])
            #expect(killed.status == 0, "\(killed.stderr)")
            #expect(try await sleeper.value.status == 137)
            let noSuch = try await CLITests.vmexec(["kill", name, "\(pids[0])"])
            #expect(noSuch.status == 125 && noSuch.stderr.contains("No such process"), "\(noSuch.stderr)")

            // 1 GiB in and out.
            let big = dir + "/big.bin", back = dir + "/back.bin"
            #expect(FileManager.default.createFile(atPath: big, contents: nil))
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: big))
            var block = [UInt8](repeating: 0, count: 1 << 20)
            for i in 0..<1024 {
                for j in stride(from: 0, to: block.count, by: 64) { block[j] = UInt8(truncatingIfNeeded: i &+ j >> 6) }
                try h.write(contentsOf: block)
            }
            try h.close()
            let expected = try sha256(ofFile: big)

            let keeperBefore = peakKiB(of: keeper.processIdentifier) ?? 0
            let into = try await runMeasured(["cp", big, "\(name):/home/vmexec/big.bin"])
            #expect(into.status == 0, "\(into.stderr)")
            let sum = try await CLITests.vmexec(["exec", name, "--", "sha256sum", "/home/vmexec/big.bin"])
            #expect(sum.stdout.hasPrefix(expected), "\(sum.stdout)\(sum.stderr)")
            let out = try await runMeasured(["cp", "\(name):/home/vmexec/big.bin", back])
            #expect(out.status == 0, "\(out.stderr)")
            #expect(try sha256(ofFile: back) == expected)
            let keeperAfter = peakKiB(of: keeper.processIdentifier) ?? 0

            print(
                "keep-alive 1 GiB: cp in peak \(into.peakKiB >> 10) MiB, cp out peak \(out.peakKiB >> 10) MiB, keeper peak \(keeperBefore >> 10) -> \(keeperAfter >> 10) MiB"
            )
            // The bound: a 1024 MiB file may raise no process's peak memory by more than 128 MiB.
            #expect(into.peakKiB > 0 && into.peakKiB < 128 << 10, "cp in peaked at \(into.peakKiB) KiB")
            #expect(out.peakKiB > 0 && out.peakKiB < 128 << 10, "cp out peaked at \(out.peakKiB) KiB")
            #expect(keeperAfter - keeperBefore < 128 << 10, "the keeper's peak went from \(keeperBefore) to \(keeperAfter) KiB")

            // exec takes run's options: user, limits, environment, working directory, /tmp.
            let asRoot = try await CLITests.vmexec([
                "exec", name, "--user", "root", "--memory-limit", "96M", "--env", "X=y",
                "--workdir", "/etc", "--", "sh", "-c",
                "id -u; cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max; echo $X; pwd",
            ])
            #expect(asRoot.stdout == "0\n\(96 << 20)\ny\n/etc\n", "\(asRoot.stdout)\(asRoot.stderr)")
            let asUser = try await CLITests.vmexec(["exec", name, "--user", "1234:1234", "--", "id", "-u"])
            #expect(asUser.stdout == "1234\n", "\(asUser.stderr)")
            // stdin reaches the command through the keeper; a command that does not read it still ends.
            let fed = try await CLITests.vmexec(
                ["exec", name, "--", "sh", "-c", "cat; echo done"], stdin: "through the keeper\n")
            #expect(fed.status == 0 && fed.stdout == "through the keeper\ndone\n", "\(fed.stdout)\(fed.stderr)")
            let ignored = try await CLITests.vmexec(["exec", name, "--", "true"], stdin: String(repeating: "x", count: 1 << 20))
            #expect(ignored.status == 0, "\(ignored.stderr)")
            let badLimit = try await CLITests.vmexec(["exec", name, "--memory-limit", "lots", "--", "true"])
            #expect(badLimit.status == 125 && badLimit.stderr.contains("--memory-limit"), "\(badLimit.stderr)")

            let stop = try await CLITests.vmexec(["stop", name])
            #expect(stop.status == 0, "\(stop.stderr)")
            for _ in 0..<100 where keeper.isRunning { try await Task.sleep(for: .milliseconds(100)) }
            #expect(!keeper.isRunning && keeper.terminationStatus == 0)
            let gone = try await CLITests.vmexec(["ps", name])
            #expect(gone.status == 125 && gone.stderr.contains("no guest named"))
        }
    }
}
