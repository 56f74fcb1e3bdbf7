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

        @Test("a sandbox's host name and entry point, and a job's /tmp size, over HTTP")
        func sandboxSettings() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            let info = try await client.createSandbox(
                SandboxRequest(name: "named", hostname: "line-7", entrypoint: ["/usr/bin/env", "VIA=entry"]))
            #expect(info.name == "named")
            let job = try await client.submit(
                "named",
                JobSubmission(
                    ["sh", "-c", "echo $(uname -n) $VIA $(df -k /tmp | awk 'NR>1 {print $2}')"],
                    limits: JobLimits(tmpBytes: 8 << 20)), wait: true)
            let out = try await client.output("named", job.id, stream: .stdout, offset: 0).bytes
            #expect(String(decoding: out, as: UTF8.self) == "line-7 entry 8192\n")
            let listed = try await daemon.raw(.GET, "/v1/sandboxes/named")
            #expect(listed.body.contains("line-7"), "\(listed.body)")
            let bad = try await daemon.raw(
                .POST, "/v1/sandboxes", contentType: "application/json", body: Array(#"{"name":"bad","hostname":"-x"}"#.utf8))
            #expect(bad.status == 400, "\(bad.body)")
        }

        @Test("host folders inside the daemon's --allow-mount folders are seen; others, and links out of them, are refused")
        func hostFolders() async throws {
            let shared = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-shared-\(UUID())")
            let data = shared.appendingPathComponent("data").path
            let other = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-other-\(UUID())").path
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: shared.path + "/out", withDestinationPath: other)
            defer { for p in [shared.path, other] { try? FileManager.default.removeItem(atPath: p) } }
            try "in the shared folder\n".write(toFile: data + "/note", atomically: true, encoding: .utf8)
            let daemon = try await TestDaemon.start(allowedFolders: [shared.path])
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            _ = try await client.createSandbox(
                SandboxRequest(name: "folders", mounts: [(data, "/data", "ro"), (data, "/work", "rw")]))
            let job = try await client.submit(
                "folders", JobSubmission(["sh", "-c", "cat /data/note && echo made > /work/made"]), wait: true)
            #expect(job.exitCode == 0)
            let out = try await client.output("folders", job.id, stream: .stdout, offset: 0).bytes
            #expect(String(decoding: out, as: UTF8.self) == "in the shared folder\n")
            #expect(try String(contentsOfFile: data + "/made", encoding: .utf8) == "made\n")
            let listed = try await daemon.raw(.GET, "/v1/sandboxes/folders")
            #expect(listed.body.contains("\"guest\":\"\\/work\"") || listed.body.contains("/work"), "\(listed.body)")
            // Outside the shared folder, directly or through a link inside it: refused before any guest starts.
            // A path outside that does not exist is answered alike: no probing of the host's files.
            for host in [other, shared.path + "/out", shared.path + "/../", other + "/no-such-folder"] {
                let body = #"{"name":"no","mounts":[{"host":"\#(host)","guest":"/x"}]}"#
                let refused = try await daemon.raw(
                    .POST, "/v1/sandboxes", contentType: "application/json", body: Array(body.utf8))
                #expect(refused.status == 422 && refused.body.contains("folderRefused"), "\(host): \(refused.body)")
            }
            let badMode = try await daemon.raw(
                .POST, "/v1/sandboxes", contentType: "application/json",
                body: Array(#"{"name":"no","mounts":[{"host":"/tmp","guest":"/x","mode":"rwx"}]}"#.utf8))
            #expect(badMode.status == 400, "\(badMode.body)")
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

        @Test("shards attach and detach live; snapshots of the store are taken and restored; the store is described")
        func shardsAndSnapshots() async throws {
            let first = try await TestDaemon.start()
            let directory = first.directory
            defer { try? FileManager.default.removeItem(at: directory) }
            let json = "application/json"
            func names(_ r: (status: Int, body: String)) -> [String] {
                ((try? JSONSerialization.jsonObject(with: Data(r.body.utf8))) as? [[String: Any]] ?? []).compactMap {
                    $0["name"] as? String
                }
            }
            _ = try await first.alice.createSandbox(SandboxRequest(name: "live", shards: ["cpython"], store: "snap"))
            #expect(names(try await first.raw(.GET, "/v1/sandboxes/live/shards")) == ["cpython"])
            // A libs shard mounts at its own path: it attaches to the running guest.
            let attached = try await first.raw(
                .POST, "/v1/sandboxes/live/shards", contentType: json, body: Array(#"{"name": "numpy"}"#.utf8))
            #expect(attached.status == 201 && attached.body.contains(#""kind" : "libs""#), "\(attached.body)")
            let np = try await first.alice.submit(
                "live", JobSubmission(["python3", "-c", "import numpy; print(numpy.__version__)"]), wait: true)
            #expect(np.exitCode == 0, "the attached shard serves at once: \(np)")
            // A layer of the root does not, on a store made over the layers the sandbox began with.
            let layer = try await first.raw(
                .POST, "/v1/sandboxes/bare/shards", contentType: json, body: Array(#"{"name": "cpython"}"#.utf8))
            #expect(layer.status == 404, "no sandbox bare yet: \(layer.body)")

            _ = try await first.alice.submit("live", JobSubmission(["sh", "-c", "echo one > /home/vmexec/v"]), wait: true)
            let taken = try await first.raw(
                .POST, "/v1/sandboxes/live/snapshots", contentType: json, body: Array(#"{"name": "s1"}"#.utf8))
            #expect(taken.status == 201, "\(taken.body)")
            #expect(names(try await first.raw(.GET, "/v1/sandboxes/live/snapshots")) == ["s1"])
            _ = try await first.alice.submit("live", JobSubmission(["sh", "-c", "echo two > /home/vmexec/v"]), wait: true)
            let store = try await first.raw(.GET, "/v1/sandboxes/live/store")
            #expect(store.status == 200 && store.body.contains(#""snapshots" : 1"#), "\(store.body)")
            let restored = try await first.raw(.POST, "/v1/sandboxes/live/snapshots/s1/restore")
            #expect(restored.status == 204, "\(restored.body)")
            let back = try await first.alice.submit("live", JobSubmission(["cat", "/home/vmexec/v"]), wait: true)
            #expect(try await first.alice.output("live", back.id, stream: .stdout, offset: 0).bytes == Array("one\n".utf8))
            _ = try await first.alice.createSandbox(SandboxRequest(name: "bare"))
            let none = try await first.raw(.GET, "/v1/sandboxes/bare/store")
            #expect(none.status == 400 && errorBody(none.body)["message"]?.contains("no store") == true, "\(none.body)")

            // The attached shard is part of the sandbox now: a restarted daemon brings it back.
            await first.stop()
            let second = try await TestDaemon.start(directory: directory)
            defer { Task { await second.stop() } }
            #expect(try await second.alice.sandbox("live").shards == ["cpython", "numpy"])
            let again = try await second.alice.submit(
                "live", JobSubmission(["python3", "-c", "import numpy"]), wait: true)
            #expect(again.exitCode == 0, "\(again)")
            #expect(try await second.raw(.DELETE, "/v1/sandboxes/live/shards/numpy").status == 204)
            #expect(try await second.alice.sandbox("live").shards == ["cpython"])
            #expect(try await second.raw(.DELETE, "/v1/sandboxes/live/shards/numpy").status == 404)
            let refused = try await second.raw(
                .POST, "/v1/sandboxes/live/shards", contentType: json, body: Array(#"{"name": "cpython"}"#.utf8))
            #expect(refused.status == 422 || refused.status == 409, "\(refused.body)")
        }

        @Test("an idle guest is stopped and boots for the next job; a sandbox past its lifetime is gone; restart and caps")
        func timeoutsRestartCaps() async throws {
            let daemon = try await TestDaemon.start(maxSandboxes: 2)
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            _ = try await client.createSandbox(SandboxRequest(name: "sleepy", idleTimeoutSeconds: 1))
            #expect(try await eventually { try await client.sandbox("sleepy").state == "stopped" }, "stopped when idle")
            let woke = try await client.submit("sleepy", JobSubmission(["echo", "up"]), wait: true)
            let awake = try await client.sandbox("sleepy").state
            #expect(woke.exitCode == 0 && awake == "running")

            _ = try await client.createSandbox(SandboxRequest(name: "brief", lifetimeSeconds: 2))
            // The cap: a third sandbox is refused while two exist.
            let over = try await daemon.raw(
                .POST, "/v1/sandboxes", contentType: "application/json", body: Array(#"{"name": "third"}"#.utf8))
            #expect(over.status == 429 && errorBody(over.body)["code"] == "limitReached", "\(over.body)")
            #expect(try await eventually { try await client.sandboxes().map(\.name) == ["sleepy"] }, "gone after its lifetime")

            let restarted = try await daemon.raw(.POST, "/v1/sandboxes/sleepy/restart")
            #expect(restarted.status == 200 && restarted.body.contains(#""state" : "running""#), "\(restarted.body)")
            let after = try await client.submit("sleepy", JobSubmission(["true"]), wait: true)
            #expect(after.exitCode == 0)
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
