import Foundation
import Testing

extension CLISuites {
    /// `vmexec run -it` and `vmexec exec -it` at a terminal: the real binary under a pseudo-terminal
    /// (Tests/VMExecCLITests/terminal_driver.py types into it and reads it, as a person would).
    @Suite("vmexec -it at a terminal", .timeLimit(.minutes(6)))
    struct TerminalCLITests {
        struct Session: Decodable {
            var transcript: String
            var failedStep: Int?
            var status: Int32
            var restored: Bool
        }

        /// One scripted session of a shell (steps of terminal_driver.py): its size, a resize, Ctrl-C
        /// to a foreground job, `$?`, exit 3. The markers are printed by printf, so that the echo of
        /// the typed line does not contain them; the sleeping marker comes from the job itself, so the
        /// job is in the terminal's foreground when it shows.
        static let shellSteps = #"""
            [{"expect": "PROMPT> "},
             {"send": "stty size\r"}, {"expect": "30 100"},
             {"resize": [40, 120]}, {"sleep": 1.0},
             {"send": "stty size\r"}, {"expect": "40 120"},
             {"send": "sh -c 'printf zz%s\\\\n sleeping; exec sleep 100'\r"}, {"expect": "zzsleeping"},
             {"send": "\u0003"}, {"expect": "PROMPT> "},
             {"send": "printf 'zz%s\\n' $?\r"}, {"expect": "zz130"},
             {"send": "exit 3\r"}]
            """#

        static func drive(_ steps: String, _ args: [String], environment: [String: String] = [:]) async throws
            -> Session
        {
            let driver = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
                "terminal_driver.py"
            ).path
            let out: Data = try await withCheckedThrowingContinuation { c in
                DispatchQueue.global().async {
                    c.resume(
                        with: Result {
                            let p = Process()
                            p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
                            p.arguments = [driver, steps, "--", vmexecBinary] + args
                            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
                            let pipe = Pipe()
                            p.standardOutput = pipe
                            try p.run()
                            let data = pipe.fileHandleForReading.readDataToEndOfFile()
                            p.waitUntilExit()
                            return data
                        })
                }
            }
            return try JSONDecoder().decode(Session.self, from: out)
        }

        static func check(_ s: Session) {
            #expect(s.failedStep == nil, "the session stopped at step \(s.failedStep ?? -1): \(s.transcript)")
            #expect(s.status == 3, "exit status \(s.status): \(s.transcript)")
            #expect(s.restored, "the local terminal was left in raw mode")
            // The job's own output never showed: Ctrl-C reached the foreground job in the guest, not vmexec.
            #expect(!s.transcript.contains("zz0"))
        }

        @Test("vmexec run -it: a shell on a terminal in a fresh guest")
        func runInteractive() async throws {
            let s = try await Self.drive(
                Self.shellSteps, ["run", "-it", "--accel", "tcg", "--env", "PS1=PROMPT> ", "--", "bash", "--norc", "-i"])
            Self.check(s)
        }

        @Test("vmexec exec -it: a shell on a terminal in the daemon's sandbox, beside a running job")
        func execInteractive() async throws {
            let home = try DaemonHome()
            defer { home.remove() }
            let up = try await home.vmexec(["up", "dev", "--concurrency", "1"])
            #expect(up.status == 0, "\(up.stderr)")
            // This job holds the sandbox's only job slot: another job would queue behind it; a terminal does not.
            let busy = Task { try await home.vmexec(["exec", "dev", "--", "sleep", "20"]) }
            var running = false
            for _ in 0..<300 where !running {
                running = try await home.client.jobs("dev").contains { $0.state == "running" }
                if !running { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(running, "the job holding the slot runs")
            let s = try await Self.drive(
                Self.shellSteps, ["exec", "-it", "dev", "--env", "PS1=PROMPT> ", "--", "bash", "--norc", "-i"],
                environment: home.environment)
            Self.check(s)
            if s.failedStep != nil {
                print("daemon log:", (try? String(contentsOfFile: home.directory + "/run/daemon.log", encoding: .utf8)) ?? "")
            }
            #expect(try await busy.value.status == 0)
            let missing = try await Self.drive(
                "[]", ["exec", "-it", "dev", "--", "no-such-program"], environment: home.environment)
            #expect(missing.status == 127 && missing.transcript.contains("no-such-program"), "\(missing.transcript)")
        }
    }
}
