import Foundation
import Testing
import VMExecClient
import VMExecTestSupport

extension CLISuites {
    /// Many clients, many jobs, and a daemon killed under them.
    @Suite("the daemon under load", .timeLimit(.minutes(15)))
    struct DaemonLoadTests {
        /// Submits `count` jobs from `clients` concurrent clients, spread over `sandboxes`;
        /// each job prints its number. Returns the job ids by number.
        static func submit(
            _ client: DaemonClient, count: Int, clients: Int, sandboxes: [String], command: @escaping @Sendable (Int) -> [String]
        ) async throws -> [Int: (sandbox: String, id: String)] {
            try await withThrowingTaskGroup(of: [(Int, String, String)].self) { group in
                for c in 0..<clients {
                    group.addTask {
                        var mine: [(Int, String, String)] = []
                        for n in stride(from: c, to: count, by: clients) {
                            let sandbox = sandboxes[n % sandboxes.count]
                            let job = try await client.submit(sandbox, JobSubmission(command(n)))
                            mine.append((n, sandbox, job.id))
                        }
                        return mine
                    }
                }
                var all: [Int: (String, String)] = [:]
                for try await part in group { for (n, s, id) in part { all[n] = (s, id) } }
                return all
            }
        }

        /// Every job's final record, once all have ended.
        static func settle(_ client: DaemonClient, _ sandboxes: [String], timeout: Double = 600) async throws -> [String: JobInfo]
        {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                var all: [String: JobInfo] = [:]
                for s in sandboxes { for j in try await client.jobs(s) { all[j.id] = j } }
                if all.values.allSatisfy(\.isFinal) { return all }
                try await Task.sleep(for: .milliseconds(500))
            }
            throw TestTimeout(description: "jobs still running after \(timeout) s")
        }

        @Test("20 clients submit 500 jobs across 4 sandboxes: each completes once with its own output")
        func load() async throws {
            let home = try DaemonHome()
            defer { home.remove() }
            let sandboxes = ["l0", "l1", "l2", "l3"]
            for name in sandboxes {
                let up = try await home.vmexec(["up", name, "--memory", "256"])
                #expect(up.status == 0, "\(up.stderr)")
            }
            let client = home.client
            let submitted = try await Self.submit(client, count: 500, clients: 20, sandboxes: sandboxes) { n in
                ["echo", "job-\(n)"]
            }
            #expect(submitted.count == 500 && Set(submitted.values.map(\.id)).count == 500)
            let jobs = try await Self.settle(client, sandboxes)
            #expect(jobs.count == 500, "no job lost, none added")
            for (n, where_) in submitted {
                let job = try #require(jobs[where_.id])
                #expect(job.state == "exited" && job.exitCode == 0 && job.sandbox == where_.sandbox, "\(job)")
                let out = try await client.output(where_.sandbox, where_.id, stream: .stdout, offset: 0)
                #expect(out.bytes == Array("job-\(n)\n".utf8) && out.complete)
            }
        }

        @Test("a daemon killed by SIGKILL mid-run and restarted: every job accounted for, none run twice once it finished")
        func killedDaemon() async throws {
            let home = try DaemonHome()
            defer { home.remove() }
            let sandboxes = ["k0", "k1"]
            for name in sandboxes {
                let up = try await home.vmexec(["up", name, "--memory", "256", "--store", "s-\(name)", "--concurrency", "2"])
                #expect(up.status == 0, "\(up.stderr)")
            }
            let client = home.client
            // Each job records its number in the sandbox's store before it prints it.
            let submitted = try await Self.submit(client, count: 120, clients: 8, sandboxes: sandboxes) { n in
                ["sh", "-c", "echo \(n) >> /home/vmexec/ran; sleep 0.2; echo job-\(n)"]
            }
            #expect(submitted.count == 120)
            // Kill it once some jobs have ended and many are still queued.
            var ended = 0
            for _ in 0..<600 where ended < 20 {
                ended = try await client.jobs("k0").filter(\.isFinal).count
                try await Task.sleep(for: .milliseconds(100))
            }
            let before = try await Self.snapshot(client, sandboxes)
            let pid = try #require(home.daemonPID)
            kill(pid, SIGKILL)
            for _ in 0..<100 where kill(pid, 0) == 0 { try await Task.sleep(for: .milliseconds(100)) }
            let finishedBefore = before.filter { $0.value.isFinal }

            let daemon = try await home.serve()
            defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
            let jobs = try await Self.settle(client, sandboxes)
            #expect(jobs.count == 120, "every job is still known")
            var interrupted = 0
            for (n, where_) in submitted {
                let job = try #require(jobs[where_.id])
                if let earlier = finishedBefore[where_.id] {
                    #expect(job == earlier, "a job that had ended is as it was: \(job)")
                }
                if job.state == "failed" {
                    #expect(job.failureCode == "daemonStopped", "\(job)")
                    interrupted += 1
                } else {
                    #expect(job.state == "exited" && job.exitCode == 0, "\(job)")
                    let out = try await client.output(where_.sandbox, where_.id, stream: .stdout, offset: 0)
                    #expect(out.bytes == Array("job-\(n)\n".utf8))
                }
            }
            #expect(interrupted <= 4, "only the jobs running at the kill (2 per sandbox) failed; \(interrupted) did")
            // No job ran twice: each number is in its store's record at most once.
            for sandbox in sandboxes {
                let record = try await client.submit(sandbox, JobSubmission(["cat", "/home/vmexec/ran"]), wait: true)
                let text = try await client.output(sandbox, record.id, stream: .stdout, offset: 0, limit: 1 << 20)
                let numbers = String(decoding: text.bytes, as: UTF8.self).split(separator: "\n")
                #expect(numbers.count == Set(numbers).count, "a job ran twice in \(sandbox): \(numbers)")
            }
        }

        static func snapshot(_ client: DaemonClient, _ sandboxes: [String]) async throws -> [String: JobInfo] {
            var all: [String: JobInfo] = [:]
            for s in sandboxes { for j in try await client.jobs(s) { all[j.id] = j } }
            return all
        }
    }
}
