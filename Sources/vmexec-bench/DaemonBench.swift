import Foundation
import Logging
import OpenAPIRuntime
import VMExecClient
import VMExecServer
import VMExecService
import VMExecutor

/// The daemon's figures, each beside its comparison in the same run: a
/// sandbox from the warm pool against a cold create, a no-op job through
/// the HTTP API against the Swift API on the same guest, job throughput
/// over 4 sandboxes against 1, a file upload through the API against the
/// Swift API, and an idle guest's host memory against its configured memory.
enum DaemonBench {
    static func run(images: GuestImages, logger: Logger) async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-bench-daemon-\(getpid())")
        defer { try? FileManager.default.removeItem(at: dir) }
        var config = ServiceConfiguration(stateDirectory: dir.appendingPathComponent("state"), images: images)
        config.accelerator = .tcg
        config.pool = [PoolProfile(shards: [], memoryMiB: 512, size: 1)]
        let registry = try SandboxRegistry(configuration: config, logger: logger)
        let options = DaemonOptions(socketPath: dir.appendingPathComponent("d.sock").path)
        let server = DaemonServer(registry: registry, options: options, logger: logger)
        let (up, upContinuation) = AsyncStream<Void>.makeStream()
        let serving = Task { try await server.run { _ in upContinuation.yield() } }
        for await _ in up { break }
        defer { serving.cancel() }
        let client = DaemonClient.unixSocket(options.socketPath)

        // Create-to-first-exec: from the warm pool, and cold (a spec no profile serves).
        func createExec(_ name: String, memoryMiB: Int) async throws -> Double {
            let t = ContinuousClock.now
            _ = try await client.createSandbox(SandboxRequest(name: name, memoryMiB: memoryMiB))
            _ = try await client.submit(name, JobSubmission(["true"]), wait: true)
            let ms = Bench.millis(ContinuousClock.now - t)
            try await client.deleteSandbox(name)
            return ms
        }
        var pooled: [Double] = []
        var cold: [Double] = []
        for round in 0..<8 {
            while await registry.load().poolSize < 1 { try await Task.sleep(for: .milliseconds(50)) }
            pooled.append(try await createExec("pool-\(round)", memoryMiB: 512))
            cold.append(try await createExec("cold-\(round)", memoryMiB: 384))
        }
        Bench.emit(
            "pool_create_exec_p50_ms", Bench.median(pooled), "ms", peer: Bench.median(cold),
            peerName: "cold create (a boot restoring the saved state)",
            note: "create a sandbox over the API, then its first job (true), waited")

        // A no-op job through the API, and through the Swift API on the same guest.
        _ = try await client.createSandbox(SandboxRequest(name: "noop"))
        let sandbox = try await registry.sandbox(owner: "local", name: "noop")
        var api: [Double] = []
        var direct: [Double] = []
        for _ in 0..<200 {
            var t = ContinuousClock.now
            _ = try await client.submit("noop", JobSubmission(["true"]), wait: true)
            api.append(Bench.millis(ContinuousClock.now - t))
            t = ContinuousClock.now
            _ = try await sandbox.exec(Command(["true"]))
            direct.append(Bench.millis(ContinuousClock.now - t))
        }
        Bench.emit(
            "api_exec_noop_p50_ms", Bench.percentile(api, 50), "ms", peer: Bench.percentile(direct, 50),
            peerName: "Swift API (Sandbox.exec) on the same guest",
            note: "POST .../jobs with wait over the Unix socket: queue, job store, HTTP")

        // An idle guest's resident host memory (QEMU's), against what it was given.
        try await Task.sleep(for: .seconds(2))
        if let pid = await sandbox.qemuProcessID,
            let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kib = Double(line.split(separator: " ").dropFirst().first ?? "")
        {
            Bench.emit(
                "idle_guest_rss_mib", kib / 1024, "MiB", peer: 512, peerName: "configured guest memory",
                note: "QEMU's VmRSS for an idle guest after its jobs")
        }

        // 64 MiB of a host file into the guest: through the API as `vmexec cp` sends it (read
        // in 64 KiB pieces, the body paced by the client's event loop), and through the Swift API.
        let file = dir.appendingPathComponent("upload.bin").path
        guard FileManager.default.createFile(atPath: file, contents: Data(repeating: 0x5a, count: 64 << 20)) else {
            throw VMExecError(.invalidRequest, "cannot write \(file)")
        }
        var viaAPI: [Double] = []
        var viaSwift: [Double] = []
        for _ in 0..<3 {
            let fd = open(file, O_RDONLY | O_CLOEXEC)
            defer { close(fd) }
            let chunks = AsyncThrowingStream<ArraySlice<UInt8>, any Error>(unfolding: {
                let chunk = try await HostIO.read(fd, upTo: 1 << 16)
                return chunk.isEmpty ? nil : ArraySlice(chunk)
            })
            var t = ContinuousClock.now
            _ = try await client.upload(
                "noop", path: "/home/vmexec/api.bin",
                bytes: HTTPBody(chunks, length: .known(64 << 20), iterationBehavior: .single), overwrite: true)
            viaAPI.append(64 * 1.048576 / Bench.seconds(ContinuousClock.now - t))
            t = ContinuousClock.now
            try await sandbox.upload(file, to: "/home/vmexec/swift.bin", options: FileOptions(replace: true))
            viaSwift.append(64 * 1.048576 / Bench.seconds(ContinuousClock.now - t))
        }
        Bench.emit(
            "api_upload_mb_s", Bench.median(viaAPI), "MB/s", peer: Bench.median(viaSwift),
            peerName: "Swift API (Sandbox.upload) on the same guest",
            note: "64 MiB host file, PUT .../files over the Unix socket as vmexec cp sends it")
        try await client.deleteSandbox("noop")

        // Throughput: 400 no-op jobs from 16 clients waiting on theirs, over 4 sandboxes and over 1.
        func throughput(sandboxes: Int) async throws -> Double {
            let names = (0..<sandboxes).map { "tp-\(sandboxes)-\($0)" }
            for name in names { _ = try await client.createSandbox(SandboxRequest(name: name, memoryMiB: 256, concurrency: 4)) }
            let t = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for c in 0..<16 {
                    group.addTask {
                        for n in stride(from: c, to: 400, by: 16) {
                            _ = try await client.submit(names[n % names.count], JobSubmission(["true"]), wait: true)
                        }
                    }
                }
                try await group.waitForAll()
            }
            let rate = 400 / Bench.seconds(ContinuousClock.now - t)
            for name in names { try await client.deleteSandbox(name) }
            return rate
        }
        let four = try await throughput(sandboxes: 4)
        let one = try await throughput(sandboxes: 1)
        Bench.emit(
            "jobs_per_s", four, "jobs/s", peer: one, peerName: "the same over 1 sandbox",
            note: "400 no-op jobs from 16 clients over the API, 4 sandboxes of concurrency 4")
        await server.stop()
        _ = await serving.result
    }
}
