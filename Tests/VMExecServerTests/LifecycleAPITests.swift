import Foundation
import Testing
import VMExecClient
import VMExecService

extension DaemonSuites {
    /// Sandboxes through deaths and restarts: of their guest, and of the daemon.
    @Suite("sandbox lifecycle", .timeLimit(.minutes(6)))
    struct LifecycleAPITests {
        @Test("a killed guest fails its running job within seconds with the reason; the sandbox boots again on its store")
        func guestDeath() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            _ = try await client.createSandbox(SandboxRequest(name: "fragile", store: "kept"))
            _ = try await client.submit(
                "fragile", JobSubmission(["sh", "-c", "echo remembered > /home/vmexec/note"]), wait: true)
            let victim = try await client.submit("fragile", JobSubmission(["sleep", "300"]))
            #expect(try await eventually { try await client.job("fragile", victim.id).state == "running" })
            let sandbox = try await daemon.registry.sandbox(owner: "alice", name: "fragile")
            let qemu = try #require(await sandbox.qemuProcessID)
            let killed = ContinuousClock.now
            kill(qemu, SIGKILL)
            let failed = try await collect(try await client.events("fragile", victim.id)).job
            #expect(ContinuousClock.now - killed < .seconds(5))
            #expect(failed?.state == "failed" && failed?.failureCode == "guestStopped", "\(String(describing: failed))")
            #expect(failed?.reason?.isEmpty == false)
            #expect(
                try await eventually(60) {
                    let s = try await client.sandbox("fragile")
                    return s.state == "running" && s.lastError?.contains("stopped unexpectedly") == true
                })
            let after = try await client.submit("fragile", JobSubmission(["cat", "/home/vmexec/note"]), wait: true)
            #expect(try await client.output("fragile", after.id, stream: .stdout, offset: 0).bytes == Array("remembered\n".utf8))
        }

        @Test("a sandbox of a pooled profile takes a started guest; the pool refills; other sandboxes boot their own")
        func warmPool() async throws {
            let daemon = try await TestDaemon.start(pool: [PoolProfile(shards: ["cpython"], size: 1)])
            defer { Task { await daemon.remove() } }
            #expect(try await eventually(60) { await daemon.registry.load().poolSize == 1 }, "the pool fills")
            let warm = try await daemon.alice.createSandbox(SandboxRequest(name: "warm", shards: ["cpython"]))
            #expect(warm.state == "running")
            #expect(await daemon.registry.load().poolTaken == 1, "the sandbox took the pool's guest")
            let job = try await daemon.alice.submit("warm", JobSubmission(["python3", "-c", "print(1)"]), wait: true)
            #expect(job.exitCode == 0)
            #expect(try await eventually(60) { await daemon.registry.load().poolSize == 1 }, "the pool refills")
            // Not the profile (a store, other memory): booted for itself, the pool left alone.
            _ = try await daemon.alice.createSandbox(SandboxRequest(name: "own", shards: ["cpython"], memoryMiB: 384))
            _ = try await daemon.alice.createSandbox(SandboxRequest(name: "kept", shards: ["cpython"], store: "k"))
            let load = await daemon.registry.load()
            #expect(load.poolTaken == 1 && load.poolSize == 1 && load.guestsRunning == 3, "\(load)")
        }

        @Test("a restarted daemon brings its sandboxes back and runs the jobs still queued; ended jobs never run again")
        func daemonRestart() async throws {
            let first = try await TestDaemon.start()
            let directory = first.directory
            defer { try? FileManager.default.removeItem(at: directory) }
            let client = first.alice
            _ = try await client.createSandbox(SandboxRequest(name: "durable", store: "box", concurrency: 1))
            let done = try await client.submit(
                "durable", JobSubmission(["sh", "-c", "echo ran >> /home/vmexec/log; echo done"]), wait: true)
            let running = try await client.submit("durable", JobSubmission(["sleep", "300"]))
            let queued = try await client.submit(
                "durable", JobSubmission(["sh", "-c", "echo queued >> /home/vmexec/log; cat /home/vmexec/log"]))
            #expect(try await eventually { try await client.job("durable", running.id).state == "running" })
            await first.stop()

            let second = try await TestDaemon.start(directory: directory)
            defer { Task { await second.stop() } }
            let again = second.alice
            #expect(try await again.sandboxes().map(\.name) == ["durable"])
            let interrupted = try await again.job("durable", running.id)
            #expect(interrupted.state == "failed", "\(interrupted)")
            let ranLater = try await collect(try await again.events("durable", queued.id))
            #expect(ranLater.job?.state == "exited" && ranLater.stdout == "ran\nqueued\n", "\(ranLater)")
            let stillDone = try await again.job("durable", done.id)
            #expect(stillDone.state == "exited" && stillDone.stdoutBytes == 5)
        }
    }
}
