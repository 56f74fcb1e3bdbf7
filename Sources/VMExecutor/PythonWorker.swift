import Foundation

/// A Python process that keeps a module loaded and answers calls with JSON
/// arguments, one at a time, its state kept between them
/// (`python3 -m vmexec_runner worker`). Start it with ``PythonRunner/worker(_:)``;
/// ``close()`` ends it.
///
/// A call's exception leaves the worker running. A call that exits the process,
/// is killed (its memory, a signal), or runs past the control's time limit by
/// more than 5 s (the worker is then killed) fails, and so does every call after
/// it: start a new worker.
public actor PythonWorker {
    private let exec: ExecStream
    private var iterator: ExecStream.AsyncIterator
    private var records = PythonRecords()
    private var queue: [PythonRecords.Record] = []
    private let outputLimit: Int
    private let control: PythonControl
    private var nextID = 0
    private var ended: Termination?
    private var runnerErrors: [UInt8] = []
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    private let sharing: PythonSharing

    private init(_ exec: ExecStream, outputLimit: Int, control: PythonControl, sharing: PythonSharing) {
        self.exec = exec
        self.iterator = exec.makeAsyncIterator()
        self.outputLimit = outputLimit
        self.control = control
        self.sharing = sharing
    }

    /// A worker dropped without ``close()`` does not stay in the guest.
    deinit {
        if ended == nil {
            let exec = exec
            Task { try? await exec.signal(SIGKILL) }
        }
    }

    static func start(_ sandbox: Sandbox, _ module: PythonModule) async throws -> PythonWorker {
        let request = try module.loadRequest()
        // The timeout is the worker's whole life; the control's time limit is per call.
        let exec = try await sandbox.stream(
            await sandbox.pythonCommand(module.command("worker", stdin: .caller, timeout: module.timeout)))
        let worker = PythonWorker(
            exec, outputLimit: sandbox.configuration.outputLimit, control: module.control, sharing: module.sharing)
        try await worker.load(request)
        return worker
    }

    private func load(_ request: [String: Any]) async throws {
        try await send(request)
        while let record = try await nextRecord() {
            if case .callback(let callback) = record { try await answer(callback) }
            guard case .ready(let error) = record else { continue }
            guard let error else { return }
            throw VMExecError(.invalidRequest, "the Python worker's code raised while loading:\n\(error.traceback)")
        }
        throw ending("while loading its code")
    }

    /// Calls `function` with a JSON array of positional and a JSON object of keyword arguments.
    /// Host functions the module calls are answered while the call runs.
    /// The result's termination is exited 0, or 1 when the call raised; its usage is the call's.
    public func call(_ function: String, arguments: String = "[]", keywordArguments: String = "{}") async throws
        -> PythonResult
    {
        await acquire()
        defer { release() }
        if ended != nil { throw ending("before the call to \(function)") }
        nextID += 1
        let id = nextID
        var request = try PythonCall.callFields(function, arguments, keywordArguments)
        request["id"] = id
        try await send(request)
        // A call that ignores its time limit (a C call that never returns to Python) ends the worker.
        let watchdog = control.timeLimit.map { limit in
            Task { [exec] in
                try await Task.sleep(for: limit + PythonControl.killGrace)
                try? await exec.signal(SIGKILL)
            }
        }
        defer { watchdog?.cancel() }
        var parts = PythonResultParts(outputLimit: outputLimit)
        while let record = try await nextRecord() {
            if case .result(let ending) = record, ending.id == id || ending.id == nil {
                return parts.result(
                    ending, termination: .exited(ending.error == nil ? 0 : 1),
                    usage: ending.usage?.usage
                        ?? Usage(wallNanoseconds: 0, userMicroseconds: 0, systemMicroseconds: 0, maxRSSKiB: 0))
            }
            if case .callback(let callback) = record { try await answer(callback) }
            _ = parts.add(record)
        }
        throw ending("during the call to \(function)")
    }

    /// Ends the worker (its stdin closes, it finishes) and says how it ended.
    @discardableResult
    public func close() async throws -> Termination {
        await acquire()
        defer { release() }
        if ended == nil {
            try? await exec.closeStdin()
            while try await nextRecord() != nil {}
        }
        return ended ?? .exited(0)
    }

    private func answer(_ callback: PythonRecords.Callback) async throws {
        let line = await sharing.answer(callback)
        _ = try await exec.writeStdin(line)
    }

    private func send(_ request: [String: Any]) async throws {
        var line = try JSONSerialization.data(withJSONObject: request)
        line.append(UInt8(ascii: "\n"))
        do {
            _ = try await exec.writeStdin(Array(line))
        } catch {
            // The worker may have ended first: its ending is the better reason.
            while try await nextRecord() != nil {}
            throw ending("before it took the request")
        }
    }

    /// The next record, or nil once the worker ended.
    private func nextRecord() async throws -> PythonRecords.Record? {
        while queue.isEmpty {
            if ended != nil { return nil }
            // Calls run one at a time (acquire), so the iterator is never used twice at once.
            var events = iterator
            let event = try await events.next(isolation: self)
            iterator = events
            switch event {
            case .stdout(let bytes): queue += try records.take(bytes)
            case .stderr(let bytes): if runnerErrors.count < 65536 { runnerErrors += bytes.prefix(65536) }
            case .exit(let termination, _): ended = termination
            case nil: ended = ended ?? .exited(0)
            }
        }
        return queue.removeFirst()
    }

    private func ending(_ when: String) -> VMExecError {
        let said = String(decoding: runnerErrors, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if said.contains("No module named vmexec_runner") {
            return PythonRunner.noResult(.exited(1), runnerErrors)
        }
        let how = ended.map { "\($0)" } ?? "unknown"
        return VMExecError(
            .notRunning, "the Python worker ended (\(how)) \(when)\(said.isEmpty ? "" : ": \(said)"); start a new worker")
    }

    private func acquire() async {
        if !busy {
            busy = true
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    private func release() {
        if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
    }
}
