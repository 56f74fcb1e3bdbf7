import Foundation

/// Python code for the runner the SDK shard carries
/// (`python3 -m vmexec_runner`, images/runner/vmexec_runner/).
public struct PythonCode: Sendable {
    public var source: String
    /// The name tracebacks give the code.
    public var filename: String
    public var environment: [String: String]
    public var workingDirectory: String
    /// The job is killed past this (default: none, or the control's time limit and 5 s).
    public var timeout: Duration?
    /// nil: the sandbox's default user.
    public var user: GuestUser?
    /// nil: the sandbox's defaults.
    public var limits: Limits?
    public var control: PythonControl
    /// JSON values (as text) put among the code's globals by name; their final state comes back
    /// in ``PythonResult/shared``.
    public var shared: [String: String]
    /// Functions the code calls by name, answered on the host while the code waits.
    public var hostFunctions: [String: PythonHostFunction]

    public init(
        _ source: String, filename: String = "<code>", environment: [String: String] = [:],
        workingDirectory: String = "/", timeout: Duration? = nil, user: GuestUser? = nil, limits: Limits? = nil,
        control: PythonControl = PythonControl(), shared: [String: String] = [:],
        hostFunctions: [String: PythonHostFunction] = [:]
    ) {
        self.source = source
        self.filename = filename
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.timeout = timeout
        self.user = user
        self.limits = limits
        self.control = control
        self.shared = shared
        self.hostFunctions = hostFunctions
    }

    var sharing: PythonSharing { PythonSharing(shared: shared, functions: hostFunctions) }

    /// Refuses what the runner would refuse (control, shared names and values), before a guest is involved.
    public func validate() throws { _ = try request() }

    /// The runner's request line.
    func request() throws -> [UInt8] {
        try control.validate()
        var request: [String: Any] = ["source": source, "filename": filename, "control": control.runnerObject]
        request.merge(try sharing.requestFields()) { $1 }
        return Array(try JSONSerialization.data(withJSONObject: request)) + [UInt8(ascii: "\n")]
    }
}

/// Code whose functions are called with JSON arguments: in a fresh process per call
/// (``PythonRunner/call(_:)``), or in a persistent worker (``PythonRunner/worker(_:)``).
public struct PythonModule: Sendable {
    /// Source code run as a module first (`source`), or a `.py` file by its guest path or a
    /// module by name (`target`, the working directory on sys.path). Exactly one.
    public var source: String?
    public var target: String?
    /// The name tracebacks give `source`.
    public var filename: String
    public var environment: [String: String]
    public var workingDirectory: String
    public var timeout: Duration?
    public var user: GuestUser?
    public var limits: Limits?
    /// Applies to the loading and to each call; the controls that rewrite code, shared values
    /// and host functions need `source` or a `.py` target, which the runner loads itself.
    public var control: PythonControl
    /// JSON values among the module's globals before its code runs; each result has their state.
    public var shared: [String: String]
    /// Functions the module calls by name, answered on the host.
    public var hostFunctions: [String: PythonHostFunction]

    public init(
        source: String? = nil, target: String? = nil, filename: String = "<code>", environment: [String: String] = [:],
        workingDirectory: String = "/", timeout: Duration? = nil, user: GuestUser? = nil, limits: Limits? = nil,
        control: PythonControl = PythonControl(), shared: [String: String] = [:],
        hostFunctions: [String: PythonHostFunction] = [:]
    ) {
        self.shared = shared
        self.hostFunctions = hostFunctions
        self.source = source
        self.target = target
        self.filename = filename
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.timeout = timeout
        self.user = user
        self.limits = limits
        self.control = control
    }

    /// What the runner reads to load the code.
    func loadRequest() throws -> [String: Any] {
        guard (source == nil) != (target == nil) else {
            throw VMExecError(.invalidRequest, "a call names its code: source, or a target module or .py file (one of them)")
        }
        try control.validate()
        var request: [String: Any] = ["filename": filename, "control": control.runnerObject]
        if let source { request["source"] = source }
        if let target { request["target"] = target }
        request.merge(try sharing.requestFields()) { $1 }
        return request
    }

    var sharing: PythonSharing { PythonSharing(shared: shared, functions: hostFunctions) }

    /// The runner as a command; `timeout` is the whole process's (a worker's life, or one call's).
    func command(_ runnerCommand: String, stdin: Command.Stdin, timeout: Duration?) -> Command {
        Command(
            ["python3", "-m", "vmexec_runner", runnerCommand], environment: environment, workingDirectory: workingDirectory,
            timeout: timeout, stdin: stdin, user: user, limits: limits)
    }
}

/// A function to call with JSON arguments in a fresh process.
public struct PythonCall: Sendable {
    public var module: PythonModule
    public var function: String
    /// A JSON array of positional arguments, as text.
    public var arguments: String
    /// A JSON object of keyword arguments, as text.
    public var keywordArguments: String

    public init(_ function: String, in module: PythonModule, arguments: String = "[]", keywordArguments: String = "{}") {
        self.function = function
        self.module = module
        self.arguments = arguments
        self.keywordArguments = keywordArguments
    }

    /// The runner's request: JSON with the arguments spliced in as the caller gave them.
    func request() throws -> [UInt8] {
        var request = try module.loadRequest()
        request.merge(try Self.callFields(function, arguments, keywordArguments)) { $1 }
        return Array(try JSONSerialization.data(withJSONObject: request)) + [UInt8(ascii: "\n")]
    }

    static func callFields(_ function: String, _ arguments: String, _ keywordArguments: String) throws -> [String: Any] {
        func parsed(_ text: String, _ what: String, array: Bool) throws -> Any {
            guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)),
                array ? object is [Any] : object is [String: Any]
            else {
                throw VMExecError(.invalidRequest, "\(what) must be a JSON \(array ? "array" : "object"), not \(text.prefix(80))")
            }
            return object
        }
        return [
            "function": function, "args": try parsed(arguments, "args", array: true),
            "kwargs": try parsed(keywordArguments, "kwargs", array: false),
        ]
    }
}

/// Runs Python code in a sandbox through the SDK shard's runner: `sandbox.python.run(...)`.
public struct PythonRunner: Sendable {
    let sandbox: Sandbox

    /// Runs the code and collects its output and result.
    public func run(_ code: PythonCode) async throws -> PythonResult {
        try await Self.collect(try await stream(code))
    }

    /// Runs the code, streaming its output and control reports as they come, then its result.
    public func stream(_ code: PythonCode) async throws -> AsyncThrowingStream<PythonEvent, any Error> {
        try await start(code).events
    }

    /// Starts the code: its events, and the process to signal.
    public func start(_ code: PythonCode) async throws -> PythonExecution {
        let request = try code.request()
        return try await start(
            Command(
                ["python3", "-m", "vmexec_runner", "run"], environment: code.environment,
                workingDirectory: code.workingDirectory, timeout: code.control.jobTimeout(code.timeout),
                stdin: code.hostFunctions.isEmpty ? .bytes(request) : .caller, user: code.user, limits: code.limits),
            request: request, sharing: code.sharing)
    }

    /// Calls a function with JSON arguments in a fresh process: its return value as JSON
    /// (``PythonValue/json``), or its exception. A value that is not JSON is a `TypeError`.
    public func call(_ call: PythonCall) async throws -> PythonResult {
        let request = try call.request()
        let module = call.module
        let command = module.command(
            "call", stdin: module.hostFunctions.isEmpty ? .bytes(request) : .caller,
            timeout: module.control.jobTimeout(module.timeout))
        return try await Self.collect(try await start(command, request: request, sharing: module.sharing).events)
    }

    /// Starts a persistent worker with the module loaded; its calls keep the module's state.
    public func worker(_ module: PythonModule) async throws -> PythonWorker {
        try await PythonWorker.start(sandbox, module)
    }

    /// The result at the end of a stream.
    static func collect(_ events: AsyncThrowingStream<PythonEvent, any Error>) async throws -> PythonResult {
        var result: PythonResult?
        for try await event in events {
            if case .result(let r) = event { result = r }
        }
        guard let result else { throw VMExecError(.protocolError, "the Python runner ended without a result") }
        return result
    }

    /// The runner started with `command`; with host functions, its stdin stays open for the
    /// request and the answers to its callbacks.
    func start(_ command: Command, request: [UInt8], sharing: PythonSharing, runner: String = "Python") async throws
        -> PythonExecution
    {
        var command = command
        command.throughEntrypoint = false  // the runner is vmexec's, not the user's command
        let exec = try await sandbox.stream(await sandbox.pythonCommand(command))
        if case .caller = command.stdin { _ = try await exec.writeStdin(request) }
        // The result keeps at most the sandbox's output limit of each stream; the events carry it all.
        let limit = sandbox.configuration.outputLimit
        let events = AsyncThrowingStream<PythonEvent, any Error> { continuation in
            let task = Task {
                var records = PythonRecords()
                var parts = PythonResultParts(outputLimit: limit)
                var runnerErrors: [UInt8] = []
                do {
                    for try await event in exec {
                        switch event {
                        case .stdout(let bytes):
                            for record in try records.take(bytes) {
                                if case .callback(let callback) = record {
                                    _ = try await exec.writeStdin(await sharing.answer(callback))
                                }
                                if let event = parts.add(record) { continuation.yield(event) }
                            }
                        case .stderr(let bytes):
                            // Only the runner itself writes here, before it captured the code's stderr.
                            if runnerErrors.count < 65536 { runnerErrors += bytes.prefix(65536) }
                        case .exit(let termination, let usage):
                            // Killed (a timeout, its memory, a signal): no result record, the ending says why.
                            if records.result == nil, case .exited = termination {
                                throw Self.noResult(termination, runnerErrors, runner: runner)
                            }
                            continuation.yield(.result(parts.result(records.result, termination: termination, usage: usage)))
                        }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
        return PythonExecution(events: events, exec: exec)
    }

    /// Why a runner that exited gave no result: it is missing, or it failed before the code ran.
    static func noResult(_ termination: Termination, _ runnerErrors: [UInt8], runner: String = "Python") -> VMExecError {
        let said = String(decoding: runnerErrors, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if said.contains("vmexec_node_runner.js") {
            return VMExecError(
                .unsupported,
                "the attached Node.js has no vmexec runner: attach the Node.js SDK shard that make images builds (sdk-node.shard)"
            )
        }
        if said.contains("No module named vmexec_runner") {
            return VMExecError(
                .unsupported,
                "the attached Python has no vmexec runner: attach the SDK shard that make images builds (sdk-python.shard)")
        }
        return VMExecError(
            .protocolError, "the \(runner) runner ended (\(termination)) without a result\(said.isEmpty ? "" : ": \(said)")")
    }
}

/// Python code that runs: its events as they come (iterate once), and its process.
public struct PythonExecution: Sendable {
    public let events: AsyncThrowingStream<PythonEvent, any Error>
    let exec: ExecStream

    /// Signals the runner's process group (SIGKILL to cancel).
    public func signal(_ number: Int32) async throws { try await exec.signal(number) }
}

extension Sandbox {
    /// Python code through the SDK shard's runner: final expression values, exceptions with the code's traceback.
    public nonisolated var python: PythonRunner { PythonRunner(sandbox: self) }
}
