import Foundation

/// A value the code gave (a final expression, a call's return, a watched variable).
public struct PythonValue: Sendable, Equatable, Codable {
    /// Its `repr()`.
    public var repr: String
    /// The value as JSON text, when it serialises.
    public var json: String?

    public init(repr: String, json: String? = nil) {
        self.repr = repr
        self.json = json
    }
}

/// An exception the code raised (a syntax error included).
public struct PythonException: Sendable, Equatable, Codable {
    /// The exception's class, e.g. `ValueError`.
    public var type: String
    public var message: String
    /// The traceback of the code's frames (and those it called), never the runner's.
    public var traceback: String

    public init(type: String, message: String, traceback: String) {
        self.type = type
        self.message = message
        self.traceback = traceback
    }
}

/// A statement about to run, under ``PythonControl/trace``.
public struct PythonStep: Sendable, Equatable, Codable {
    public var line: Int
    /// The watched variables that exist at that point.
    public var variables: [String: PythonValue]

    public init(line: Int, variables: [String: PythonValue]) {
        self.line = line
        self.variables = variables
    }
}

/// A statement's error that the error policy ignored (``PythonControl/ErrorPolicy/continue``
/// or ``PythonControl/ErrorPolicy/stop``).
public struct PythonIgnoredError: Sendable, Equatable, Codable {
    public var line: Int
    public var error: PythonException

    public init(line: Int, error: PythonException) {
        self.line = line
        self.error = error
    }
}

/// A loop left at its iteration limit (``PythonControl/LoopLimitAction/break``).
public struct PythonLoopLimit: Sendable, Equatable, Codable {
    public var line: Int
    public var limit: Int

    public init(line: Int, limit: Int) {
        self.line = line
        self.limit = limit
    }
}

/// A rich output: a matplotlib figure (`image/png`), or a final value that draws itself
/// (`_repr_png_`, `_repr_svg_`, `_repr_html_`).
public struct PythonOutput: Sendable, Equatable, Codable {
    /// `image/png`, `image/svg+xml` or `text/html`.
    public var mimeType: String
    public var data: [UInt8]

    public init(mimeType: String, data: [UInt8]) {
        self.mimeType = mimeType
        self.data = data
    }
}

/// What Python code gave: its output, its final expression's value or its exception, what
/// execution control reported, how it ended.
public struct PythonResult: Sendable {
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    /// True when a stream passed the sandbox's output limit and the result kept only its start.
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    public var value: PythonValue?
    public var exception: PythonException?
    /// Under ``PythonControl/trace``: each statement's line, up to the trace limit.
    public var steps: [PythonStep] = []
    public var ignoredErrors: [PythonIgnoredError] = []
    public var loopLimits: [PythonLoopLimit] = []
    /// The watched variables' values at the end.
    public var watched: [String: PythonValue] = [:]
    /// The shared values' final state (``PythonCode/shared``).
    public var shared: [String: PythonValue] = [:]
    /// Figures and values that drew themselves, in order (up to 100, and the output limit in bytes).
    public var outputs: [PythonOutput] = []
    /// Reports past their caps, by kind (`step`, `ignored`, `loop_limit`): counted, not kept.
    public var dropped: [String: Int] = [:]
    /// How the process ended. A persistent worker's call: exited 0, or 1 when it raised.
    public var termination: Termination
    /// The process's usage; a worker's call: the wall and CPU time the call took.
    public var usage: Usage
    /// The runner was forked from the sandbox's warm interpreter (its zygote, with the shards'
    /// preloads imported), not started for the job.
    public var warmStart = false

    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

/// What streamed code produces: its output and control reports as they come, then its result.
public enum PythonEvent: Sendable {
    case stdout([UInt8])
    case stderr([UInt8])
    case step(PythonStep)
    case ignoredError(PythonIgnoredError)
    case loopLimit(PythonLoopLimit)
    case output(PythonOutput)
    case result(PythonResult)
}
