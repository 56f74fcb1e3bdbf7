import ArgumentParser
import Foundation
import SquashMounts
import VMExecutor

/// `vmexec python`: code through the SDK shard's runner in a fresh guest,
/// as interactive Python runs a cell: output streamed, then the final
/// expression's value (its repr) or the exception's traceback.
struct PythonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "python",
        abstract: "Run Python code in a guest: output as it comes, then the final expression's value.",
        discussion: """
            The SDK shard of the images' folder is attached unless a --shard provides python3. \
            Exits 0, or 1 when the code raised (its traceback, of the code's frames only, on stderr). \
            --json prints one object at the end instead: value (repr and json), stdout, stderr, error, \
            and what execution control reported (steps, ignoredErrors, loopLimits, watched, dropped). \
            Without --json, control reports go to stderr as they come, each line starting "vmexec:".
            """)

    @OptionGroup var guest: GuestOptions
    @OptionGroup var options: CommandOptions
    @OptionGroup(title: "Execution control (the runner rewrites the code)") var control: PythonControlOptions

    @Option(name: .customShort("c"), help: "The code to run.") var code: String?
    @Flag(help: "Print the result as JSON at the end instead of streaming.") var json = false
    @Option(
        help: "Save figures and values that draw themselves here, as output-N.png (.svg, .html); the folder is made if missing."
    )
    var outputs: String?
    @Option(
        help:
            "Call a function with JSON arguments instead: FUNC of the code given, or MODULE:FUNC (a module by name, or a .py file in the guest)."
    )
    var call: String?
    @Option(name: .customLong("args"), help: "The call's positional arguments, a JSON array.") var arguments = "[]"
    @Option(name: .customLong("kwargs"), help: "The call's keyword arguments, a JSON object.") var keywordArguments = "{}"
    @Argument(help: "A file of code to run (- for stdin).") var file: String?

    func validate() throws {
        if code != nil && file != nil { throw ValidationError("give the code once: -c CODE, or a FILE (- for stdin)") }
        if let call, call.contains(":") {
            if code != nil || file != nil {
                throw ValidationError("--call MODULE:FUNC calls code in the guest; with -c or a FILE, give --call FUNC")
            }
        } else if code == nil && file == nil {
            throw ValidationError("give the code: -c CODE, or a FILE (- for stdin); or --call MODULE:FUNC")
        }
        if call == nil && (arguments != "[]" || keywordArguments != "{}") {
            throw ValidationError("--args and --kwargs go with --call")
        }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let (source, filename) = code == nil && file == nil ? ("", "<code>") : try CodeSource.read(code: code, file: file)
        var configuration = try guest.sandboxConfiguration()
        try Self.addSDK(to: &configuration)
        // Saved with the warm state of these shards (after the first start with them), the warm
        // interpreter is there at once: the job forks from it. Not started for a job otherwise.
        configuration.warmPython = configuration.reuseBootState && configuration.store == nil
        let sandbox = Sandbox(configuration: configuration, logger: guest.logger())
        let status: Int32
        do {
            try await sandbox.start()
            status = try await runCode(sandbox, source: source, filename: filename)
        } catch {
            await sandbox.shutdown()
            ErrorReport.fail(error)
        }
        await sandbox.shutdown()
        throw ExitCode(status)
    }

    /// The images' SDK shard, unless a shard given provides python3.
    static func addSDK(to configuration: inout SandboxConfiguration) throws {
        try CodeSource.addSDK(to: &configuration, provides: "python3", file: "sdk-python.shard", language: "Python")
    }

    /// Runs the code; the exit status (0, 1 when it raised, the shell's code when it was killed).
    private func runCode(_ sandbox: Sandbox, source: String, filename: String) async throws -> Int32 {
        var environment = try options.environment()
        if environment["PYTHONUNBUFFERED"] == nil { environment["PYTHONUNBUFFERED"] = "1" }
        let limits = Limits.defaults(guestMemoryMiB: guest.memory).overridden(by: try options.limitOverrides())
        var saver = OutputSaver(folder: outputs)
        let control = try self.control.control()
        let result: PythonResult
        if let call {
            let (target, function) =
                call.contains(":")
                ? (String(call[..<call.lastIndex(of: ":")!]), String(call[call.index(after: call.lastIndex(of: ":")!)...]))
                : (nil, call)
            let module = PythonModule(
                source: target == nil ? source : nil, target: target, filename: filename, environment: environment,
                workingDirectory: options.workdir, timeout: options.timeoutDuration, user: try options.guestUser(),
                limits: limits, control: control)
            result = try await sandbox.python.call(
                PythonCall(function, in: module, arguments: arguments, keywordArguments: keywordArguments))
            if !json {
                try? await HostIO.write(STDOUT_FILENO, result.stdout, path: "stdout")
                try? await HostIO.write(STDERR_FILENO, result.stderr, path: "stderr")
                for line in Self.reportLines(result) { FileHandle.standardError.write(Data(line.utf8)) }
                for output in result.outputs { try saver.save(output) }
            }
        } else {
            let code = PythonCode(
                source, filename: filename, environment: environment, workingDirectory: options.workdir,
                timeout: options.timeoutDuration, user: try options.guestUser(), limits: limits, control: control)
            var last: PythonResult?
            for try await event in try await sandbox.python.stream(code) {
                switch event {
                case .stdout(let b) where !json: try? await HostIO.write(STDOUT_FILENO, b, path: "stdout")
                case .stderr(let b) where !json: try? await HostIO.write(STDERR_FILENO, b, path: "stderr")
                case .result(let r): last = r
                case .output(let output) where !json: try saver.save(output)
                case let report where !json:
                    if let line = Self.reportLine(report) { FileHandle.standardError.write(Data(line.utf8)) }
                default: break
                }
            }
            guard let last else { throw VMExecError(.protocolError, "the Python runner ended without a result") }
            result = last
        }
        if json {
            try printJSON(PythonReport(result))
        } else if let value = result.value {
            // A call's answer is its JSON; code's final value is shown as the REPL shows it.
            print(call != nil ? value.json ?? value.repr : value.repr)
        } else if let e = result.exception {
            FileHandle.standardError.write(Data(e.traceback.utf8))
        }
        switch result.termination {
        case .exited: return result.exception == nil ? 0 : 1
        default:
            if case .timedOut = result.termination {
                FileHandle.standardError.write(
                    Data("vmexec: code timed out after \(options.timeout ?? 0) s and was killed\n".utf8))
            }
            return result.termination.shellCode
        }
    }
}

extension PythonCommand {
    /// A control report as the terminal shows it, on stderr.
    static func reportLine(_ event: PythonEvent) -> String? {
        switch event {
        case .step(let step):
            let variables = step.variables.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.repr)" }
            return "vmexec: line \(step.line)\(variables.isEmpty ? "" : ": " + variables.joined(separator: " "))\n"
        case .ignoredError(let ignored):
            return "vmexec: line \(ignored.line): ignored \(ignored.error.type): \(ignored.error.message)\n"
        case .loopLimit(let limit):
            return "vmexec: line \(limit.line): the loop stopped at its limit of \(limit.limit) iterations\n"
        default:
            return nil
        }
    }

    /// A call's reports, after it (a call's result comes whole).
    static func reportLines(_ r: PythonResult) -> [String] {
        (r.steps.map(PythonEvent.step) + r.ignoredErrors.map(PythonEvent.ignoredError) + r.loopLimits.map(PythonEvent.loopLimit))
            .compactMap(reportLine)
    }
}

/// Rich outputs on the terminal: saved to `--outputs` (and said so), or only said.
struct OutputSaver {
    let folder: String?
    private var count = 0

    init(folder: String?) { self.folder = folder }

    mutating func save(_ output: PythonOutput) throws {
        count += 1
        let ext = ["image/png": "png", "image/svg+xml": "svg", "text/html": "html"][output.mimeType] ?? "bin"
        guard let folder else {
            FileHandle.standardError.write(
                Data("vmexec: output \(count): \(output.mimeType), \(output.data.count) bytes (--outputs DIR saves it)\n".utf8))
            return
        }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let path = (folder as NSString).appendingPathComponent("output-\(count).\(ext)")
        guard FileManager.default.createFile(atPath: path, contents: Data(output.data)) else {
            throw VMExecError(.invalidRequest, "cannot write \(path)")
        }
        FileHandle.standardError.write(Data("vmexec: output \(count): \(output.mimeType) saved to \(path)\n".utf8))
    }
}

/// `vmexec python --json`: the result as one object.
struct PythonReport: Encodable {
    /// Its repr, and its JSON text when it serialises.
    var value: PythonValue?
    var stdout: String
    var stderr: String
    var error: PythonException?
    var exitCode: Int32
    var steps: [PythonStep]
    var ignoredErrors: [PythonIgnoredError]
    var loopLimits: [PythonLoopLimit]
    var watched: [String: PythonValue]
    var dropped: [String: Int]
    /// Figures and values that drew themselves, their data in base64.
    var outputs: [[String: String]]

    init(_ r: PythonResult) {
        value = r.value
        stdout = r.stdoutText
        stderr = r.stderrText
        error = r.exception
        exitCode = r.termination.shellCode
        steps = r.steps
        ignoredErrors = r.ignoredErrors
        loopLimits = r.loopLimits
        watched = r.watched
        dropped = r.dropped
        outputs = r.outputs.map { ["mimeType": $0.mimeType, "data": Data($0.data).base64EncodedString()] }
    }
}
