import ArgumentParser
import VMExecutor

/// `vmexec python`'s execution control flags (``PythonControl``).
struct PythonControlOptions: ParsableArguments {
    @Option(name: .customLong("time-limit"), help: "Raise TimeLimitExceeded in the code after SECONDS (killed 5 s later).")
    var timeLimit: Double?
    @Option(name: .customLong("max-outer-loops"), help: "Iterations each run of an outermost loop may start.")
    var maxOuterLoops: Int?
    @Option(name: .customLong("max-inner-loops"), help: "Iterations each run of a nested loop may start.")
    var maxInnerLoops: Int?
    @Option(name: .customLong("on-loop-limit"), help: "At a loop limit: raise (LoopLimitExceeded) or break (and go on).")
    var onLoopLimit: String = "raise"
    @Option(name: .customLong("loop-hz"), help: "Outermost loops start at most HZ iterations a second.")
    var loopHz: Double?
    @Flag(help: "Report each statement's line before it runs.") var trace = false
    @Option(name: .customLong("watch"), help: "A variable each step (and the result) reports; repeatable.")
    var watch: [String] = []
    @Option(name: .customLong("on-error"), help: "A failing statement of the script: raise, wrap, continue or stop.")
    var onError: String = "raise"
    @Flag(help: "Only safe builtins and allowed modules (defence in depth; the VM is the boundary).")
    var restricted = false
    @Option(name: .customLong("allow-module"), help: "A module restricted code may import too; repeatable.")
    var allowModules: [String] = []
    @Option(name: .customLong("allow-builtin"), help: "A builtin restricted code may use too; repeatable.")
    var allowBuiltins: [String] = []

    func validate() throws {
        guard PythonControl.LoopLimitAction(rawValue: onLoopLimit) != nil else {
            throw ValidationError("--on-loop-limit takes raise or break, not \(onLoopLimit)")
        }
        guard PythonControl.ErrorPolicy(rawValue: onError) != nil else {
            throw ValidationError("--on-error takes raise, wrap, continue or stop, not \(onError)")
        }
        if let timeLimit, !(timeLimit > 0) { throw ValidationError("--time-limit must be above 0 seconds") }
        if !restricted && !(allowModules.isEmpty && allowBuiltins.isEmpty) {
            throw ValidationError("--allow-module and --allow-builtin go with --restricted")
        }
    }

    func control() throws -> PythonControl {
        PythonControl(
            timeLimit: timeLimit.map { .milliseconds(Int64(($0 * 1000).rounded(.up))) }, maxOuterLoopIterations: maxOuterLoops,
            maxInnerLoopIterations: maxInnerLoops, onLoopLimit: PythonControl.LoopLimitAction(rawValue: onLoopLimit) ?? .raise,
            loopFrequency: loopHz, trace: trace, watch: watch, onError: PythonControl.ErrorPolicy(rawValue: onError) ?? .raise,
            restricted: restricted, allowedModules: allowModules, allowedBuiltins: allowBuiltins)
    }
}
