import Foundation
import Testing
import VMExecClient

extension DaemonSuites {
    /// Jobs through the HTTP API, as a controller service submits them.
    @Suite("jobs", .timeLimit(.minutes(5)))
    struct JobsAPITests {
        @Test("a waited job answers with its output and exit; an async one is polled, paged and streamed while it runs")
        func waitedAndPolled() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            let made = try await client.createSandbox(SandboxRequest(name: "jobs", shards: ["cpython"]))
            #expect(made.state == "running" && made.shards == ["cpython"])

            let waited = try await client.submit(
                "jobs", JobSubmission(["sh", "-c", "echo out; echo err >&2; exit 3"]), wait: true)
            #expect(waited.state == "exited" && waited.exitCode == 3 && waited.termination == "exited")
            #expect(waited.stdoutBytes == 4 && waited.stderrBytes == 4)

            // Asynchronous: accepted at once, its first output visible while it still runs.
            let slow = try await client.submit(
                "jobs", JobSubmission(["sh", "-c", "echo first; sleep 2; echo second"]))
            #expect(!slow.isFinal)
            var partial: (bytes: [UInt8], next: Int, complete: Bool) = ([], 0, false)
            #expect(
                try await eventually {
                    partial = try await client.output("jobs", slow.id, stream: .stdout, offset: 0)
                    return !partial.bytes.isEmpty
                })
            #expect(String(decoding: partial.bytes, as: UTF8.self) == "first\n" && !partial.complete)
            #expect(try await client.job("jobs", slow.id).state == "running")
            // The event stream from the offset already read gives only the rest, then the end.
            let rest = try await collect(try await client.events("jobs", slow.id, stdoutOffset: partial.next))
            #expect(rest.stdout == "second\n")
            #expect(rest.job?.state == "exited" && rest.job?.exitCode == 0)
            let again = try await collect(try await client.events("jobs", slow.id))
            #expect(again.stdout == "first\nsecond\n", "an ended job's stream replays it whole")

            // Pages: a small limit walks the stream in order, the last page complete.
            let many = try await client.submit("jobs", JobSubmission(["seq", "1", "2000"]), wait: true)
            var text: [UInt8] = []
            var offset = 0
            var complete = false
            while !complete {
                let page = try await client.output("jobs", many.id, stream: .stdout, offset: offset, limit: 1000)
                text += page.bytes
                offset = page.next
                complete = page.complete
            }
            #expect(String(decoding: text, as: UTF8.self) == (1...2000).map { "\($0)\n" }.joined())
            #expect(try await client.jobs("jobs").map(\.id) == [waited.id, slow.id, many.id])

            // Prometheus metrics: the jobs by state, their durations, the guests.
            let metrics = try await daemon.raw(.GET, "/metrics")
            #expect(metrics.status == 200)
            for line in ["vmexec_guests_running 1.0", "vmexec_guest_memory_mib 512.0", "vmexec_jobs_queued 0.0"] {
                #expect(metrics.body.contains(line + "\n"), "\(line) in \(metrics.body)")
            }
            #expect(metrics.body.contains(#"vmexec_jobs_total{state="exited"}"#), "\(metrics.body)")
            #expect(metrics.body.contains("vmexec_job_duration_seconds_bucket"), "\(metrics.body)")
            #expect(try await daemon.raw(.GET, "/metrics", token: nil).status == 401, "metrics need a token on TCP")
        }

        @Test("stdin written while the job runs, then closed; a signal reaches its group; cancel ends queued and running jobs")
        func stdinSignalCancel() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            _ = try await client.createSandbox(SandboxRequest(name: "one", concurrency: 1))

            let reader = try await client.submit(
                "one", JobSubmission(["sh", "-c", "cat; echo eof"], stdin: Array("first ".utf8), stdinOpen: true))
            try await client.writeStdin("one", reader.id, Array("second".utf8))
            try await client.closeStdin("one", reader.id)
            let fed = try await collect(try await client.events("one", reader.id))
            #expect(fed.stdout == "first secondeof\n" && fed.job?.exitCode == 0, "\(fed)")

            let sleeper = try await client.submit("one", JobSubmission(["sh", "-c", "echo up; sleep 60"]))
            let queued = try await client.submit("one", JobSubmission(["sh", "-c", "echo never"]))
            #expect(try await client.job("one", queued.id).state == "queued", "concurrency 1 keeps the second waiting")
            #expect(try await eventually { try await client.job("one", sleeper.id).stdoutBytes > 0 })
            try await client.signal("one", sleeper.id, "TERM")
            let signalled = try await collect(try await client.events("one", sleeper.id))
            #expect(signalled.job?.exitCode == 143 && signalled.job?.termination == "signaled", "\(signalled)")

            // The queued one ran once the sleeper ended; a new sleeper is cancelled running, one behind it queued.
            #expect(try await collect(try await client.events("one", queued.id)).stdout == "never\n")
            let running = try await client.submit("one", JobSubmission(["sleep", "60"]))
            let behind = try await client.submit("one", JobSubmission(["sh", "-c", "echo ran"]))
            let cancelledQueued = try await client.cancel("one", behind.id)
            #expect(cancelledQueued.state == "cancelled" && cancelledQueued.stdoutBytes == 0)
            #expect(try await eventually { try await client.job("one", running.id).state == "running" })
            let cancelledRunning = try await client.cancel("one", running.id)
            #expect(cancelledRunning.state == "cancelled", "\(cancelledRunning)")
            // A job that ended stays as it ended.
            #expect(try await client.cancel("one", reader.id).state == "exited")
        }

        @Test("exec/python runs source text; its result answers running with the output so far, then the end")
        func python() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            _ = try await daemon.alice.createSandbox(SandboxRequest(name: "py", shards: ["cpython"]))
            let code = "import sys, time\nprint(\"a\")\ntime.sleep(1.5)\nprint(sum(range(10)))\nsys.exit(4)\n"
            let started = try await daemon.raw(
                .POST, "/v1/sandboxes/py/exec/python", contentType: "application/json",
                body: Array(try JSONSerialization.data(withJSONObject: ["code": code])))
            #expect(started.status == 202, "\(started.body)")
            let id = try #require(
                ((try JSONSerialization.jsonObject(with: Data(started.body.utf8)) as? [String: Any])?["job"]
                    as? [String: Any])?["id"] as? String)
            var sawRunning = false
            var final: [String: Any] = [:]
            #expect(
                try await eventually {
                    let r = try await daemon.raw(.GET, "/v1/sandboxes/py/jobs/\(id)/result")
                    final = (try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any]) ?? [:]
                    let job = final["job"] as? [String: Any] ?? [:]
                    let out = (final["stdout"] as? [String: Any])?["data"] as? String ?? ""
                    if job["state"] as? String == "running" && out == "a\n" { sawRunning = true }
                    return job["state"] as? String == "exited"
                })
            #expect(sawRunning, "the result showed the job running with its output so far")
            #expect((final["stdout"] as? [String: Any])?["data"] as? String == "a\n45\n")
            #expect(((final["job"] as? [String: Any])?["exit"] as? [String: Any])?["exitCode"] as? Int == 4)
            // Without an SDK shard for Node.js, exec/nodejs fails clearly rather than hanging.
            let node = try await daemon.raw(
                .POST, "/v1/sandboxes/py/exec/nodejs", contentType: "application/json",
                body: Array(#"{"code": "1+1", "wait": true}"#.utf8))
            #expect(node.status == 200 && node.body.contains("commandNotFound"), "\(node.body)")
        }
    }
}
