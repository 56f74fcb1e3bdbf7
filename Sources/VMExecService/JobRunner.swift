import Foundation
import VMExecutor

/// Runs one sandbox's jobs: first in, first out, at most `concurrency` at
/// once, each written to the ``JobStore`` before it runs and its output as
/// it arrives.
///
/// A job whose guest dies under it fails with the guest's last words; the
/// next job starts the sandbox again (on the same store, if it has one).
/// Nothing here knows of HTTP: the daemon's routes call these methods.
public actor JobRunner {
    public nonisolated let id: String
    public nonisolated let sandbox: Sandbox
    private let store: JobStore
    private let concurrency: Int
    private var queue: [String] = []
    /// Jobs running now, with their stream once the command started.
    private var running: [String: ExecStream?] = [:]
    private var cancelling: Set<String> = []
    private var waiters: [String: [CheckedContinuation<Void, Never>]] = [:]

    public init(id: String, sandbox: Sandbox, store: JobStore, concurrency: Int = 4) {
        self.id = id
        self.sandbox = sandbox
        self.store = store
        self.concurrency = max(1, concurrency)
    }

    /// Records `request` as a queued job and runs it when its turn comes.
    public func submit(_ request: JobRequest) throws -> JobRecord {
        let record = try store.submit(request, sandbox: id)
        queue.append(record.id)
        pump()
        return record
    }

    /// Queues a job the store already holds (a queued job recovered after a restart).
    public func resume(_ record: JobRecord) {
        guard record.sandbox == id, record.state == .queued, !queue.contains(record.id) else { return }
        queue.append(record.id)
        pump()
    }

    /// Waits until the job has ended, and returns it.
    public func wait(_ jobID: String) async throws -> JobRecord {
        while true {
            guard let record = try store.job(jobID) else {
                throw VMExecError(.notFound, "no job \(jobID) in sandbox \(id)")
            }
            if record.state.isFinal { return record }
            await withCheckedContinuation { waiters[jobID, default: []].append($0) }
        }
    }

    /// Cancels a job: a queued one never runs; a running one's process group
    /// is killed and the job recorded as cancelled. An ended job is left as it ended.
    public func cancel(_ jobID: String) async throws {
        if let at = queue.firstIndex(of: jobID) {
            queue.remove(at: at)
            try store.finish(jobID, state: .cancelled, reason: "cancelled before it ran")
            wake(jobID)
            return
        }
        guard let stream = running[jobID] else { return }
        cancelling.insert(jobID)
        try? await stream?.signal(SIGKILL)
    }

    /// Sends `signal` to a running job's process group.
    public func signal(_ jobID: String, _ signal: Int32) async throws {
        guard let stream = running[jobID] ?? nil else {
            throw VMExecError(.notFound, "job \(jobID) is not running in sandbox \(id)")
        }
        try await stream.signal(signal)
    }

    /// Jobs waiting for their turn, and jobs running.
    public var depth: (queued: Int, running: Int) { (queue.count, running.count) }

    private func pump() {
        while running.count < concurrency, !queue.isEmpty {
            let jobID = queue.removeFirst()
            running[jobID] = .some(nil)
            Task { await self.run(jobID) }
        }
    }

    private func run(_ jobID: String) async {
        defer {
            running[jobID] = nil
            cancelling.remove(jobID)
            wake(jobID)
            pump()
        }
        do {
            guard try store.start(jobID), let record = try store.job(jobID) else { return }
            try await sandbox.start()  // no-op while the guest runs; boots a fresh one after a death
            let config = await sandbox.configuration
            let defaults = config.limits ?? .defaults(guestMemoryMiB: config.memoryMiB)
            let stream = try await sandbox.stream(Self.command(record.request, defaults: defaults))
            running[jobID] = stream
            if cancelling.contains(jobID) { try? await stream.signal(SIGKILL) }
            var outcome: JobOutcome?
            for try await event in stream {
                switch event {
                case .stdout(let bytes): try store.append(bytes, to: .stdout, of: jobID)
                case .stderr(let bytes): try store.append(bytes, to: .stderr, of: jobID)
                case .exit(let termination, let usage): outcome = JobOutcome(termination: termination, usage: usage)
                }
            }
            if cancelling.contains(jobID) {
                try store.finish(jobID, state: .cancelled, outcome: outcome, reason: "cancelled while it ran")
            } else {
                try store.finish(jobID, state: .exited, outcome: outcome)
            }
        } catch {
            let why = (error as? any VMExecFailure)?.explanation ?? "\(error)"
            _ = try? store.finish(jobID, state: .failed, reason: why)
        }
    }

    private func wake(_ jobID: String) {
        for waiter in waiters.removeValue(forKey: jobID) ?? [] { waiter.resume() }
    }

    /// The command a request describes; its limits replace `defaults` one by one.
    static func command(_ r: JobRequest, defaults: Limits) -> Command {
        let user: GuestUser? = r.uid.map { uid in
            let gid = r.gid ?? uid
            return uid == 0 && gid == 0 ? .root : .id(uid: uid, gid: gid)
        }
        return Command(
            r.arguments, environment: r.environment, workingDirectory: r.workingDirectory,
            timeout: r.timeoutSeconds.map { .milliseconds(Int64($0 * 1000)) }, user: user,
            limits: defaults.overridden(by: r.limits ?? Limits()))
    }
}
