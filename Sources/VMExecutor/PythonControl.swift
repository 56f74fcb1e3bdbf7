import Foundation

/// Execution control for Python code, applied by the runner rewriting the
/// code's AST before it runs (images/runner/vmexec_runner/control.py). Each
/// control is off unless set; docs/DESIGN.md ("Python jobs") says what each
/// promises.
public struct PythonControl: Sendable, Equatable, Codable {
    /// What a loop does past its iteration limit.
    public enum LoopLimitAction: String, Sendable, CaseIterable, Codable {
        /// Raise `LoopLimitExceeded` (which `except Exception` does not catch).
        case raise
        /// Leave the loop, report it (``PythonLoopLimit``) and go on after it.
        case `break`
    }

    /// What a failing statement of the script does (its top level and the blocks of its
    /// if/for/while/with statements; not inside functions, classes or try blocks).
    public enum ErrorPolicy: String, Sendable, CaseIterable, Codable {
        /// The exception ends the code, as Python does.
        case raise
        /// The code ends with a `StatementError` naming the line, caused by the exception.
        case wrap
        /// The statement is skipped, the error reported (``PythonIgnoredError``), the code goes on.
        case `continue`
        /// The code ends quietly at the statement, its error reported, no exception.
        case stop
    }

    /// `TimeLimitExceeded` is raised in the code past this; the job is killed
    /// 5 s later if it does not end (unless the job's own timeout says otherwise).
    public var timeLimit: Duration?
    /// Iterations each run of an outermost loop may start (a loop no other loop of the same
    /// function or of the script's top level encloses).
    public var maxOuterLoopIterations: Int?
    /// Iterations each run of a nested loop may start.
    public var maxInnerLoopIterations: Int?
    public var onLoopLimit: LoopLimitAction
    /// Outermost loops start at most this many iterations a second (a 50 Hz control loop).
    public var loopFrequency: Double?
    /// Report each statement's line before it runs (``PythonStep``).
    public var trace: Bool
    /// Variables whose values each step reports, and the result at the end (dotted names follow attributes).
    public var watch: [String]
    /// Step reports past this many are dropped and counted.
    public var traceLimit: Int
    public var onError: ErrorPolicy
    /// Only safe builtins and allowed modules; no names or attributes that reach interpreter
    /// internals. Defence in depth: the VM is the boundary.
    public var restricted: Bool
    /// Modules restricted code may import besides the runner's safe list (math, json, re, …).
    public var allowedModules: [String]
    /// Builtins restricted code may use besides the safe ones.
    public var allowedBuiltins: [String]

    public init(
        timeLimit: Duration? = nil, maxOuterLoopIterations: Int? = nil, maxInnerLoopIterations: Int? = nil,
        onLoopLimit: LoopLimitAction = .raise, loopFrequency: Double? = nil, trace: Bool = false, watch: [String] = [],
        traceLimit: Int = 10_000, onError: ErrorPolicy = .raise, restricted: Bool = false, allowedModules: [String] = [],
        allowedBuiltins: [String] = []
    ) {
        self.timeLimit = timeLimit
        self.maxOuterLoopIterations = maxOuterLoopIterations
        self.maxInnerLoopIterations = maxInnerLoopIterations
        self.onLoopLimit = onLoopLimit
        self.loopFrequency = loopFrequency
        self.trace = trace
        self.watch = watch
        self.traceLimit = traceLimit
        self.onError = onError
        self.restricted = restricted
        self.allowedModules = allowedModules
        self.allowedBuiltins = allowedBuiltins
    }

    /// How long after the time limit a job that did not end is killed.
    static let killGrace = Duration.seconds(5)

    /// The job's timeout: the caller's, else the time limit and its grace.
    func jobTimeout(_ given: Duration?) -> Duration? {
        given ?? timeLimit.map { $0 + Self.killGrace }
    }

    /// Refuses what the runner would refuse, before a guest is involved.
    func validate() throws {
        func refuse(_ why: String) -> VMExecError { VMExecError(.invalidRequest, "Python control: \(why)") }
        if let t = timeLimit, t <= .zero { throw refuse("the time limit must be above 0") }
        if let f = loopFrequency, !(f > 0 && f.isFinite) { throw refuse("the loop frequency must be above 0 Hz") }
        for (n, what) in [(maxOuterLoopIterations, "outer"), (maxInnerLoopIterations, "inner")] where (n ?? 0) < 0 {
            throw refuse("the \(what) loop limit must be 0 or more")
        }
        if traceLimit < 0 { throw refuse("the trace limit must be 0 or more") }
        for name in watch + allowedModules + allowedBuiltins
        where name.isEmpty || !name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy(Self.isIdentifier) {
            throw refuse("\(name.debugDescription) is not a Python name")
        }
    }

    private static func isIdentifier(_ part: Substring) -> Bool {
        guard let first = part.unicodeScalars.first, first == "_" || CharacterSet.letters.contains(first) else { return false }
        return part.unicodeScalars.allSatisfy { $0 == "_" || CharacterSet.alphanumerics.contains($0) }
    }

    /// The runner's `control` object: only what is set.
    var runnerObject: [String: Any] {
        var object: [String: Any] = [:]
        if let timeLimit {
            object["timeout"] = Double(timeLimit.components.seconds) + Double(timeLimit.components.attoseconds) / 1e18
        }
        if let maxOuterLoopIterations { object["max_outer_loops"] = maxOuterLoopIterations }
        if let maxInnerLoopIterations { object["max_inner_loops"] = maxInnerLoopIterations }
        if onLoopLimit != .raise { object["on_loop_limit"] = onLoopLimit.rawValue }
        if let loopFrequency { object["loop_hz"] = loopFrequency }
        if trace { object["trace"] = true }
        if !watch.isEmpty { object["watch"] = watch }
        if traceLimit != 10_000 { object["trace_limit"] = traceLimit }
        if onError != .raise { object["on_error"] = onError.rawValue }
        if restricted { object["restricted"] = true }
        if !allowedModules.isEmpty { object["allow_modules"] = allowedModules }
        if !allowedBuiltins.isEmpty { object["allow_builtins"] = allowedBuiltins }
        return object
    }

    /// The `control` object as JSON text (for `run --control`).
    var runnerJSON: String {
        String(
            decoding: (try? JSONSerialization.data(withJSONObject: runnerObject, options: .sortedKeys)) ?? Data("{}".utf8),
            as: UTF8.self)
    }
}
