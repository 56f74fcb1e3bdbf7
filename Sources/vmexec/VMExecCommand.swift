import ArgumentParser
import Foundation
import Logging
import OpenAPIRuntime
import PersistOverlay
import SquashMounts
import VMExecutor

@main
struct VMExec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmexec",
        abstract: "Run untrusted programs in a persistent QEMU micro-VM.",
        version: vmexecVersion,
        subcommands: [
            Run.self, Serve.self, Up.self, ListSandboxes.self, Hosts.self, Exec.self, Copy.self, ProcessList.self, Kill.self,
            Jobs.self, Logs.self, Down.self, ShardCommand.self, TrustCommand.self, Keygen.self, ProgramCommand.self,
            StoreCommand.self,
            SnapshotCommand.self, PythonCommand.self,
            NodeCommand.self,
            DiffCommand.self, ExportCommand.self,
        ])

    /// As ArgumentParser's, but a usage error exits 125 like any other error
    /// of vmexec itself (`docker run` does the same), not 64.
    static func main() async {
        do {
            // A misspelt VMEXEC_ARCH is an error, not a silent boot of the host's architecture.
            _ = try GuestArchitecture.fromEnvironment()
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as any VMExecFailure {
            ErrorReport.fail(error)
        } catch let error as ClientError {
            // The daemon's API failed under the request (its connection dropped, say): its sentence.
            ErrorReport.fail(ErrorReport.fromClient(error))
        } catch {
            if exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(ErrorReport.vmexecError)
            }
            exit(withError: error)
        }
    }
}

/// `--env NAME=VALUE` options as a dictionary; a malformed one is a usage error.
func parseEnvironment(_ entries: [String]) throws -> [String: String] {
    var out: [String: String] = [:]
    for e in entries {
        let parts = e.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty else { throw ValidationError("--env takes NAME=VALUE, got \"\(e)\"") }
        out[String(parts[0])] = String(parts[1])
    }
    return out
}

/// Options shared by commands that boot a guest.
struct GuestOptions: ParsableArguments {
    @Option(help: "Folder holding the guest images (default: $VMEXEC_IMAGES, then the build folder).")
    var images: String?

    @Option(help: "Guest memory in MiB.")
    var memory: Int = 512

    @Option(help: "Guest vCPUs.")
    var cpus: Int = 1

    @Option(help: "Accelerator: auto (try KVM for real, fall back to TCG), kvm or tcg.")
    var accel: AcceleratorChoice = .auto

    @Option(help: "Guest architecture (x86_64, aarch64; default: $VMEXEC_ARCH, then the host's).")
    var arch: GuestArchitecture = .preferred

    @Flag(
        help: "Boot the kernel instead of restoring a saved state (after the first boot, or the first start with these shards).")
    var coldBoot = false

    @Flag(name: .shortAndLong, help: "Log what vmexec does to stderr.")
    var verbose = false

    @Option(name: .customLong("shard"), help: "Attach this shard read-only (repeatable); verified before boot.")
    var shards: [String] = []

    @Option(
        name: .customLong("use"),
        help:
            "Attach the active version of this shard of the library, and the shards it requires (repeatable; NAME==VERSION for another)."
    )
    var uses: [String] = []

    @OptionGroup var library: LibraryOptions

    @Option(help: "The guest's host name (default vmexec).")
    var hostname: String?

    @Option(help: "A program the command runs through, with the command as its arguments (as a container's entry point).")
    var entrypoint: String?

    @Option(help: "Keep the guest's changes in this overlay store (see `vmexec store create`).")
    var store: String?

    @Option(
        name: .customLong("mount"),
        help:
            "Show the host folder HOST at GUEST in the guest (HOST:GUEST[:ro|rw|overlay], repeatable; ro by default; overlay: the guest's changes stay in the guest)."
    )
    var folders: [String] = []

    @Flag(help: "Open a store made over another base or other layers (its changes may not fit them).")
    var allowLowerChange = false

    @Flag(help: "Give the guest QEMU's user-mode network, restricted: no connection out except --forward ones.")
    var network = false

    @Option(help: "With --network: make guest TCP port GUEST reachable on the host's 127.0.0.1:HOST (HOST:GUEST, repeatable).")
    var publish: [String] = []

    @Option(
        help:
            "With --network: let the guest reach the host's 127.0.0.1:HOST at 10.0.2.100:GUEST (GUEST:HOST, repeatable; one connection, made at start)."
    )
    var forward: [String] = []

    /// "A:B" as two ports.
    private func ports(_ text: String, _ option: String) throws -> (UInt16, UInt16) {
        let parts = text.split(separator: ":").map { UInt16($0) }
        guard parts.count == 2, let a = parts[0], let b = parts[1], a > 0, b > 0 else {
            throw ValidationError("--\(option) takes two ports as A:B, not '\(text)'")
        }
        return (a, b)
    }

    func networkPolicy() throws -> NetworkPolicy {
        guard network else {
            if !publish.isEmpty || !forward.isEmpty { throw ValidationError("--publish and --forward need --network") }
            return .none
        }
        return NetworkPolicy(
            enabled: true,
            published: try publish.map {
                let p = try ports($0, "publish"); return .init(hostPort: p.0, guestPort: p.1)
            },
            forwarded: try forward.map {
                let p = try ports($0, "forward"); return .init(guestPort: p.0, hostPort: p.1)
            })
    }

    func sandboxConfiguration() throws -> SandboxConfiguration {
        var c = SandboxConfiguration()
        c.images = try GuestImages.locate(explicit: images, architecture: arch)
        c.architecture = arch
        c.memoryMiB = memory
        c.cpus = cpus
        c.accelerator = accel
        c.reuseBootState = !coldBoot
        // One job per guest: a warm interpreter started for it would only compete with it for the
        // CPU (`vmexec python` has one saved with the shards' warm state).
        c.warmPython = false
        c.shards = try shards.map { try Shard.open($0) }
        if !uses.isEmpty {
            let checkout = try library.open().checkout(uses, architecture: arch.rawValue, alongside: c.shards)
            heldCheckouts.withLock { $0.append(checkout) }
            c.shards += checkout.shards
        }
        c.store = try store.map { try Store.open(at: URL(fileURLWithPath: $0)) }
        c.folders = try folders.map { try HostFolder(parsing: $0) }
        c.allowLowerChange = allowLowerChange
        c.hostname = hostname
        c.entrypoint = entrypoint.map { [$0] }
        c.network = try networkPolicy()
        return c
    }

    func logger() -> Logger {
        var l = Logger(label: "vmexec") { StreamLogHandler.standardError(label: $0) }
        l.logLevel = verbose ? .trace : .warning
        return l
    }
}

extension AcceleratorChoice: ExpressibleByArgument {}
extension GuestArchitecture: ExpressibleByArgument {}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a guest, run one command in it, stream its output, exit with its code.",
        discussion: """
            Exit codes follow `docker run`: the command's own code; 124 when it ran past --timeout; \
            128+N when signal N killed it; 125 for an error of vmexec itself; 126 when the program \
            cannot be executed; 127 when it is not found.

            For a guest that stays up across commands, use the daemon: vmexec up NAME, then vmexec \
            exec NAME -- CMD, vmexec cp, ps, kill, and vmexec down NAME.
            """)

    @OptionGroup var guest: GuestOptions

    @OptionGroup var options: CommandOptions

    @Flag(name: .shortAndLong, help: "Forward stdin even when it is a terminal.")
    var interactive = false

    @Flag(
        name: .shortAndLong,
        help: "Run the command on a terminal in the guest (-it for a shell: raw keys, Ctrl-C to the guest's foreground job).")
    var tty = false

    @Argument(parsing: .postTerminator, help: "The command and its arguments.")
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the command after --, e.g. vmexec run -- python3 -V") }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let logger = guest.logger()
        let sandbox: Sandbox
        do {
            sandbox = Sandbox(configuration: try guest.sandboxConfiguration(), logger: logger)
            try await sandbox.start()
        } catch {
            ErrorReport.fail(error)
        }
        let code = await runCommand(sandbox)
        await sandbox.shutdown()
        throw ExitCode(code)
    }

    /// Runs the command, streaming its output; returns its exit code (or fails the process for an error of vmexec).
    private func runCommand(_ sandbox: Sandbox) async -> Int32 {
        let forwardStdin = interactive || isatty(STDIN_FILENO) == 0
        // Checked in validate(), before the guest booted.
        let limits = Limits.defaults(guestMemoryMiB: guest.memory).overridden(by: (try? options.limitOverrides()) ?? Limits())
        var environment = (try? options.environment()) ?? [:]
        if tty && environment["TERM"] == nil {
            environment["TERM"] = ProcessInfo.processInfo.environment["TERM"] ?? "xterm-256color"
        }
        let stdin: Command.Stdin = tty ? .caller : forwardStdin ? .fileDescriptor(STDIN_FILENO) : .none
        let cmd = Command(
            command, environment: environment, workingDirectory: options.workdir,
            timeout: options.timeoutDuration, stdin: stdin, user: try? options.guestUser(), limits: limits,
            privateTmp: !options.sharedTmp, terminal: tty ? LocalTerminal.size() : nil)
        var code: Int32 = ErrorReport.vmexecError
        var local: LocalTerminal?
        do {
            let stream = try await sandbox.stream(cmd)
            let forwarder = SignalForwarder(stream: stream)
            var input: Task<Void, Never>?
            if tty {
                local = LocalTerminal(raw: forwardStdin) { size in Task { try? await stream.resize(size) } }
                if forwardStdin {
                    input = LocalTerminal.forwardInput(
                        write: { _ = try await stream.writeStdin($0) }, end: { try await stream.closeStdin() })
                }
            }
            defer { input?.cancel() }
            for try await event in stream {
                switch event {
                case .stdout(let bytes): try? await HostIO.write(STDOUT_FILENO, bytes, path: "stdout")
                case .stderr(let bytes): try? await HostIO.write(STDERR_FILENO, bytes, path: "stderr")
                case .exit(let termination, _):
                    local?.restore()
                    code = termination.shellCode
                    if case .timedOut = termination {
                        FileHandle.standardError.write(
                            Data("vmexec: command timed out after \(options.timeout ?? 0) s and was killed\n".utf8))
                    }
                    if case .outOfMemory = termination {
                        FileHandle.standardError.write(
                            Data(
                                "vmexec: command killed for memory: it passed its limit of \(limits.memoryBytes.map { "\($0 >> 20) MiB" } ?? "the guest's memory")\n"
                                    .utf8))
                    }
                }
            }
            forwarder.cancel()
            if stream.stdinTruncated {
                FileHandle.standardError.write(
                    Data("vmexec: stdin was cut at its limit of \(limits.stdinBytes ?? 0) bytes\n".utf8))
            }
        } catch {
            local?.restore()
            await sandbox.shutdown()
            ErrorReport.fail(error)
        }
        return code
    }

}

/// Forwards SIGINT, SIGTERM and SIGHUP to the command's process group in
/// the guest, as `docker run` does.
final class SignalForwarder: @unchecked Sendable {
    // Set once in init, only cancelled afterwards.
    private let sources: [any DispatchSourceSignal]

    init(stream: ExecStream) {
        sources = [SIGINT, SIGTERM, SIGHUP].map { sig in
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { Task { try? await stream.signal(sig) } }
            s.resume()
            return s
        }
    }

    func cancel() { for source in sources { source.cancel() } }
}
