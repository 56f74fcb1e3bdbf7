import Foundation
import Testing
import VMExecService
import VMExecutor

/// Sandboxes as the job store keeps them, for a daemon that restarts.
@Suite("Sandbox records")
struct SandboxStoreTests {
    @Test("sandboxes survive a reopen; a name is unique per owner; deleting one takes its jobs along")
    func records() throws {
        let path = JobStoreTests.scratch()
        let spec = SandboxSpec(shards: ["cpython"], store: "data", memoryMiB: 256, concurrency: 2, idleTimeoutSeconds: 60)
        do {
            let store = try JobStore(path: path)
            try store.insertSandbox(SandboxRecord(id: "s1", owner: "alice", name: "box", spec: spec, created: Date()))
            try store.insertSandbox(SandboxRecord(id: "s2", owner: "bob", name: "box", spec: SandboxSpec(), created: Date()))
            #expect(throws: VMExecError.self) {
                try store.insertSandbox(SandboxRecord(id: "s3", owner: "alice", name: "box", spec: spec, created: Date()))
            }
            let job = try store.submit(JobRequest(["true"], stdin: Data("in".utf8), stdinOpen: true), sandbox: "s1")
            #expect(try store.start(job.id))
            _ = try store.finish(job.id, state: .failed, reason: "no such program", failureCode: "commandNotFound")
        }
        let reopened = try JobStore(path: path)
        let all = try reopened.sandboxes()
        #expect(all.map(\.id) == ["s1", "s2"])
        #expect(all.first?.spec == spec && all.first?.owner == "alice")
        let job = try #require(try reopened.jobs(sandbox: "s1").first)
        #expect(job.failureCode == "commandNotFound" && job.request.stdin == Data("in".utf8) && job.request.stdinOpen)
        try reopened.deleteSandbox("s1")
        #expect(try reopened.sandboxes().map(\.id) == ["s2"])
        #expect(try reopened.jobs(sandbox: "s1").isEmpty && (try reopened.job(job.id)) == nil)
    }

    @Test("a job that was running when the daemon stopped is failed with a code saying so")
    func interruptedCode() throws {
        let store = try JobStore(path: JobStoreTests.scratch())
        let job = try store.submit(JobRequest(["sleep", "9"]), sandbox: "s")
        #expect(try store.start(job.id))
        _ = try store.recover()
        let failed = try #require(try store.job(job.id))
        #expect(failed.state == .failed && failed.failureCode == "daemonStopped")
    }
}
