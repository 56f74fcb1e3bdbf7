import ArgumentParser
import CVMExecHost
import Foundation
import VMExecClient
import VMExecServer
import VMExecutor

/// Where the CLI finds the daemon, and how it starts one when none runs.
///
/// The socket is `daemon.sock` in the runtime directory: `$VMEXEC_RUNTIME`,
/// else `$XDG_RUNTIME_DIR/vmexec`, else `/tmp/vmexec-UID` (made 0700).
/// `VMEXEC_DAEMON_URL` with `VMEXEC_TOKEN` points the CLI at a daemon on TCP instead.
enum DaemonConnection {
    static func runtimeDirectory() -> String {
        let env = ProcessInfo.processInfo.environment
        if let d = env["VMEXEC_RUNTIME"], !d.isEmpty { return d }
        if let d = env["XDG_RUNTIME_DIR"], !d.isEmpty { return d + "/vmexec" }
        return "/tmp/vmexec-\(getuid())"
    }

    static var socketPath: String { runtimeDirectory() + "/daemon.sock" }
    static var logPath: String { runtimeDirectory() + "/daemon.log" }

    /// A client of the running daemon; with `start`, one is started first if none answers.
    static func client(start: Bool = true) async throws -> DaemonClient {
        let env = ProcessInfo.processInfo.environment
        if let url = env["VMEXEC_DAEMON_URL"], !url.isEmpty {
            guard let parsed = URL(string: url), let token = env["VMEXEC_TOKEN"], !token.isEmpty else {
                throw ValidationError("VMEXEC_DAEMON_URL needs an http://HOST:PORT address and VMEXEC_TOKEN a token")
            }
            guard let host = parsed.host, DaemonSocket.answers(host: host, port: parsed.port ?? 80) else {
                throw VMExecError(
                    .notRunning, "no vmexec daemon answers at \(url) (VMEXEC_DAEMON_URL); is vmexec serve --listen running there?"
                )
            }
            return .tcp(parsed, token: token)
        }
        let client = DaemonClient.unixSocket(socketPath)
        // A plain connect first: the HTTP client retries a refused connection for as long as a
        // request may take, so asking a socket nobody serves would wait instead of failing.
        if DaemonSocket.answers(socketPath), (try? await client.health()) != nil { return client }
        guard start else {
            throw VMExecError(.notRunning, "no vmexec daemon answers on \(socketPath); `vmexec up` or `vmexec serve` starts one")
        }
        try startDaemon()
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if DaemonSocket.answers(socketPath), (try? await client.health()) != nil {
                FileHandle.standardError.write(
                    Data("vmexec: started the daemon on \(socketPath) (log: \(logPath))\n".utf8))
                return client
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8))?.split(separator: "\n").suffix(5)
            .joined(separator: "\n")
        throw VMExecError(
            .launchFailed, "the daemon did not answer within 60 s; its log \(logPath) ends with:\n\(log ?? "(nothing)")")
    }

    /// Starts `vmexec serve` in a session of its own, its output in the log, detached from this terminal.
    static func startDaemon() throws {
        let dir = runtimeDirectory()
        try? FileManager.default.createDirectory(
            atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let executable =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let log = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard log >= 0 else {
            throw VMExecError(.launchFailed, "cannot open the daemon's log \(logPath): \(String(cString: strerror(errno)))")
        }
        defer { close(log) }
        let argv = [executable, "serve", "--socket", socketPath]
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        let pid = vmexec_spawn_detached(executable, &cArgs, log)
        guard pid > 0 else {
            throw VMExecError(.launchFailed, "cannot start the daemon (\(executable) serve): \(String(cString: strerror(-pid)))")
        }
    }
}
