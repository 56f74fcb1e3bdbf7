import Foundation
import Testing

extension CLISuites {
    /// `vmexec run` as a user runs it: the real binary, a real guest per run.
    @Suite("vmexec run", .timeLimit(.minutes(5)))
    struct CLITests {
        struct Outcome {
            var status: Int32
            var stdout: String
            var stderr: String
        }

        /// Runs the CLI on a Dispatch thread: its waits must not hold one of the
        /// few threads of Swift's cooperative pool, which other tests need.
        static func vmexec(
            _ args: [String], stdin: String? = nil, signalOnOutput: (Int32, String)? = nil,
            environment: [String: String] = [:]
        ) async throws -> Outcome {
            try await withCheckedThrowingContinuation { c in
                DispatchQueue.global().async {
                    c.resume(
                        with: Result {
                            try runBlocking(args, stdin: stdin, signalOnOutput: signalOnOutput, environment: environment)
                        })
                }
            }
        }

        private static func runBlocking(
            _ args: [String], stdin: String?, signalOnOutput: (Int32, String)?, environment: [String: String]
        ) throws -> Outcome {
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized
            let cli = root.appendingPathComponent(".build/debug/vmexec").path
            try #require(FileManager.default.isExecutableFile(atPath: cli), "build the CLI first (make test does)")
            let p = Process()
            p.executableURL = URL(fileURLWithPath: cli)
            p.arguments = args
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            let out = Pipe(), err = Pipe(), input = Pipe()
            p.standardOutput = out
            p.standardError = err
            p.standardInput = input
            try p.run()
            // A hung CLI must fail its test, not hang the suite: test time limits
            // cannot interrupt a blocking wait.
            DispatchQueue.global().asyncAfter(deadline: .now() + 120) {
                if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            }
            if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
            try input.fileHandleForWriting.close()
            var o = Data()
            if let (sig, marker) = signalOnOutput {
                // Signal once the command shows it runs (its output arrived here).
                while !String(decoding: o, as: UTF8.self).contains(marker) {
                    let chunk = out.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    o += chunk
                }
                kill(p.processIdentifier, sig)
            }
            o += out.fileHandleForReading.readDataToEndOfFile()
            let e = err.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return Outcome(
                status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                stderr: String(decoding: e, as: UTF8.self))
        }

        static let exitCases: [([String], Int32)] = [
            (["sh", "-c", "echo out; echo err >&2; exit 7"], 7),
            (["no-such-program"], 127),
            (["/etc/hostname"], 126),
            (["sh", "-c", "kill -KILL $$"], 137),
        ]

        @Test("exit codes follow docker run", arguments: exitCases)
        func exitCodes(command: [String], expected: Int32) async throws {
            let r = try await Self.vmexec(["run", "--accel", "tcg", "--"] + command)
            #expect(r.status == expected, "stderr: \(r.stderr)")
            if expected == 7 {
                #expect(r.stdout == "out\n")
                #expect(r.stderr == "err\n")
            }
            if expected == 127 { #expect(r.stderr.contains("no-such-program")) }
        }

        @Test("a command past --timeout exits 124 and says so")
        func timeout() async throws {
            let r = try await Self.vmexec(["run", "--accel", "tcg", "--timeout", "1", "--", "sleep", "30"])
            #expect(r.status == 124)
            #expect(r.stderr.contains("timed out"))
        }

        @Test("stdin, --env and --workdir reach the command")
        func stdinEnvWorkdir() async throws {
            let r = try await Self.vmexec(
                [
                    "run", "--accel", "tcg", "--env", "WHO=field engineer", "--workdir", "/etc", "--",
                    "sh", "-c", "cat; echo \"$WHO\"; pwd",
                ], stdin: "from the host\n")
            #expect(r.status == 0)
            #expect(r.stdout == "from the host\nfield engineer\n/etc\n")
        }

        @Test("usage errors and missing images are vmexec's own errors: 125 with a sentence")
        func ownErrors() async throws {
            let noCommand = try await Self.vmexec(["run"])
            #expect(noCommand.status == 125)
            #expect(noCommand.stderr.contains("give the command after --"))
            let noImages = try await Self.vmexec(["run", "--images", "/nonexistent", "--", "true"])
            #expect(noImages.status == 125)
            #expect(noImages.stderr.contains("make images"))
            // Options are checked before anything boots: no images are needed to refuse them.
            for bad in [["--memory-limit", "lots"], ["--user", "nobody"], ["--timeout", "0"], ["--env", "NOVALUE"]] {
                let r = try await Self.vmexec(["run", "--images", "/nonexistent"] + bad + ["--", "true"])
                #expect(r.status == 125 && !r.stderr.contains("make images"), "\(bad) refused before boot: \(r.stderr)")
            }
        }

        @Test("SIGINT to vmexec reaches the command's process group in the guest")
        func interruptForwarded() async throws {
            // The command reports the signal itself, so the test sees it arrived in the guest.
            let r = try await Self.vmexec(
                [
                    "run", "--accel", "tcg", "--", "sh", "-c",
                    "trap 'echo got INT; exit 42' INT; echo ready; while :; do sleep 0.1; done",
                ],
                signalOnOutput: (SIGINT, "ready\n"))
            #expect(r.stdout == "ready\ngot INT\n", "stderr: \(r.stderr)")
            #expect(r.status == 42)
        }

        @Test("--mount shows host folders read-only, read-write and overlaid; a bad one is a usage error")
        func mounts() async throws {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-cli-mount-\(UUID())").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try "from the host\n".write(toFile: dir + "/in.txt", atomically: true, encoding: .utf8)
            let run = try await Self.vmexec([
                "run", "--mount", "\(dir):/in", "--mount", "\(dir):/out:rw", "--mount", "\(dir):/scratch:overlay", "--",
                "sh", "-c",
                "cat /in/in.txt; echo x > /in/no 2>/dev/null || echo refused; echo kept > /out/kept.txt; echo gone > /scratch/in.txt",
            ])
            #expect(run.status == 0 && run.stdout == "from the host\nrefused\n", "\(run.stdout)\(run.stderr)")
            #expect(try String(contentsOfFile: dir + "/kept.txt", encoding: .utf8) == "kept\n")
            #expect(try String(contentsOfFile: dir + "/in.txt", encoding: .utf8) == "from the host\n")
            let bad = try await Self.vmexec(["run", "--mount", "\(dir)/none:/x", "--", "true"])
            #expect(bad.status == 125 && bad.stderr.contains("does not exist"), "\(bad.stderr)")
        }

        @Test("--cold-boot boots the kernel even when a saved state exists, and -v says how the guest started")
        func coldBoot() async throws {
            _ = try await Self.vmexec(["run", "--accel", "tcg", "--", "true"])  // a state exists after this
            let restored = try await Self.vmexec(["run", "-v", "--accel", "tcg", "--", "true"])
            #expect(restored.stderr.contains("start=restored saved state"), "stderr: \(restored.stderr)")
            let cold = try await Self.vmexec(["run", "-v", "--cold-boot", "--accel", "tcg", "--", "true"])
            #expect(cold.status == 0)
            #expect(cold.stderr.contains("start=cold boot"), "stderr: \(cold.stderr)")
        }
    }
}
