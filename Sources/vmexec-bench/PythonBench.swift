import Foundation
import Logging
import SquashMounts
import VMExecutor

/// Python jobs' figures: code through the runner against the bare interpreter, a call
/// answered by a persistent worker against the same
/// call in a fresh runner process, and a worker that imported numpy once against
/// a fresh `python3` importing numpy for each job. One guest with the SDK and numpy
/// shards, measured in the same run.
enum PythonBench {
    static let calls = 40
    static let numpyPeerRuns = 3

    static let oneShotRuns = 3

    /// Start a guest with `shards`, run one job, shut it down: the seconds it all took.
    static func oneShot(
        _ images: GuestImages, _ shards: [String], reuseBootState: Bool, logger: Logger,
        _ job: (Sandbox) async throws -> Void
    ) async throws -> Double {
        var c = SandboxConfiguration()
        c.images = images
        c.accelerator = .tcg
        c.reuseBootState = reuseBootState
        c.warmPython = false  // as the CLI's one-shot commands: one job, nothing to fork for
        c.shards = try shards.map { try Shard.open(images.directory.appendingPathComponent($0).path) }
        let t = ContinuousClock.now
        let s = Sandbox(configuration: c, logger: logger)
        try await s.start()
        try await job(s)
        await s.shutdown()
        return Bench.seconds(ContinuousClock.now - t)
    }

    static func run(images: GuestImages, logger: Logger) async throws {
        // One-shot jobs, in this process (the CLI adds its own start on top): a start restoring
        // the saved boot state against a cold boot, and numpy through the runner against python3.
        let sdk = ["sdk-python.shard"], numpy = ["sdk-python.shard", "libs-numpy-1.26.4.shard"]
        var restored: [Double] = [], coldBoot: [Double] = [], runner: [Double] = [], bareNumpy: [Double] = []
        for _ in 0..<oneShotRuns {
            restored.append(
                try await oneShot(images, sdk, reuseBootState: true, logger: logger) {
                    _ = try await $0.exec(Command(["python3", "-c", "pass"]))
                })
            coldBoot.append(
                try await oneShot(images, sdk, reuseBootState: false, logger: logger) {
                    _ = try await $0.exec(Command(["python3", "-c", "pass"]))
                })
            runner.append(
                try await oneShot(images, numpy, reuseBootState: true, logger: logger) {
                    _ = try await $0.python.run(PythonCode("import numpy"))
                })
            bareNumpy.append(
                try await oneShot(images, numpy, reuseBootState: true, logger: logger) {
                    _ = try await $0.exec(Command(["python3", "-c", "import numpy"]))
                })
        }
        Bench.emit(
            "oneshot_python_s", Bench.median(restored), "s", peer: Bench.median(coldBoot), peerName: "the same with a cold boot",
            note: "start with the SDK shard, python3 -c pass, shut down; no warm state per shard set yet (target 1.0 s)")
        Bench.emit(
            "oneshot_numpy_s", Bench.median(runner), "s", peer: Bench.median(bareNumpy), peerName: "python3 -c 'import numpy'",
            note:
                "start with SDK and numpy shards, import numpy through the runner, shut down; no warm state per shard set yet (target 1.0 s)"
        )

        var c = SandboxConfiguration()
        c.images = images
        c.accelerator = .tcg
        for file in numpy {
            c.shards.append(try Shard.open(images.directory.appendingPathComponent(file).path))
        }
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
