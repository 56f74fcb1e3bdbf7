import Foundation
import Logging
import SquashMounts
import VMExecutor

/// Python jobs' figures: one-shot runs of the vmexec command (warm states against a cold
/// boot and a bare interpreter), then in one guest with the SDK and numpy shards: a job's
/// start from the warm interpreter against a fresh `python3` importing numpy, code through
/// the runner against the bare interpreter, a call answered by a persistent worker against
/// the same call in a fresh runner process, and a worker that imported numpy once against a
/// fresh `python3` importing numpy for each job. Each beside its peer, in the same run.
enum PythonBench {
    static let calls = 40
    static let numpyPeerRuns = 3

    static let oneShotRuns = 3

    /// The `vmexec` command built beside this benchmark (`make bench` builds both).
    static var vmexecBinary: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vmexec")
    }

    /// Runs the `vmexec` command to its end: the seconds the whole process took. Its output is
    /// checked, so a failing run is no figure.
    static func timedCLI(_ arguments: [String], stdin: URL? = nil, expect: String) throws -> Double {
        let p = Process()
        p.executableURL = vmexecBinary
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        if let stdin { p.standardInput = try FileHandle(forReadingFrom: stdin) }
        let t = ContinuousClock.now
        try p.run()
        let bytes = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let took = Bench.seconds(ContinuousClock.now - t)
        let said = String(decoding: bytes, as: UTF8.self)
        guard p.terminationStatus == 0, said.contains(expect) else {
            let what = arguments.joined(separator: " ")
            throw Bench.Failure("vmexec \(what) exited \(p.terminationStatus): \(String(said.prefix(300)))")
        }
        return took
    }

    static func run(images: GuestImages, logger: Logger) async throws {
        // One-shot jobs through the vmexec command, whole process: a start restoring the warm
        // state of its shards (saved by a first run, not timed) against a cold boot, and a numpy
        // script through `vmexec python` (whose warm state has the zygote) against `vmexec run`.
        let dir = images.directory
        let sdk = dir.appendingPathComponent("sdk-python.shard").path
        let numpy = dir.appendingPathComponent("libs-numpy-1.26.4.shard").path
        let script = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-bench-\(getpid()).py")
        try "import numpy\nprint(numpy.ones(3).sum())\n".write(to: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: script) }
        let sdkRun = ["run", "--images", dir.path, "--accel", "tcg", "--shard", sdk]
        let python = ["python", "--images", dir.path, "--accel", "tcg", "--shard", sdk, "--shard", numpy, script.path]
        let bareRun = ["run", "--images", dir.path, "--accel", "tcg", "--shard", sdk, "--shard", numpy, "--", "python3", "-"]
        let up = ["--", "python3", "-c", "print('up')"]
        _ = try timedCLI(sdkRun + up, expect: "up")
        _ = try timedCLI(python, expect: "3.0")
        _ = try timedCLI(bareRun, stdin: script, expect: "3.0")
        var restored: [Double] = [], coldBoot: [Double] = [], runner: [Double] = [], bareNumpy: [Double] = []
        for _ in 0..<oneShotRuns {
            restored.append(try timedCLI(sdkRun + up, expect: "up"))
            coldBoot.append(try timedCLI(sdkRun + ["--cold-boot"] + up, expect: "up"))
            runner.append(try timedCLI(python, expect: "3.0"))
            bareNumpy.append(try timedCLI(bareRun, stdin: script, expect: "3.0"))
        }
        Bench.emit(
            "oneshot_python_s", Bench.median(restored), "s", peer: Bench.median(coldBoot),
            peerName: "the same with --cold-boot",
            note: "vmexec run --shard sdk -- python3 -c ..., whole process, restoring the warm state (target 1.0 s)")
        Bench.emit(
            "oneshot_numpy_s", Bench.median(runner), "s", peer: Bench.median(bareNumpy),
            peerName: "vmexec run --shard sdk --shard numpy -- python3 (the same script)",
            note: "vmexec python of a script importing numpy, whole process, forked from the restored zygote (target 1.0 s)")

        var c = SandboxConfiguration()
        c.images = images
        c.accelerator = .tcg
        c.shards = [try Shard.open(sdk), try Shard.open(numpy)]
        let guest = Sandbox(configuration: c, logger: logger)
        try await guest.start()
        defer { Task { await guest.shutdown() } }

        let warmth = try await guest.warmPython()
        guard warmth.preloaded == ["numpy"] else { throw Bench.Failure("the zygote preloaded \(warmth)") }

        // A job's start: from the request to its first line of output, forked from the zygote
        // with numpy imported, against a fresh python3 that imports numpy first. Jobs arrive
        // one at a time (250 ms apart, the zygote has its next child ready), and back to back.
        let first = PythonCode("import numpy\nprint('started', flush=True)")
        func firstLine() async throws -> Double {
            let t = ContinuousClock.now
            let run = try await guest.python.start(first)
            var firstLine: Double?
            for try await event in run.events {
                if case .stdout = event, firstLine == nil { firstLine = Bench.millis(ContinuousClock.now - t) }
                if case .result(let r) = event, !r.warmStart { throw Bench.Failure("a job started cold") }
            }
            guard let firstLine else { throw Bench.Failure("a job printed nothing") }
            return firstLine
        }
        for _ in 0..<3 { _ = try await firstLine() }
        var starts: [Double] = [], burst: [Double] = [], freshStarts: [Double] = []
        for _ in 0..<calls / 2 {
            try await Task.sleep(for: .milliseconds(250))
            starts.append(try await firstLine())
        }
        for _ in 0..<calls / 2 { burst.append(try await firstLine()) }
        for _ in 0..<numpyPeerRuns {
            let t = ContinuousClock.now
            for try await event in try await guest.stream(
                Command(["python3", "-c", "import numpy\nprint('started', flush=True)"]))
            {
                if case .stdout = event {
                    freshStarts.append(Bench.millis(ContinuousClock.now - t))
                    break
                }
            }
        }
        Bench.emit(
            "python_job_start_p50_ms", Bench.percentile(starts, 50), "ms", peer: Bench.percentile(freshStarts, 50),
            peerName: "python3 importing numpy, to its first line",
            note:
                "request to the job's first line, forked from the warm interpreter with numpy preloaded, jobs 250 ms apart (target 20 ms)"
        )
        Bench.emit(
            "python_job_start_burst_p50_ms", Bench.percentile(burst, 50), "ms", peer: Bench.percentile(freshStarts, 50),
            peerName: "python3 importing numpy, to its first line",
            note: "the same, jobs back to back: each waits for the zygote's next child to be ready")

        // Code through the runner against the bare interpreter: what the runner adds to a job.
        var runs: [Double] = [], bare: [Double] = []
        for _ in 0..<3 { _ = try await guest.python.run(PythonCode("pass")) }
        for _ in 0..<calls / 2 {
            var t = ContinuousClock.now
            _ = try await guest.python.run(PythonCode("pass"))
            runs.append(Bench.millis(ContinuousClock.now - t))
            t = ContinuousClock.now
            _ = try await guest.exec(Command(["python3", "-c", "pass"]))
            bare.append(Bench.millis(ContinuousClock.now - t))
        }
        Bench.emit(
            "python_run_p50_ms", Bench.percentile(runs, 50), "ms", peer: Bench.percentile(bare, 50),
            peerName: "python3 -c pass",
            note: "`pass` through the runner, forked from the warm interpreter: value, exception and output capture")

        let source = "import json\ndef add(a, b):\n    return a + b\n"
        let worker = try await guest.python.worker(PythonModule(source: source))
        for _ in 0..<5 { _ = try await worker.call("add", arguments: "[1, 2]") }
        var inWorker: [Double] = [], fresh: [Double] = []
        for _ in 0..<calls {
            var t = ContinuousClock.now
            _ = try await worker.call("add", arguments: "[1, 2]")
            inWorker.append(Bench.millis(ContinuousClock.now - t))
            t = ContinuousClock.now
            _ = try await guest.python.call(PythonCall("add", in: PythonModule(source: source), arguments: "[1, 2]"))
            fresh.append(Bench.millis(ContinuousClock.now - t))
        }
        try await worker.close()
        Bench.emit(
            "python_call_p50_ms", Bench.percentile(inWorker, 50), "ms", peer: Bench.percentile(fresh, 50),
            peerName: "the same call in a fresh runner process", note: "a function called with JSON arguments")

        let numpySource = "import numpy\ndef norm(values):\n    return float(numpy.linalg.norm(numpy.array(values)))\n"
        let numpyWorker = try await guest.python.worker(PythonModule(source: numpySource))
        for _ in 0..<3 { _ = try await numpyWorker.call("norm", arguments: "[[3, 4]]") }
        var warm: [Double] = []
        for _ in 0..<calls {
            let t = ContinuousClock.now
            let r = try await numpyWorker.call("norm", arguments: "[[3, 4]]")
            guard r.value?.json == "5.0" else { throw Bench.Failure("numpy worker answered \(String(describing: r.value))") }
            warm.append(Bench.millis(ContinuousClock.now - t))
        }
        try await numpyWorker.close()
        var cold: [Double] = []
        for _ in 0..<numpyPeerRuns {
            let t = ContinuousClock.now
            _ = try await guest.exec(
                Command(["python3", "-c", "import numpy; print(numpy.linalg.norm(numpy.array([3, 4])))"]))
            cold.append(Bench.millis(ContinuousClock.now - t))
        }
        Bench.emit(
            "python_numpy_job_p50_ms", Bench.percentile(warm, 50), "ms", peer: Bench.percentile(cold, 50),
            peerName: "python3 importing numpy for each job",
            note: "a numpy job answered by a worker that imported numpy once")
    }
}
