import Foundation
import Testing
import VMExecService
import VMExecutor

/// The job store on its own: SQLite files in a scratch directory, reopened
/// as a restarted daemon would.
@Suite("Job store")
struct JobStoreTests {
    static func scratch() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-jobs-\(UUID().uuidString)/jobs.sqlite").path
    }

    static let exited = JobOutcome(
        termination: .exited(3), usage: Usage(wallNanoseconds: 1, userMicroseconds: 2, systemMicroseconds: 3, maxRSSKiB: 4))

    @Test("a job goes queued, running, exited once; its output pages by offset, also while it runs")
    func lifecycle() throws {
        let store = try JobStore(path: Self.scratch())
        let job = try store.submit(JobRequest(["echo", "hi"]), sandbox: "a")
        #expect(try store.job(job.id)?.state == .queued)
        #expect(try store.start(job.id))
        #expect(try !store.start(job.id), "a running job does not start again")
        try store.append(Array("hello ".utf8), to: .stdout, of: job.id)
        try store.append(Array("world".utf8), to: .stdout, of: job.id)
        try store.append(Array("oops".utf8), to: .stderr, of: job.id)
        let partial = try store.output(job.id, stream: .stdout, offset: 3, limit: 5)
        #expect(partial == OutputPage(offset: 3, bytes: Array("lo wo".utf8), nextOffset: 8, complete: false))
        #expect(try store.finish(job.id, state: .exited, outcome: Self.exited))
        #expect(try !store.finish(job.id, state: .failed, reason: "late"), "an ended job stays as it ended")
        let ended = try #require(try store.job(job.id))
        #expect(ended.state == .exited && ended.outcome?.exitCode == 3 && ended.reason == nil)
        try store.append(Array("late".utf8), to: .stdout, of: job.id)  // after its end: dropped
        let rest = try store.output(job.id, stream: .stdout, offset: 8, limit: 100)
        #expect(rest.bytes == Array("rld".utf8) && rest.nextOffset == 11 && rest.complete)
        #expect(try store.output(job.id, stream: .stderr, offset: 0, limit: 100).bytes == Array("oops".utf8))
    }

    @Test("output past the job's limit is dropped and the job says which stream was cut")
    func outputCap() throws {
        let store = try JobStore(path: nil)
        let job = try store.submit(JobRequest(["yes"], outputLimit: 10), sandbox: "a")
        _ = try store.start(job.id)
        try store.append([UInt8](repeating: 0x79, count: 7), to: .stdout, of: job.id)
        try store.append([UInt8](repeating: 0x7a, count: 7), to: .stdout, of: job.id)
        try store.append([UInt8](repeating: 0x7a, count: 7), to: .stdout, of: job.id)
        let record = try #require(try store.job(job.id))
        #expect(record.stdoutBytes == 10 && record.stdoutTruncated && !record.stderrTruncated)
        #expect(try store.output(job.id, stream: .stdout, offset: 0, limit: 100).bytes.count == 10)
    }

    @Test("after a restart: a running job is failed with the reason and never runs again; queued ones run, oldest first")
    func recovery() throws {
        let path = Self.scratch()
        var ids: [String] = []
        do {
            let store = try JobStore(path: path)
            let done = try store.submit(JobRequest(["true"]), sandbox: "a")
            _ = try store.start(done.id)
            try store.finish(done.id, state: .exited, outcome: Self.exited)
            let running = try store.submit(JobRequest(["sleep", "9"]), sandbox: "a")
            _ = try store.start(running.id)
            try store.append(Array("partial".utf8), to: .stdout, of: running.id)
            let first = try store.submit(JobRequest(["a"]), sandbox: "b")
            let second = try store.submit(JobRequest(["b"]), sandbox: "a")
            ids = [done.id, running.id, first.id, second.id]
        }
        let reopened = try JobStore(path: path)
        let queued = try reopened.recover()
        #expect(queued.map(\.id) == [ids[2], ids[3]])
        let failed = try #require(try reopened.job(ids[1]))
        #expect(failed.state == .failed && failed.reason?.contains("daemon stopped") == true)
        #expect(try reopened.output(ids[1], stream: .stdout, offset: 0, limit: 100).bytes == Array("partial".utf8))
        #expect(try reopened.job(ids[0])?.state == .exited, "a finished job stays finished")
        #expect(try reopened.recover().map(\.id) == [ids[2], ids[3]], "recovering twice changes nothing")
        #expect(try reopened.jobs(sandbox: "a").map(\.id) == [ids[0], ids[1], ids[3]])
    }

    @Test("a cancelled queued job never starts")
    func cancelQueued() throws {
        let store = try JobStore(path: nil)
        let job = try store.submit(JobRequest(["true"]), sandbox: "a")
        #expect(try store.finish(job.id, state: .cancelled, reason: "cancelled by the client"))
        #expect(try !store.start(job.id))
        #expect(try store.recover().isEmpty)
    }

    @Test("pruning keeps running and queued jobs and the newest ended ones")
    func prune() throws {
        let store = try JobStore(path: nil)
        var ended: [String] = []
        for _ in 0..<5 {
            let j = try store.submit(JobRequest(["true"]), sandbox: "a")
            _ = try store.start(j.id)
            try store.append(Array("x".utf8), to: .stdout, of: j.id)
            try store.finish(j.id, state: .exited, outcome: Self.exited)
            ended.append(j.id)
        }
        let live = try store.submit(JobRequest(["sleep", "9"]), sandbox: "a")
        try store.prune(olderThan: 3600, keepPerSandbox: 2)
        #expect(try store.jobs(sandbox: "a").map(\.id) == Array(ended.suffix(2)) + [live.id])
        #expect(throws: VMExecError.self) { try store.output(ended[0], stream: .stdout, offset: 0, limit: 1) }
    }

    @Test("concurrent writers from many tasks lose nothing")
    func concurrentAppends() async throws {
        let store = try JobStore(path: Self.scratch())
        let jobs = try (0..<8).map { _ in try store.submit(JobRequest(["x"]), sandbox: "a") }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for job in jobs {
                group.addTask {
                    _ = try store.start(job.id)
                    for i in 0..<50 { try store.append(Array("\(i % 10)".utf8), to: .stdout, of: job.id) }
                    try store.finish(job.id, state: .exited, outcome: Self.exited)
                }
            }
            try await group.waitForAll()
        }
        for job in jobs {
            let page = try store.output(job.id, stream: .stdout, offset: 0, limit: 1000)
            #expect(page.bytes.count == 50 && page.complete)
        }
    }
}
