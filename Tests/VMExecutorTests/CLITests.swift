import Foundation
import Testing

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
    static func vmexec(_ args: [String], stdin: String? = nil) async throws -> Outcome {
        try await withCheckedThrowingContinuation { c in
            DispatchQueue.global().async { c.resume(with: Result { try runBlocking(args, stdin: stdin) }) }
        }
    }

    private static func runBlocking(_ args: [String], stdin: String?) throws -> Outcome {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized
        let cli = root.appendingPathComponent(".build/debug/vmexec").path
        try #require(FileManager.default.isExecutableFile(atPath: cli), "build the CLI first (make test does)")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: cli)
        p.arguments = args
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
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Outcome(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
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
        let r = try await Self.vmexec(["run", "--accel", "tcg", "--env", "WHO=field engineer", "--workdir", "/etc", "--",
                                 "sh", "-c", "cat; echo \"$WHO\"; pwd"], stdin: "from the host\n")
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
    }
}
