import Foundation

/// JavaScript for the runner the Node.js SDK shard carries
/// (images/runner/node/vmexec_node_runner.js).
public struct NodeCode: Sendable {
    public var source: String
    /// The name stack traces give the code.
    public var filename: String
    public var environment: [String: String]
    public var workingDirectory: String
    public var timeout: Duration?
    public var user: GuestUser?
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

/// Runs JavaScript in a sandbox through the Node.js SDK shard's runner: `sandbox.node.run(...)`.
/// The result has the Python runner's shape: output, then the script's completion value
/// (`util.inspect` as repr, and JSON where it serialises) or its exception (the code's frames).
public struct NodeRunner: Sendable {
    let sandbox: Sandbox

    /// Where the Node.js SDK shard puts the runner.
    public static let runnerPath = "/usr/share/vmexec/vmexec_node_runner.js"

    /// Runs the code and collects its output and result.
    public func run(_ code: NodeCode) async throws -> PythonResult {
        try await PythonRunner.collect(try await start(code).events)
    }

    /// Starts the code: its output as it comes, then its result; and the process to signal.
    public func start(_ code: NodeCode) async throws -> PythonExecution {
        var request = try JSONSerialization.data(withJSONObject: ["source": code.source, "filename": code.filename])
        request.append(UInt8(ascii: "\n"))
        let command = Command(
            ["node", Self.runnerPath], environment: code.environment, workingDirectory: code.workingDirectory,
            timeout: code.timeout, stdin: .bytes(Array(request)), user: code.user, limits: code.limits)
        return try await PythonRunner(sandbox: sandbox).start(
            command, request: Array(request), sharing: PythonSharing(shared: [:], functions: [:]), runner: "Node.js")
    }
}

extension Sandbox {
    /// JavaScript through the Node.js SDK shard's runner.
    public nonisolated var node: NodeRunner { NodeRunner(sandbox: self) }
}
