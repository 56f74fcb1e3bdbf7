import Foundation
import Testing
import VMExecClient
import VMExecTestSupport

/// A daemon's private runtime and state folders, and the CLI run against them.
struct DaemonHome {
    let directory: String
    var environment: [String: String] { ["VMEXEC_RUNTIME": directory + "/run", "VMEXEC_STATE": directory + "/state"] }
    var socket: String { directory + "/run/daemon.sock" }
    var client: DaemonClient { .unixSocket(socket) }

    init() throws {
        directory = NSTemporaryDirectory() + "vmexec-home-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    /// The CLI, against this daemon.
    func vmexec(_ args: [String], stdin: String? = nil) async throws -> CLISuites.CLITests.Outcome {
        try await CLISuites.CLITests.vmexec(args, stdin: stdin, environment: environment)
    }

    /// The running daemon's pid (from the file it keeps beside its socket).
    var daemonPID: Int32? {
        (try? String(contentsOfFile: socket + ".pid", encoding: .utf8)).flatMap {
            Int32($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    /// Starts `vmexec serve` by hand (as after a crash), and waits until it answers.
    func serve(logLevel: String = "warning", _ arguments: [String] = []) async throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: vmexecBinary)
        p.arguments = ["serve", "--log-level", logLevel] + arguments
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        try FileManager.default.createDirectory(atPath: directory + "/run", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: directory + "/run/daemon.log", contents: nil)
        p.standardError = FileHandle(forWritingAtPath: directory + "/run/daemon.log")
        try p.run()
        for _ in 0..<300 {
            if (try? await client.health()) != nil { return p }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TestTimeout(description: "the daemon did not answer within 30 s")
    }

    /// Stops whatever daemon serves this home (SIGTERM, then SIGKILL) and removes the folder.
    func remove() {
        if let pid = daemonPID {
            kill(pid, SIGTERM)
            for _ in 0..<100 where kill(pid, 0) == 0 { usleep(100_000) }
            kill(pid, SIGKILL)
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

extension CLISuites {
    /// The daemon as a user drives it: `vmexec up` starts it, the other commands talk to it.
    @Suite("vmexec up, exec, cp, ps, kill, jobs, logs, down", .timeLimit(.minutes(10)))
    struct DaemonCLITests {
        @Test(
            "up starts the daemon; exec streams and forwards stdin; cp moves 1 GiB both ways in bounded memory; ps, kill, jobs, logs, down"
        )
        func daemonCommands() async throws {
            let home = try DaemonHome()
            defer { home.remove() }
            let up = try await home.vmexec(["up", "dev", "--shard", "cpython", "--store", "work"])
            #expect(up.status == 0 && up.stdout == "dev\n", "\(up.stderr)")
            #expect(up.stderr.contains("started the daemon"), "the CLI says it started the daemon: \(up.stderr)")
            let daemon = try #require(home.daemonPID)
            let ls = try await home.vmexec(["ls", "--json"])
            let listed = try JSONSerialization.jsonObject(with: Data(ls.stdout.utf8)) as? [[String: Any]] ?? []
            #expect(listed.first?["name"] as? String == "dev" && listed.first?["state"] as? String == "running", "\(ls.stdout)")
            #expect(listed.first?["host"] as? String == "local", "a daemon without --host runs everything here: \(ls.stdout)")
            let hosts = try await home.vmexec(["hosts"])
            let hostLines = hosts.stdout.split(separator: "\n")
            #expect(hostLines.first?.hasPrefix("HOST") == true && hostLines.count == 2, "\(hosts.stdout)\(hosts.stderr)")
            #expect(hostLines.last?.hasPrefix("local") == true && hostLines.last?.contains(" up ") == true, "\(hosts.stdout)")

            // exec: output, exit code, stdin, run's options.
            let fed = try await home.vmexec(
                ["exec", "dev", "--", "sh", "-c", "cat; echo done; echo warn >&2; exit 3"], stdin: "through the daemon\n")
            #expect(fed.status == 3 && fed.stdout == "through the daemon\ndone\n" && fed.stderr == "warn\n", "\(fed)")
            let asRoot = try await home.vmexec([
                "exec", "dev", "--user", "root", "--memory-limit", "96M", "--env", "X=y", "--workdir", "/etc", "--", "sh",
                "-c", "id -u; cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max; echo $X; pwd",
            ])
            #expect(asRoot.stdout == "0\n\(96 << 20)\ny\n/etc\n", "\(asRoot.stdout)\(asRoot.stderr)")
            let python = try await home.vmexec(["exec", "dev", "--", "python3", "-c", "print(6*7)"])
            #expect(python.stdout == "42\n", "\(python.stderr)")
            let missing = try await home.vmexec(["exec", "dev", "--", "no-such-program"])
            #expect(missing.status == 127, "\(missing.stderr)")
            let timedOut = try await home.vmexec(["exec", "dev", "--timeout", "1", "--", "sleep", "30"])
            #expect(timedOut.status == 124 && timedOut.stderr.contains("timed out"), "\(timedOut.stderr)")
            let badLimit = try await home.vmexec(["exec", "dev", "--memory-limit", "lots", "--", "true"])
            #expect(badLimit.status == 125 && badLimit.stderr.contains("--memory-limit"), "\(badLimit.stderr)")

            // ps shows a job's processes; kill --group ends them, and the job's exec sees the signal.
            let sleeper = Task { try await home.vmexec(["exec", "dev", "--", "sh", "-c", "sleep 300 & sleep 301"]) }
            var pids: [Int] = []
            for _ in 0..<100 where pids.count < 2 {
                let ps = try await home.vmexec(["ps", "dev", "--json"])
                let list = try JSONSerialization.jsonObject(with: Data(ps.stdout.utf8)) as? [[String: Any]] ?? []
                pids = list.filter { ($0["arguments"] as? [String])?.first == "sleep" }.compactMap { $0["pid"] as? Int }
                if pids.count < 2 { try await Task.sleep(for: .milliseconds(200)) }
            }
            #expect(pids.count == 2)
            let killed = try await home.vmexec(["kill", "dev", "\(pids.first ?? 0)", "--signal", "KILL", "--group"])
            #expect(killed.status == 0, "\(killed.stderr)")
            #expect(try await sleeper.value.status == 137)
            let noSuch = try await home.vmexec(["kill", "dev", "\(pids.first ?? 0)"])
            #expect(noSuch.status == 125 && noSuch.stderr.contains("No such process"), "\(noSuch.stderr)")

            // jobs lists them all; logs prints one's output.
            let jobs = try await home.vmexec(["jobs", "dev", "--json"])
            let jobList = try JSONSerialization.jsonObject(with: Data(jobs.stdout.utf8)) as? [[String: Any]] ?? []
            #expect(jobList.count == 6, "\(jobs.stdout)")
            let first = try #require(jobList.first?["id"] as? String)
            let logs = try await home.vmexec(["logs", "dev", first])
            #expect(logs.stdout == "through the daemon\ndone\n" && logs.stderr == "warn\n", "\(logs)")

            // 1 GiB in and out, by the CLI through the daemon, with equal checksums and bounded memory.
            let big = home.directory + "/big.bin", back = home.directory + "/back.bin"
            #expect(FileManager.default.createFile(atPath: big, contents: nil))
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: big))
            var block = [UInt8](repeating: 0, count: 1 << 20)
            for i in 0..<1024 {
                for j in stride(from: 0, to: block.count, by: 64) { block[j] = UInt8(truncatingIfNeeded: i &+ j >> 6) }
                try h.write(contentsOf: block)
            }
            try h.close()
            let expected = try sha256(ofFile: big)
            let daemonBefore = peakKiB(of: daemon) ?? 0
            let into = try await runMeasured(["cp", big, "dev:/home/vmexec/big.bin"], environment: home.environment)
            #expect(into.status == 0, "\(into.stderr)")
            let sum = try await home.vmexec(["exec", "dev", "--", "sha256sum", "/home/vmexec/big.bin"])
            #expect(sum.stdout.hasPrefix(expected), "\(sum.stdout)\(sum.stderr)")
            let out = try await runMeasured(["cp", "dev:/home/vmexec/big.bin", back], environment: home.environment)
            #expect(out.status == 0, "\(out.stderr)")
            #expect(try sha256(ofFile: back) == expected)
            let daemonAfter = peakKiB(of: daemon) ?? 0
            print(
                "daemon 1 GiB: cp in peak \(into.peakKiB >> 10) MiB, cp out peak \(out.peakKiB >> 10) MiB, daemon peak \(daemonBefore >> 10) -> \(daemonAfter >> 10) MiB"
            )
            // The bound: a 1024 MiB file may raise no process's peak memory by more than 128 MiB.
            #expect(into.peakKiB > 0 && into.peakKiB < 128 << 10, "cp in peaked at \(into.peakKiB) KiB")
            #expect(out.peakKiB > 0 && out.peakKiB < 128 << 10, "cp out peaked at \(out.peakKiB) KiB")
            #expect(daemonAfter - daemonBefore < 128 << 10, "the daemon's peak went from \(daemonBefore) to \(daemonAfter) KiB")

            // Snapshots of the sandbox's store while its guest runs: taken, listed, restored.
            _ = try await home.vmexec(["exec", "dev", "--", "sh", "-c", "echo before > /home/vmexec/mark"])
            let snap = try await home.vmexec(["snapshot", "create", "--sandbox", "dev", "s1"])
            #expect(snap.status == 0 && snap.stdout == "snapshot s1 of sandbox dev\n", "\(snap)")
            _ = try await home.vmexec(["exec", "dev", "--", "sh", "-c", "echo after > /home/vmexec/mark"])
            let snaps = try await home.vmexec(["snapshot", "list", "--sandbox", "dev", "--json"])
            let snapList = try JSONSerialization.jsonObject(with: Data(snaps.stdout.utf8)) as? [[String: Any]] ?? []
            #expect(snapList.map { $0["name"] as? String } == ["s1"], "\(snaps.stdout)")
            let restored = try await home.vmexec(["snapshot", "restore", "--sandbox", "dev", "s1"])
            #expect(restored.status == 0, "\(restored.stderr)")
            let mark = try await home.vmexec(["exec", "dev", "--", "cat", "/home/vmexec/mark"])
            #expect(mark.stdout == "before\n", "\(mark)")
            let both = try await home.vmexec(["snapshot", "list", "--sandbox", "dev", "--store", "x"])
            #expect(both.status != 0 && both.stderr.contains("one of them"), "\(both.stderr)")

            let down = try await home.vmexec(["down", "dev"])
            #expect(down.status == 0, "\(down.stderr)")
            let gone = try await home.vmexec(["ps", "dev"])
            #expect(gone.status == 125 && gone.stderr.contains("no sandbox named dev"), "\(gone.stderr)")
            #expect(try await home.vmexec(["ls"]).stdout.split(separator: "\n").count == 1, "only the header is left")
        }

        @Test("no daemon: exec fails at once; a daemon killed under exec: it says so and exits 125")
        func daemonGone() async throws {
            let home = try DaemonHome()
            defer { home.remove() }
            let started = ContinuousClock.now
            let none = try await home.vmexec(["exec", "dev", "--", "true"])
            #expect(none.status == 125 && none.stderr.contains("no vmexec daemon answers"), "\(none.stderr)")
            let far = try await CLISuites.CLITests.vmexec(
                ["ls"],
                environment: home.environment.merging(["VMEXEC_DAEMON_URL": "http://127.0.0.1:1", "VMEXEC_TOKEN": "t"]) { $1 })
            #expect(far.status == 125 && far.stderr.contains("no vmexec daemon answers at"), "\(far.stderr)")
            #expect(ContinuousClock.now - started < .seconds(20), "both answered at once, without waiting on retries")

            #expect(try await home.vmexec(["up", "dev"]).status == 0)
            let daemon = try #require(home.daemonPID)
            let running = Task { try await home.vmexec(["exec", "dev", "--", "sh", "-c", "echo started; sleep 60"]) }
            for _ in 0..<300 {
                if try await home.client.jobs("dev").contains(where: { $0.state == "running" }) { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            kill(daemon, SIGKILL)
            let cut = try await running.value
            // Killed while the stream runs ("broke"), or before exec reached it ("did not answer").
            #expect(
                cut.status == 125 && (cut.stderr.contains("broke") || cut.stderr.contains("did not answer")), "\(cut.stderr)")
        }
    }
}
