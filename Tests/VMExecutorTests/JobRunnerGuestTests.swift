import Foundation
import Testing
import VMExecService
import VMExecTestSupport
import VMExecutor

extension RealGuests {
    /// The daemon's job runner on real guests: jobs queue, run, keep their
    /// output and end exactly once, also when a guest dies under them.
    @Suite("Jobs on real guests", .timeLimit(.minutes(10)))
    struct JobRunnerGuestTests {
        @Test("40 jobs from many clients across two sandboxes: every one exits once with its own output")
        func manyJobs() async throws {
            let store = try JobStore(path: nil)
            let first = JobRunner(id: "shared", sandbox: try await SharedGuest.shared.get(), store: store, concurrency: 4)
            let own = try await SharedGuest.started()
            defer { Task { await own.shutdown() } }
            let second = JobRunner(id: "own", sandbox: own, store: store, concurrency: 2)
            let ids = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                for i in 0..<40 {
                    group.addTask {
                        let runner = i % 2 == 0 ? first : second
                        let job = try await runner.submit(
                            JobRequest(["sh", "-c", "echo job-\(i); echo err-\(i) >&2; exit \(i % 3)"]))
                        return (i, job.id)
                    }
                }
                var ids: [Int: String] = [:]
                for try await (i, id) in group { ids[i] = id }
                return ids
            }
            for (i, id) in ids.sorted(by: { $0.key < $1.key }) {
                let runner = i % 2 == 0 ? first : second
                let done = try await runner.wait(id)
                #expect(done.state == .exited && done.outcome?.exitCode == Int32(i % 3), "job \(i): \(done)")
                #expect(try store.output(id, stream: .stdout, offset: 0, limit: 100).bytes == Array("job-\(i)\n".utf8))
                #expect(try store.output(id, stream: .stderr, offset: 0, limit: 100).bytes == Array("err-\(i)\n".utf8))
            }
            #expect(try store.jobs(sandbox: "shared").count == 20 && store.jobs(sandbox: "own").count == 20)
        }

        @Test("a job whose guest dies fails with the reason; the next job starts the sandbox again")
        func guestDies() async throws {
            let store = try JobStore(path: nil)
            let sandbox = try await SharedGuest.started()
            defer { Task { await sandbox.shutdown() } }
            let runner = JobRunner(id: "dying", sandbox: sandbox, store: store)
            let victim = try await runner.submit(JobRequest(["sh", "-c", "echo started; sleep 300"]))
            // Wait until it runs and has said so, then kill QEMU under it.
            for _ in 0..<200 where try store.job(victim.id)?.stdoutBytes == 0 {
                try await Task.sleep(for: .milliseconds(50))
            }
            let qemu = try #require(await sandbox.qemuProcessID)
            let killed = ContinuousClock.now
            kill(qemu, SIGKILL)
            let failed = try await runner.wait(victim.id)
            #expect(ContinuousClock.now - killed < .seconds(2), "the job failed soon after its guest died")
            #expect(failed.state == .failed && failed.reason?.contains("guest stopped") == true, "\(failed)")
            #expect(try store.output(victim.id, stream: .stdout, offset: 0, limit: 100).bytes == Array("started\n".utf8))
            let next = try await runner.wait(try await runner.submit(JobRequest(["echo", "again"])).id)
            #expect(next.state == .exited && next.outcome?.exitCode == 0, "\(next)")
            #expect(try store.output(next.id, stream: .stdout, offset: 0, limit: 100).bytes == Array("again\n".utf8))
        }

        @Test(
            "cancel: a queued job never runs; a running one is killed and recorded cancelled; limits replace defaults one by one")
        func cancelAndLimits() async throws {
            let store = try JobStore(path: nil)
            let runner = JobRunner(id: "cancel", sandbox: try await SharedGuest.shared.get(), store: store, concurrency: 1)
            let running = try await runner.submit(JobRequest(["sleep", "300"]))
            let queued = try await runner.submit(JobRequest(["touch", "/tmp/never"]))
            try await runner.cancel(queued.id)
            for _ in 0..<200 where try store.job(running.id)?.state != .running {
                try await Task.sleep(for: .milliseconds(50))
            }
            try await Task.sleep(for: .milliseconds(300))
            try await runner.cancel(running.id)
            let stopped = try await runner.wait(running.id)
            #expect(stopped.state == .cancelled && stopped.outcome?.exitCode == 137, "\(stopped)")
            let never = try await runner.wait(queued.id)
            #expect(never.state == .cancelled && never.started == nil)
            // A memory limit given alone keeps the sandbox's process limit.
            let limited = try await runner.wait(
                try await runner.submit(
                    JobRequest(
                        [
                            "sh", "-c",
                            "g=$(cut -d: -f3 /proc/self/cgroup); cat /sys/fs/cgroup$g/memory.max /sys/fs/cgroup$g/pids.max",
                        ],
                        limits: Limits(memoryBytes: 64 << 20))
                ).id)
            let text = String(decoding: try store.output(limited.id, stream: .stdout, offset: 0, limit: 100).bytes, as: UTF8.self)
            #expect(text == "\(64 << 20)\n\(Limits.defaults(guestMemoryMiB: 512).processes ?? 0)\n", "\(text)")
        }
    }
}
