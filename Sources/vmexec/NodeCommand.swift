import ArgumentParser
import Foundation
import VMExecutor

/// `vmexec node`: JavaScript through the Node.js SDK shard's runner in a fresh guest:
/// output streamed, then the completion value (as the REPL shows it) or the exception.
struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run JavaScript in a guest: output as it comes, then the completion value.",
        discussion: """
            The Node.js SDK shard of the images' folder is attached unless a --shard provides node. \
            Exits 0, 1 when the code threw (its stack, of the code's frames only, on stderr), or the \
            code's process.exit(N). --json prints one object at the end instead: value, stdout, stderr, error.
            """)

    @OptionGroup var guest: GuestOptions
    @OptionGroup var options: CommandOptions
    @Option(name: .customShort("c"), help: "The code to run.") var code: String?
    @Flag(help: "Print the result as JSON at the end instead of streaming.") var json = false
    @Argument(help: "A file of code to run (- for stdin).") var file: String?

    func validate() throws {
        if code != nil && file != nil { throw ValidationError("give the code once: -c CODE, or a FILE (- for stdin)") }
        if code == nil && file == nil { throw ValidationError("give the code: -c CODE, or a FILE (- for stdin)") }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let (source, filename) = try CodeSource.read(code: code, file: file)
        var configuration = try guest.sandboxConfiguration()
        try CodeSource.addSDK(to: &configuration, provides: "node", file: "sdk-node.shard", language: "Node.js")
        let sandbox = Sandbox(configuration: configuration, logger: guest.logger())
        let result: PythonResult
        do {
            try await sandbox.start()
            let code = NodeCode(
                source, filename: filename, environment: try options.environment(), workingDirectory: options.workdir,
                timeout: options.timeoutDuration, user: try options.guestUser(),
                limits: Limits.defaults(guestMemoryMiB: guest.memory).overridden(by: try options.limitOverrides()))
            var last: PythonResult?
            for try await event in try await sandbox.node.start(code).events {
                switch event {
                case .stdout(let b) where !json: try? await HostIO.write(STDOUT_FILENO, b, path: "stdout")
                case .stderr(let b) where !json: try? await HostIO.write(STDERR_FILENO, b, path: "stderr")
                case .result(let r): last = r
                default: break
                }
            }
            guard let last else { throw VMExecError(.protocolError, "the Node.js runner ended without a result") }
            result = last
        } catch {
            await sandbox.shutdown()
            ErrorReport.fail(error)
        }
        await sandbox.shutdown()
        if json {
            try printJSON(PythonReport(result))
        } else if let value = result.value {
            print(value.repr)
        } else if let e = result.exception, e.type != "Exit" {
            FileHandle.standardError.write(Data(e.traceback.utf8))
        }
        throw ExitCode(result.termination.shellCode)
    }
}
