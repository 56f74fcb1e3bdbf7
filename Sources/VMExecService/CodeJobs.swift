import Foundation
import VMExecutor

/// The languages a code job is in, each run by the runner its SDK shard carries.
public enum CodeLanguage: String, Codable, Sendable {
    case python, node
}

/// A job submitted as code: through the SDK shard's runner (`exec/python`, `exec/nodejs`).
/// Python jobs may have execution control, shared values and callbacks the client answers.
public struct CodeJob: Codable, Sendable, Equatable {
    public var language: CodeLanguage
    public var source: String
    /// The name tracebacks give the code.
    public var filename: String
    public var control: PythonControl
    /// JSON values (as text) among the code's globals; their final state comes back.
    public var shared: [String: String]
    /// Host functions the code may call; the client answers each call (``JobRunner/answerCallback(_:_:value:error:)``).
    public var callbacks: [String]

    public init(
        _ language: CodeLanguage, source: String, filename: String = "<code>", control: PythonControl = PythonControl(),
        shared: [String: String] = [:], callbacks: [String] = []
    ) {
        self.language = language
        self.source = source
        self.filename = filename
        self.control = control
        self.shared = shared
        self.callbacks = callbacks
    }
}

/// What a code job gave besides its output: its final value or exception, what execution
/// control reported, the shared values' final state, its outputs. Kept with the job when it ends.
public struct CodeOutcome: Codable, Sendable, Equatable {
    public var value: PythonValue?
    public var exception: PythonException?
    public var steps: [PythonStep]
    public var ignoredErrors: [PythonIgnoredError]
    public var loopLimits: [PythonLoopLimit]
    public var watched: [String: PythonValue]
    public var shared: [String: PythonValue]
    /// Figures and values that drew themselves.
    public var outputs: [PythonOutput]
    public var dropped: [String: Int]

    public init(_ r: PythonResult) {
        outputs = r.outputs
        value = r.value
        exception = r.exception
        steps = r.steps
        ignoredErrors = r.ignoredErrors
        loopLimits = r.loopLimits
        watched = r.watched
        shared = r.shared
        dropped = r.dropped
    }
}

/// A callback a running Python job made, waiting for the client's answer.
public struct PendingCallback: Codable, Sendable, Equatable {
    /// Unique within its job.
    public var id: Int
    public var name: String
    /// JSON array and JSON object, as text.
    public var arguments: String
    public var keywordArguments: String
    public var since: Date
}
