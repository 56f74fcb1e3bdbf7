import Foundation
import OpenAPIRuntime
import VMExecService
import VMExecutor

/// Jobs: submit (a command, or source text for an interpreter), status,
/// output pages, the live event stream, stdin, signals, cancel.
extension ServiceAPI {
    func listJobs(_ input: Operations.ListJobs.Input) async throws -> Operations.ListJobs.Output {
        let name = input.path.sandbox
        let jobs = try await registry.jobList(owner: Caller.owner, sandbox: name)
        return .ok(.init(body: .json(jobs.map { .init($0, sandbox: name) })))
    }

    func submitJob(_ input: Operations.SubmitJob.Input) async throws -> Operations.SubmitJob.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        let stdin: Data?
        switch (body.stdin, body.stdinBase64) {
        case (.some, .some): throw VMExecError(.invalidRequest, "give stdin or stdinBase64, not both")
        case (let text?, nil): stdin = Data(text.utf8)
        case (nil, let encoded?):
            guard let bytes = Data(base64Encoded: encoded) else {
                throw VMExecError(.invalidRequest, "stdinBase64 is not valid base64")
            }
            stdin = bytes
        case (nil, nil): stdin = nil
        }
        let (uid, gid) = try Self.user(body.user)
        var request = JobRequest(
            body.argv, environment: body.env?.additionalProperties ?? [:], workingDirectory: body.workdir ?? "/",
            timeoutSeconds: try Self.timeout(body.timeoutSeconds), uid: uid, gid: gid, limits: try body.limits?.limits(),
            outputLimit: try Self.outputLimit(body.outputLimitBytes), stdin: stdin, stdinOpen: body.stdinOpen ?? false)
        request.sharedTmp = body.sharedTmp ?? false
        let (result, ended) = try await submit(request, sandbox: input.path.sandbox, wait: body.wait ?? false)
        return ended ? .ok(.init(body: .json(result))) : .accepted(.init(body: .json(result)))
    }

    func execPython(_ input: Operations.ExecPython.Input) async throws -> Operations.ExecPython.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        var environment = body.env?.additionalProperties ?? [:]
        environment["PYTHONUNBUFFERED"] = environment["PYTHONUNBUFFERED"] ?? "1"  // output as it comes, not at exit
        var shared: [String: String] = [:]
        if let given = body.shared?.additionalProperties,
            let object = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(given)) as? [String: Any]
        {
            for (name, value) in object {
                shared[name] = String(
                    decoding: try JSONSerialization.data(withJSONObject: value, options: .fragmentsAllowed), as: UTF8.self)
            }
        }
        let python = CodeJob(
            .python, source: body.code, filename: body.filename ?? "<code>", control: try PythonControl(body.control),
            shared: shared, callbacks: body.callbacks ?? [])
        var request = JobRequest(
            ["python3", "-m", "vmexec_runner", "run"], environment: environment, workingDirectory: body.workdir ?? "/",
            timeoutSeconds: try Self.timeout(body.timeoutSeconds), limits: try body.limits?.limits(),
            outputLimit: try Self.outputLimit(body.outputLimitBytes))
        request.code = python
        // Refused here, before a job is recorded, as the runner would refuse them.
        let named: [String: PythonHostFunction] = Dictionary(
            python.callbacks.map { name in (name, { @Sendable _ in "null" }) }, uniquingKeysWith: { first, _ in first })
        try PythonCode(python.source, control: python.control, shared: python.shared, hostFunctions: named).validate()
        let (result, ended) = try await submit(request, sandbox: input.path.sandbox, wait: body.wait ?? false)
        return ended ? .ok(.init(body: .json(result))) : .accepted(.init(body: .json(result)))
    }

    func answerCallback(_ input: Operations.AnswerCallback.Input) async throws -> Operations.AnswerCallback.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        let (runner, record) = try await registry.job(owner: Caller.owner, sandbox: input.path.sandbox, id: input.path.job)
        let value = try body.value.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) }
        try await runner.answerCallback(record.id, input.path.callback, value: value, error: body.error)
        return .noContent(.init())
    }

    func execNodejs(_ input: Operations.ExecNodejs.Input) async throws -> Operations.ExecNodejs.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        var request = JobRequest(
            ["node", NodeRunner.runnerPath], environment: body.env?.additionalProperties ?? [:],
            workingDirectory: body.workdir ?? "/", timeoutSeconds: try Self.timeout(body.timeoutSeconds),
            limits: try body.limits?.limits(), outputLimit: try Self.outputLimit(body.outputLimitBytes))
        request.code = CodeJob(.node, source: body.code)
        let (result, ended) = try await submit(request, sandbox: input.path.sandbox, wait: body.wait ?? false)
        return ended ? .ok(.init(body: .json(result))) : .accepted(.init(body: .json(result)))
    }

    func getJob(_ input: Operations.GetJob.Input) async throws -> Operations.GetJob.Output {
        let (runner, record) = try await registry.job(owner: Caller.owner, sandbox: input.path.sandbox, id: input.path.job)
        let callbacks = await runner.pendingCallbacks(of: record.id)
        return .ok(.init(body: .json(.init(record, sandbox: input.path.sandbox, callbacks: callbacks))))
    }

    func getJobResult(_ input: Operations.GetJobResult.Input) async throws -> Operations.GetJobResult.Output {
        let q = input.query
        let (runner, record) = try await registry.job(owner: Caller.owner, sandbox: input.path.sandbox, id: input.path.job)
        let result = try result(
            record, sandbox: input.path.sandbox, callbacks: await runner.pendingCallbacks(of: record.id),
            stdoutOffset: try Self.offset(q.stdoutOffset),
            stderrOffset: try Self.offset(q.stderrOffset), limit: try Self.pageLimit(q.limit),
            encoding: PageEncoding(q.encoding))
        return .ok(.init(body: .json(result)))
    }

    func getJobOutput(_ input: Operations.GetJobOutput.Input) async throws -> Operations.GetJobOutput.Output {
        let q = input.query
        let (_, record) = try await registry.job(owner: Caller.owner, sandbox: input.path.sandbox, id: input.path.job)
        let stream: JobStream = q.stream == .stdout ? .stdout : .stderr
        let page = try registry.jobs.output(
            record.id, stream: stream, offset: try Self.offset(q.offset), limit: try Self.pageLimit(q.limit))
        let encoding = PageEncoding(q.encoding)
        return .ok(.init(body: .json(.init(page, stream: stream, encoding: encoding))))
    }

    func streamJobEvents(_ input: Operations.StreamJobEvents.Input) async throws -> Operations.StreamJobEvents.Output {
        let q = input.query
        let (runner, record) = try await registry.job(owner: Caller.owner, sandbox: input.path.sandbox, id: input.path.job)
        let events = JobEvents(
            runner: runner, store: registry.jobs, jobID: record.id, sandbox: input.path.sandbox,
            offsets: (try Self.offset(q.stdoutOffset), try Self.offset(q.stderrOffset)),
            encoding: PageEncoding(q.encoding))
        return .ok(.init(body: .applicationXNdjson(events.body())))
    }

    func writeJobStdin(_ input: Operations.WriteJobStdin.Input) async throws -> Operations.WriteJobStdin.Output {
        guard case .binary(let body) = input.body else { throw Self.unsupportedBody }
        let (runner, record) = try await registry.job(owner: Caller.owner, sandbox: input.path.sandbox, id: input.path.job)
        for try await chunk in body {
            try await runner.writeStdin(record.id, Array(chunk))
        }
        return .noContent(.init())
    }

    func closeJobStdin(_ input: Operations.CloseJobStdin.Input) async throws -> Operations.CloseJobStdin.Output {
        let (runner, record) = try await registry.job(owner: Caller.owner, sandbox: input.path.sandbox, id: input.path.job)
        try await runner.closeStdin(record.id)
        return .noContent(.init())
    }

    func signalJob(_ input: Operations.SignalJob.Input) async throws -> Operations.SignalJob.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        let number = try SignalName.number(body.signal)
        let (runner, record) = try await registry.job(owner: Caller.owner, sandbox: input.path.sandbox, id: input.path.job)
        try await runner.signal(record.id, number)
        return .noContent(.init())
    }

    func cancelJob(_ input: Operations.CancelJob.Input) async throws -> Operations.CancelJob.Output {
        let (runner, record) = try await registry.job(owner: Caller.owner, sandbox: input.path.sandbox, id: input.path.job)
        try await runner.cancel(record.id)
        let after = record.state.isFinal ? record : try await runner.wait(record.id)
        return .ok(.init(body: .json(.init(after, sandbox: input.path.sandbox))))
    }

    // MARK: helpers

    /// Queues the job; with `wait`, returns once it ended. The result, and whether the job has ended.
    func submit(_ request: JobRequest, sandbox: String, wait: Bool) async throws -> (
        Components.Schemas.JobResult, Bool
    ) {
        guard !request.arguments.isEmpty, request.arguments.count <= 4096 else {
            throw VMExecError(.invalidRequest, "argv must have 1-4096 arguments")
        }
        guard request.workingDirectory.hasPrefix("/") else {
            throw VMExecError(.invalidRequest, "workdir must be an absolute path, not '\(request.workingDirectory)'")
        }
        let runner = try await registry.runner(owner: Caller.owner, name: sandbox)
        var record = try await runner.submit(request)
        if wait { record = try await runner.wait(record.id) }
        let result = try result(
            record, sandbox: sandbox, stdoutOffset: 0, stderrOffset: 0, limit: 1 << 20, encoding: .text)
        return (result, record.state.isFinal)
    }

    private func result(
        _ record: JobRecord, sandbox: String, callbacks: [PendingCallback] = [], stdoutOffset: Int, stderrOffset: Int,
        limit: Int, encoding: PageEncoding
    ) throws -> Components.Schemas.JobResult {
        let out = try registry.jobs.output(record.id, stream: .stdout, offset: stdoutOffset, limit: limit)
        let err = try registry.jobs.output(record.id, stream: .stderr, offset: stderrOffset, limit: limit)
        // The record read after the pages, so that its counts are never behind them.
        let now = try registry.jobs.job(record.id) ?? record
        return .init(
            job: .init(now, sandbox: sandbox, callbacks: callbacks), stdout: .init(out, stream: .stdout, encoding: encoding),
            stderr: .init(err, stream: .stderr, encoding: encoding))
    }

    static func user(_ text: String?) throws -> (UInt32?, UInt32?) {
        guard let text else { return (nil, nil) }
        if text == "root" { return (0, 0) }
        let parts = text.split(separator: ":", maxSplits: 1).map { UInt32($0) }
        guard let uid = parts.first ?? nil, parts.allSatisfy({ $0 != nil }) else {
            throw VMExecError(.invalidRequest, "user takes root or UID[:GID], not '\(text)'")
        }
        return (uid, parts.count == 2 ? parts[1] : uid)
    }

    static func timeout(_ seconds: Double?) throws -> Double? {
        guard let seconds else { return nil }
        guard seconds > 0, seconds <= 31_536_000 else {
            throw VMExecError(.invalidRequest, "timeoutSeconds must be more than 0 and at most a year")
        }
        return seconds
    }

    static func outputLimit(_ bytes: Int?) throws -> Int {
        guard let bytes else { return 16 << 20 }
        guard (0...1 << 30).contains(bytes) else { throw VMExecError(.invalidRequest, "outputLimitBytes must be 0-1 GiB") }
        return bytes
    }

    static func offset(_ value: Int?) throws -> Int {
        guard let value else { return 0 }
        guard value >= 0 else { throw VMExecError(.invalidRequest, "an offset cannot be negative") }
        return value
    }

    static func pageLimit(_ value: Int?) throws -> Int {
        guard let value else { return 65536 }
        guard (1...4 << 20).contains(value) else { throw VMExecError(.invalidRequest, "limit must be 1-4194304 bytes") }
        return value
    }
}

/// Signal names the API takes, as the guest's Linux numbers them.
enum SignalName {
    static let numbers: [String: Int32] = [
        "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "BUS": 7, "FPE": 8, "KILL": 9, "USR1": 10,
        "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20,
        "TTIN": 21, "TTOU": 22, "WINCH": 28,
    ]

    /// The number of `name` (TERM, SIGTERM or 15).
    static func number(_ name: String) throws -> Int32 {
        if let n = Int32(name), (1...64).contains(n) { return n }
        let bare = name.hasPrefix("SIG") ? String(name.dropFirst(3)) : name
        guard let n = numbers[bare] else {
            throw VMExecError(
                .invalidRequest, "'\(name)' is not a signal: give a name such as TERM, INT, KILL, HUP, or a number 1-64")
        }
        return n
    }
}
