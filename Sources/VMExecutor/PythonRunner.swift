import Foundation

/// Python code for the runner the SDK shard carries
/// (`python3 -m vmexec_runner`, images/runner/vmexec_runner.py).
public struct PythonCode: Sendable {
    public var source: String
    /// The name tracebacks give the code.
    public var filename: String
    public var environment: [String: String]
    public var workingDirectory: String
    public var timeout: Duration?
    /// nil: the sandbox's default user.
    public var user: GuestUser?
    /// nil: the sandbox's defaults.
    public var limits: Limits?

    public init(
        _ source: String, filename: String = "<code>", environment: [String: String] = [:],
        workingDirectory: String = "/", timeout: Duration? = nil, user: GuestUser? = nil, limits: Limits? = nil
    ) {
        self.source = source
        self.filename = filename
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.timeout = timeout
        self.user = user
        self.limits = limits
    }
}

/// A function to call with JSON arguments through the runner (a fresh process per call).
public struct PythonCall: Sendable {
    /// Where the function is, one of: source code run as a module first (`source`), or a `.py`
    /// file by its guest path or a module by name (`target`, the working directory on sys.path).
    public var source: String?
    public var target: String?
    public var function: String
    /// A JSON array of positional arguments, as text.
    public var arguments: String
    /// A JSON object of keyword arguments, as text.
    public var keywordArguments: String
    /// The name tracebacks give `source`.
    public var filename: String
    public var environment: [String: String]
    public var workingDirectory: String
    public var timeout: Duration?
    public var user: GuestUser?
    public var limits: Limits?

    public init(
        _ function: String, source: String? = nil, target: String? = nil, arguments: String = "[]",
        keywordArguments: String = "{}", filename: String = "<code>", environment: [String: String] = [:],
        workingDirectory: String = "/", timeout: Duration? = nil, user: GuestUser? = nil, limits: Limits? = nil
    ) {
        self.function = function
        self.source = source
        self.target = target
        self.arguments = arguments
        self.keywordArguments = keywordArguments
        self.filename = filename
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.timeout = timeout
        self.user = user
        self.limits = limits
    }

    /// The runner's request: JSON with the arguments spliced in as the caller gave them.
    func request() throws -> [UInt8] {
        func parsed(_ text: String, _ what: String, array: Bool) throws -> Any {
            guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)),
                array ? object is [Any] : object is [String: Any]
            else {
                throw VMExecError(.invalidRequest, "\(what) must be a JSON \(array ? "array" : "object"), not \(text.prefix(80))")
            }
            return object
        }
        guard (source == nil) != (target == nil) else {
            throw VMExecError(.invalidRequest, "a call names its code: source, or a target module or .py file (one of them)")
        }
        var request: [String: Any] = [
            "function": function, "args": try parsed(arguments, "args", array: true),
            "kwargs": try parsed(keywordArguments, "kwargs", array: false), "filename": filename,
        ]
        if let source { request["source"] = source }
        if let target { request["target"] = target }
        return Array(try JSONSerialization.data(withJSONObject: request))
    }
}

/// The value of the code's final expression.
public struct PythonValue: Sendable, Equatable, Codable {
    /// Its `repr()`.
    public var repr: String
    /// The value as JSON text, when it serialises.
    public var json: String?
}

/// An exception the code raised (a syntax error included).
public struct PythonException: Sendable, Equatable, Codable {
    /// The exception's class, e.g. `ValueError`.
    public var type: String
    public var message: String
    /// The traceback of the code's frames (and those it called), never the runner's.
    public var traceback: String
}

/// What running code gave: its output, its final expression's value or its exception, how it ended.
public struct PythonResult: Sendable {
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    /// True when a stream passed the sandbox's output limit and the result kept only its start.
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    public var value: PythonValue?
    public var exception: PythonException?
    public var termination: Termination
    public var usage: Usage

    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

/// What streamed code produces: its output as it comes, then its result.
public enum PythonEvent: Sendable {
    case stdout([UInt8])
    case stderr([UInt8])
    case result(PythonResult)
}

/// Runs Python code in a sandbox through the SDK shard's runner: `sandbox.python.run(...)`.
public struct PythonRunner: Sendable {
    let sandbox: Sandbox

    /// Runs the code and collects its output and result.
    public func run(_ code: PythonCode) async throws -> PythonResult {
        try await Self.collect(try await stream(code))
    }

    /// Runs the code, streaming its stdout and stderr as they come, then its result.
    public func stream(_ code: PythonCode) async throws -> AsyncThrowingStream<PythonEvent, any Error> {
        try await stream(
            Command(
                ["python3", "-m", "vmexec_runner", "run", "--filename", code.filename], environment: code.environment,
                workingDirectory: code.workingDirectory, timeout: code.timeout, stdin: .bytes(Array(code.source.utf8)),
                user: code.user, limits: code.limits))
    }

    /// Calls a function with JSON arguments in a fresh process: its return value as JSON
    /// (``PythonValue/json``), or its exception. A value that is not JSON is a `TypeError`.
    public func call(_ call: PythonCall) async throws -> PythonResult {
        let command = Command(
            ["python3", "-m", "vmexec_runner", "call"], environment: call.environment,
            workingDirectory: call.workingDirectory, timeout: call.timeout, stdin: .bytes(try call.request()),
            user: call.user, limits: call.limits)
        return try await Self.collect(try await stream(command))
    }

    static func keep(_ bytes: [UInt8], in kept: inout [UInt8], limit: Int) {
        kept += bytes.prefix(max(0, limit - kept.count))
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

    private func stream(_ command: Command) async throws -> AsyncThrowingStream<PythonEvent, any Error> {
        let exec = try await sandbox.stream(command)
        // The result keeps at most the sandbox's output limit of each stream; the events carry it all.
        let limit = sandbox.configuration.outputLimit
        return AsyncThrowingStream { continuation in
            let task = Task {
                var records = PythonRecords()
                var out: [UInt8] = [], err: [UInt8] = [], runnerErrors: [UInt8] = []
                do {
                    for try await event in exec {
                        switch event {
                        case .stdout(let bytes):
                            for record in try records.take(bytes) {
                                switch record {
                                case .stdout(let b):
                                    Self.keep(b, in: &out, limit: limit)
                                    continuation.yield(.stdout(b))
                                case .stderr(let b):
                                    Self.keep(b, in: &err, limit: limit)
                                    continuation.yield(.stderr(b))
                                case .result: break
                                }
                            }
                        case .stderr(let bytes):
                            // Only the runner itself writes here, before it captured the code's stderr.
                            runnerErrors += bytes
                        case .exit(let termination, let usage):
                            // Killed (a timeout, its memory, a signal): no result record, the ending says why.
                            let ended = records.result ?? (nil, nil)
                            if records.result == nil, case .exited = termination {
                                throw Self.noResult(termination, runnerErrors)
                            }
                            let (value, exception) = ended
                            continuation.yield(
                                .result(
                                    PythonResult(
                                        stdout: out, stderr: err, stdoutTruncated: out.count >= limit,
                                        stderrTruncated: err.count >= limit, value: value, exception: exception,
                                        termination: termination, usage: usage)))
                        }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Why a runner that exited gave no result: it is missing, or it failed before the code ran.
    static func noResult(_ termination: Termination, _ runnerErrors: [UInt8]) -> VMExecError {
        let said = String(decoding: runnerErrors, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if said.contains("No module named vmexec_runner") || said.contains("No module named 'vmexec_runner'") {
            return VMExecError(
                .unsupported,
                "the attached Python has no vmexec runner: attach the SDK shard that make images builds (sdk-python.shard)")
        }
        return VMExecError(
            .protocolError, "the Python runner ended (\(termination)) without a result\(said.isEmpty ? "" : ": \(said)")")
    }
}

extension Sandbox {
    /// Python code through the SDK shard's runner: final expression values, exceptions with the code's traceback.
    public nonisolated var python: PythonRunner { PythonRunner(sandbox: self) }
}

/// The runner's JSON lines, decoded as they arrive in pieces.
struct PythonRecords {
    enum Record: Equatable {
        case stdout([UInt8])
        case stderr([UInt8])
        case result
    }

    private var pending: [UInt8] = []
    /// Longest record line taken. The code runs in the runner's process and can write to the
    /// record channel itself; a line without end must not grow the host's memory without bound.
    static let maxLine = 32 << 20
    /// The result record's value and exception, once it came.
    private(set) var result: (PythonValue?, PythonException?)?

    private struct Line: Decodable {
        var type: String
        var data: String?
        var value: PythonValue?
        var error: PythonException?
    }

    /// The records completed by `bytes`.
    mutating func take(_ bytes: [UInt8]) throws -> [Record] {
        pending += bytes
        var records: [Record] = []
        // Only new bytes can end a line: a long line is not searched again at each piece.
        guard bytes.contains(UInt8(ascii: "\n")) else {
            if pending.count > Self.maxLine {
                pending.removeAll()
                throw VMExecError(
                    .protocolError,
                    "the Python runner wrote a record line longer than \(Self.maxLine >> 20) MiB; the job's output is not trusted"
                )
            }
            return records
        }
        while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
            let line = Array(pending[..<newline])
            pending.removeSubrange(...newline)
            let decoded: Line
            do {
                decoded = try JSONDecoder().decode(Line.self, from: Data(line))
            } catch {
                throw VMExecError(
                    .protocolError,
                    "the Python runner wrote a line that is not a record: \(String(decoding: line.prefix(200), as: UTF8.self))")
            }
            switch decoded.type {
            case "stdout", "stderr":
                let data = Array(Data(base64Encoded: decoded.data ?? "") ?? Data())
                records.append(decoded.type == "stdout" ? .stdout(data) : .stderr(data))
            case "result":
                result = (decoded.value, decoded.error)
                records.append(.result)
            default:
                continue  // a record of a newer runner: skipped
            }
        }
        return records
    }
}
