import Foundation
import Logging
import Metrics
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
    /// Jobs running now, with their process once it started.
    private var running: [String: RunningJob?] = [:]
    /// Python jobs' callbacks waiting for the client's answer, by job and callback id.
    private var callbacks:
        [String: [Int: (call: PendingCallback, answer: CheckedContinuation<Result<String, VMExecError>, Never>)]] = [:]
    private var callbackCount: [String: Int] = [:]
    /// How long a callback waits for the client's answer before the code gets an error.
    public nonisolated let callbackTimeout: Duration
    private var cancelling: Set<String> = []
    /// Counts each job's changes (output appended, state changed); watchers wait for the next.
    private var versions: [String: Int] = [:]
    private var watchers: [String: [(id: UInt64, continuation: CheckedContinuation<Void, Never>)]] = [:]
    private var nextWatcher: UInt64 = 0
    /// False once the daemon is stopping: queued jobs stay queued (in the store) for the next daemon.
    private var accepting = true
    /// When a job last started or ended here (the sandbox's idle clock).
    public private(set) var lastActivity = Date()

    /// Limits every job starts from (the sandbox's); nil: the guest's defaults.
    private let defaultLimits: Limits?

    /// Each job's start and end, with its id (the sandbox's metadata comes with the logger).
    private let logger: Logger

    public init(
        id: String, sandbox: Sandbox, store: JobStore, concurrency: Int = 4, defaultLimits: Limits? = nil,
        callbackTimeout: Duration = .seconds(60), logger: Logger = Logger(label: "vmexec.jobs")
    ) {
        self.callbackTimeout = callbackTimeout
        self.logger = logger
        self.id = id
        self.sandbox = sandbox
        self.store = store
        self.concurrency = max(1, concurrency)
        self.defaultLimits = defaultLimits
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
            let seen = version(of: jobID)
            guard let record = try store.job(jobID), record.sandbox == id else {
                throw VMExecError(.notFound, "no job \(jobID) in this sandbox")
            }
            if record.state.isFinal { return record }
            await change(of: jobID, since: seen)
        }
    }

    /// How many times the job changed (output or state) while this runner ran it.
    public func version(of jobID: String) -> Int { versions[jobID] ?? 0 }

    /// Returns once the job has changed since `version` (at once if it already
    /// has, or if it is neither queued nor running here), or the caller is cancelled.
    public func change(of jobID: String, since version: Int) async {
        guard self.version(of: jobID) == version, queue.contains(jobID) || running[jobID] != nil else { return }
        nextWatcher += 1
        let watcher = nextWatcher
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if Task.isCancelled {
                    continuation.resume()
                } else {
                    watchers[jobID, default: []].append((watcher, continuation))
                }
            }
        } onCancel: {
            Task { await self.dropWatcher(watcher, of: jobID) }
        }
    }

    private func dropWatcher(_ watcher: UInt64, of jobID: String) {
        guard let at = watchers[jobID]?.firstIndex(where: { $0.id == watcher }) else { return }
        watchers[jobID]?.remove(at: at).continuation.resume()
    }

    /// Writes to a running job's stdin (one submitted with `stdinOpen`); returns once the guest took the bytes.
    public func writeStdin(_ jobID: String, _ bytes: [UInt8]) async throws {
        let stream = try await openStdin(jobID)
        guard try await stream.writeStdin(bytes) else {
            throw VMExecError(.invalidRequest, "job \(jobID) has closed its stdin (or reached its stdin limit)")
        }
    }

    /// Ends a running job's stdin: it reads end of file.
    public func closeStdin(_ jobID: String) async throws {
        try await openStdin(jobID).closeStdin()
    }

    /// The stream of a job that takes stdin; waits while the job is queued or starting.
    private func openStdin(_ jobID: String) async throws -> ExecStream {
        while queue.contains(jobID) || (running[jobID] != nil && running[jobID]! == nil) {
            await change(of: jobID, since: version(of: jobID))
            try Task.checkCancellation()
        }
        guard let job = running[jobID] ?? nil, let record = try store.job(jobID) else {
            throw VMExecError(.notFound, "job \(jobID) is not running in this sandbox")
        }
        guard record.request.stdinOpen, case .command(let stream) = job else {
            throw VMExecError(
                .invalidRequest,
                record.request.code != nil
                    ? "job \(jobID) is a Python job: its stdin is the runner's; pass input as shared values"
                    : "job \(jobID) was not submitted with stdinOpen; its stdin is closed")
        }
        return stream
    }

    /// Cancels a job: a queued one never runs; a running one's process group
    /// is killed and the job recorded as cancelled. An ended job is left as it ended.
    public func cancel(_ jobID: String) async throws {
        if let at = queue.firstIndex(of: jobID) {
            queue.remove(at: at)
            try store.finish(jobID, state: .cancelled, reason: "cancelled before it ran")
            bump(jobID)
            return
        }
        guard let job = running[jobID] else { return }
        cancelling.insert(jobID)
        failCallbacks(of: jobID, "the job was cancelled")
        try? await job?.signal(SIGKILL)
    }

    /// Sends `signal` to a running job's process group.
    public func signal(_ jobID: String, _ signal: Int32) async throws {
        guard let job = running[jobID] ?? nil else {
            throw VMExecError(.notFound, "job \(jobID) is not running in this sandbox")
        }
        try await job.signal(signal)
    }

    /// Jobs waiting for their turn, and jobs running.
    public var depth: (queued: Int, running: Int) { (queue.count, running.count) }

    /// Cancels every queued and running job (the sandbox is going away) and waits until none runs.
    public func cancelAll(reason: String) async {
        for jobID in queue {
            _ = try? store.finish(jobID, state: .cancelled, reason: reason)
            bump(jobID)
        }
        queue.removeAll()
        let runningNow = Array(running.keys)
        for jobID in runningNow { try? await cancel(jobID) }
        for jobID in runningNow { _ = try? await wait(jobID) }
    }

    /// Restarts the idle clock (the files API used the sandbox).
    public func touch() { lastActivity = Date() }

    /// Terminal sessions open on the sandbox now: beside the jobs, never
    /// queued behind them, and keeping the sandbox from being idle.
    public private(set) var terminals = 0

    /// Starts a command on a terminal, beside the jobs: an interactive
    /// shell must not wait for the queue, nor hold it up. Its limits start
    /// from the sandbox's, as a job's do. Call ``terminalEnded()`` once it is over.
    public func startTerminal(_ request: JobRequest, size: TerminalSize) async throws -> ExecStream {
        var command = Self.command(request, defaults: await limitsToStartFrom())
        command.terminal = size
        command.stdin = .caller
        if command.environment["TERM"] == nil { command.environment["TERM"] = "xterm-256color" }
        terminals += 1
        lastActivity = Date()
        do {
            return try await sandbox.stream(command)
        } catch {
            terminalEnded()
            throw error
        }
    }

    /// A terminal session is over: the idle clock starts again from now.
    public func terminalEnded() {
        terminals = max(0, terminals - 1)
        lastActivity = Date()
    }

    /// Starts no more jobs; those queued stay queued in the store, for the daemon that comes next.
    public func stopStarting() { accepting = false }

    private func pump() {
        while accepting, running.count < concurrency, !queue.isEmpty {
            let jobID = queue.removeFirst()
            running[jobID] = .some(nil)
            Task { await self.run(jobID) }
        }
    }

    private func run(_ jobID: String) async {
        defer {
            running[jobID] = nil
            cancelling.remove(jobID)
            lastActivity = Date()
            bump(jobID)
            pump()
        }
        lastActivity = Date()
        let started = ContinuousClock.now
        defer {
            JobMetrics.ended(jobID, in: store, after: ContinuousClock.now - started)
            if let record = try? store.job(jobID) {
                logger.info(
                    "job ended",
                    metadata: [
                        "job": "\(jobID)", "state": "\(record.state.rawValue)",
                        "exit": "\(record.outcome.map { "\($0.exitCode)" } ?? "-")",
                        "time": "\(ContinuousClock.now - started)",
                    ])
            }
        }
        do {
            guard try store.start(jobID), let record = try store.job(jobID) else { return }
            JobMetrics.queueWait(since: record.created)
            logger.info("job started", metadata: ["job": "\(jobID)", "argv0": "\(record.request.arguments.first ?? "")"])
            bump(jobID)
            try await sandbox.start()  // no-op while the guest runs; boots a fresh one after a death
            if let code = record.request.code {
                try await runCode(jobID, record.request, code)
                return
            }
            let stream = try await sandbox.stream(Self.command(record.request, defaults: await limitsToStartFrom()))
            // The submitted stdin goes first, before writers through writeStdin see the stream.
            if record.request.stdinOpen, let first = record.request.stdin, !first.isEmpty {
                _ = try await stream.writeStdin(Array(first))
            }
            running[jobID] = .command(stream)
            bump(jobID)
            if cancelling.contains(jobID) { try? await stream.signal(SIGKILL) }
            var outcome: JobOutcome?
            for try await event in stream {
                switch event {
                case .stdout(let bytes): try store.append(bytes, to: .stdout, of: jobID)
                case .stderr(let bytes): try store.append(bytes, to: .stderr, of: jobID)
                case .exit(let termination, let usage): outcome = JobOutcome(termination: termination, usage: usage)
                }
                bump(jobID)
            }
            try await finish(jobID, outcome: outcome)
        } catch {
            let failure = error as? any VMExecFailure
            _ = try? store.finish(
                jobID, state: .failed, reason: failure?.explanation ?? "\(error)",
                failureCode: failure?.failureCode ?? "hostFailure")
        }
    }

    /// Records a job that ran to its end (or was cancelled while it ran).
    private func finish(_ jobID: String, outcome: JobOutcome?, code: CodeOutcome? = nil) async throws {
        // A job's writes reach the store's image before it is reported done: a
        // guest that dies later cannot take them along.
        if await sandbox.configuration.store != nil { try? await sandbox.sync() }
        if cancelling.contains(jobID) {
            try store.finish(jobID, state: .cancelled, outcome: outcome, reason: "cancelled while it ran", code: code)
        } else {
            try store.finish(jobID, state: .exited, outcome: outcome, code: code)
        }
    }

    /// Runs a code job through its language's runner: the code's output goes to the job's
    /// streams, its value, exception and reports to its record; its callbacks wait for the client.
    private func runCode(_ jobID: String, _ request: JobRequest, _ job: CodeJob) async throws {
        let base = Self.command(request, defaults: await limitsToStartFrom())
        if job.language == .node {
            let code = NodeCode(
                job.source, filename: job.filename, environment: base.environment,
                workingDirectory: base.workingDirectory, timeout: base.timeout, user: base.user, limits: base.limits)
            return try await follow(jobID, try await sandbox.node.start(code))
        }
        var functions: [String: PythonHostFunction] = [:]
        for name in job.callbacks {
            functions[name] = { [weak self] call in
                guard let self else { throw VMExecError(.notRunning, "the daemon is stopping") }
                return try await self.callback(jobID, call)
            }
        }
        let code = PythonCode(
            job.source, filename: job.filename, environment: base.environment, workingDirectory: base.workingDirectory,
            timeout: base.timeout, user: base.user, limits: base.limits, control: job.control, shared: job.shared,
            hostFunctions: functions)
        try await follow(jobID, try await sandbox.python.start(code))
    }

    /// Keeps a runner's events with the job until it ends.
    private func follow(_ jobID: String, _ execution: PythonExecution) async throws {
        running[jobID] = .python(execution)
        bump(jobID)
        if cancelling.contains(jobID) { try? await execution.signal(SIGKILL) }
        defer { failCallbacks(of: jobID, "the job ended") }
        var ended: PythonResult?
        for try await event in execution.events {
            switch event {
            case .stdout(let bytes): try store.append(bytes, to: .stdout, of: jobID)
            case .stderr(let bytes): try store.append(bytes, to: .stderr, of: jobID)
            case .result(let r): ended = r
            case .step, .ignoredError, .loopLimit, .output: break  // kept in the result
            }
            bump(jobID)
        }
        try await finish(
            jobID, outcome: ended.map { JobOutcome(termination: $0.termination, usage: $0.usage) },
            code: ended.map(CodeOutcome.init))
    }

    /// A Python job's callback: waits for the client's answer (or the timeout).
    private func callback(_ jobID: String, _ call: PythonHostCall) async throws -> String {
        callbackCount[jobID, default: 0] += 1
        let id = callbackCount[jobID]!
        let pending = PendingCallback(
            id: id, name: call.name, arguments: call.arguments, keywordArguments: call.keywordArguments, since: Date())
        let timeout = callbackTimeout
        let expiry = Task { [weak self] in
            try await Task.sleep(for: timeout)
            await self?.expire(jobID, id)
        }
        defer { expiry.cancel() }
        let answer = await withCheckedContinuation { continuation in
            callbacks[jobID, default: [:]][id] = (pending, continuation)
            bump(jobID)
        }
        return try answer.get()
    }

    private func expire(_ jobID: String, _ id: Int) {
        guard let waiting = callbacks[jobID]?.removeValue(forKey: id) else { return }
        waiting.answer.resume(
            returning: .failure(VMExecError(.limitReached, "no answer from the client within \(callbackTimeout)")))
        bump(jobID)
    }

    private func failCallbacks(of jobID: String, _ why: String) {
        for (_, waiting) in callbacks.removeValue(forKey: jobID) ?? [:] {
            waiting.answer.resume(returning: .failure(VMExecError(.notRunning, why)))
        }
        callbackCount[jobID] = nil
    }

    /// The callbacks of a running Python job that wait for an answer, oldest first.
    public func pendingCallbacks(of jobID: String) -> [PendingCallback] {
        (callbacks[jobID] ?? [:]).values.map(\.call).sorted { $0.id < $1.id }
    }

    /// Answers a waiting callback: a JSON value (as text) the code gets, or an error message it
    /// gets as `CallbackError`.
    public func answerCallback(_ jobID: String, _ id: Int, value: String?, error: String?) throws {
        guard (value == nil) != (error == nil) else {
            throw VMExecError(.invalidRequest, "answer a callback with a value or an error, one of them")
        }
        if let value, (try? JSONSerialization.jsonObject(with: Data(value.utf8), options: .fragmentsAllowed)) == nil {
            throw VMExecError(.invalidRequest, "the callback's value is not JSON")
        }
        guard let waiting = callbacks[jobID]?.removeValue(forKey: id) else {
            throw VMExecError(.notFound, "job \(jobID) has no callback \(id) waiting (answered, timed out, or never made)")
        }
        waiting.answer.resume(returning: value.map { .success($0) } ?? .failure(VMExecError(.invalidRequest, error ?? "")))
        bump(jobID)
    }

    /// Counts a change of the job and wakes whoever waits for one.
    private func bump(_ jobID: String) {
        if queue.contains(jobID) || running[jobID] != nil {
            versions[jobID, default: 0] += 1
        } else {
            versions[jobID] = nil  // ended: watchers read the store from now on
        }
        for watcher in watchers.removeValue(forKey: jobID) ?? [] { watcher.continuation.resume() }
    }

    /// The limits a command starts from: the guest's, with the sandbox's defaults over them.
    private func limitsToStartFrom() async -> Limits {
        let config = await sandbox.configuration
        let guestDefaults = config.limits ?? .defaults(guestMemoryMiB: config.memoryMiB)
        return defaultLimits.map { guestDefaults.overridden(by: $0) } ?? guestDefaults
    }

    /// The command a request describes; its limits replace `defaults` one by one.
    static func command(_ r: JobRequest, defaults: Limits) -> Command {
        let user: GuestUser? = r.uid.map { uid in
            let gid = r.gid ?? uid
            return uid == 0 && gid == 0 ? .root : .id(uid: uid, gid: gid)
        }
        let stdin: Command.Stdin =
            if r.stdinOpen { .caller } else if let bytes = r.stdin, !bytes.isEmpty { .bytes(Array(bytes)) } else { .none }
        return Command(
            r.arguments, environment: r.environment, workingDirectory: r.workingDirectory,
            timeout: r.timeoutSeconds.map { .milliseconds(Int64($0 * 1000)) }, stdin: stdin, user: user,
            limits: defaults.overridden(by: r.limits ?? Limits()), privateTmp: r.sharedTmp ? false : nil)
    }
}

/// A started job's process: a command's stream, or a Python job's execution.
enum RunningJob: Sendable {
    case command(ExecStream)
    case python(PythonExecution)

    func signal(_ number: Int32) async throws {
        switch self {
        case .command(let stream): try await stream.signal(number)
        case .python(let execution): try await execution.signal(number)
        }
    }
}
