import ArgumentParser
import Foundation
import OpenAPIRuntime
import VMExecClient
import VMExecutor

/// `vmexec exec`, `cp`, `ps` and `kill`: requests to a sandbox the daemon
/// keeps (`vmexec up NAME`), through its API.

/// Whether `name` can be a sandbox's (as the API's Name: 1-40 of a-z 0-9 _ -).
func isSandboxName(_ name: Substring) -> Bool {
    guard let first = name.utf8.first, name.utf8.count <= 40, first != UInt8(ascii: "_"), first != UInt8(ascii: "-")
    else { return false }
    return name.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 45 }
}

struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command in a sandbox of the daemon, stream its output, exit with its code.",
        discussion: """
            As vmexec run: stdin goes to the command unless it is a terminal (or with -i), SIGINT, \
            SIGTERM and SIGHUP go to its process group, and the exit code is the command's \
            (124 timeout, 128+N signal, 125 an error of vmexec, 126 not executable, 127 not found). \
            The command is a job of the daemon: vmexec jobs and vmexec logs show it afterwards.
            """)

    @Argument(help: "The sandbox's name.") var name: String
    @OptionGroup var options: CommandOptions
    @Flag(name: .shortAndLong, help: "Forward stdin even when it is a terminal.") var interactive = false
    @Flag(
        name: .shortAndLong,
        help: "Run the command on a terminal in the guest (-it for a shell), beside the sandbox's jobs rather than as one.")
    var tty = false
    @Argument(parsing: .postTerminator, help: "The command and its arguments.") var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the command after --, e.g. vmexec exec NAME -- python3 -V") }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let client = try await DaemonConnection.client(start: false)
        let forwardStdin = interactive || isatty(STDIN_FILENO) == 0
        if tty { throw ExitCode(try await runOnTerminal(client, forwardStdin: forwardStdin)) }
        var submission = JobSubmission(
            command, environment: try options.environment(), workingDirectory: options.workdir, user: options.user,
            limits: try Self.jobLimits(options), timeoutSeconds: options.timeout, outputLimitBytes: 1 << 30,
            stdinOpen: forwardStdin)
        submission.sharedTmp = options.sharedTmp
        let job = try await client.submit(name, submission)
        let signals = [SIGINT, SIGTERM, SIGHUP].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { Task { try? await client.signal(name, job.id, "\(number)") } }
            source.resume()
            return source
        }
        defer { for s in signals { s.cancel() } }
        // Stdin goes out as it is read; each write returns once the guest took it.
        let sender: Task<Void, Never>? =
            forwardStdin
            ? Task {
                while let chunk = try? await HostIO.read(STDIN_FILENO), !chunk.isEmpty {
                    guard (try? await client.writeStdin(name, job.id, chunk)) != nil else { return }
                }
                try? await client.closeStdin(name, job.id)
            } : nil
        defer { sender?.cancel() }
        for try await event in try await client.events(name, job.id) {
            switch event {
            case .output(let stream, let bytes):
                try? await HostIO.write(stream == .stdout ? STDOUT_FILENO : STDERR_FILENO, bytes, path: stream.rawValue)
            case .end(let ended):
                throw ExitCode(Self.exitCode(ended, timeout: options.timeout))
            case .callback:
                break  // a command job makes none; Python jobs come through exec/python
            }
        }
        throw VMExecError(.protocolError, "the daemon's event stream ended before the job did; see vmexec logs \(name) \(job.id)")
    }

    /// The limits the options set, as the API takes them.
    static func jobLimits(_ options: CommandOptions) throws -> JobLimits {
        let overrides = try options.limitOverrides()
        return JobLimits(
            memoryBytes: overrides.memoryBytes.map(Int.init), processes: overrides.processes.map(Int.init),
            cpuSeconds: overrides.cpuSeconds.map(Int.init), stdinBytes: overrides.stdinBytes.map(Int.init),
            tmpBytes: overrides.tmpBytes.map(Int.init))
    }

    /// `exec -t`: the command on a terminal through the daemon's WebSocket; its exit code.
    private func runOnTerminal(_ client: DaemonClient, forwardStdin: Bool) async throws -> Int32 {
        var environment = try options.environment()
        if environment["TERM"] == nil { environment["TERM"] = ProcessInfo.processInfo.environment["TERM"] ?? "xterm-256color" }
        let size = LocalTerminal.size()
        var request = TerminalRequest(
            command, environment: environment, workingDirectory: options.workdir, user: options.user,
            timeoutSeconds: options.timeout, rows: Int(size.rows), columns: Int(size.columns))
        request.limits = try Self.jobLimits(options)
        request.sharedTmp = options.sharedTmp
        return try await client.withTerminal(name, request) { terminal in
            let local = LocalTerminal(raw: forwardStdin) { size in
                Task { try? await terminal.resize(rows: Int(size.rows), columns: Int(size.columns)) }
            }
            defer { local.restore() }
            // Signals to vmexec itself (not keys: those are typed into the guest in raw mode) go to the command.
            let signals = [SIGINT, SIGTERM, SIGHUP].map { number in
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler { Task { try? await terminal.signal("\(number)") } }
                source.resume()
                return source
            }
            defer { for s in signals { s.cancel() } }
            let input =
                forwardStdin
                ? LocalTerminal.forwardInput(write: { try await terminal.write($0) }, end: { try await terminal.endInput() })
                : nil
            defer { input?.cancel() }
            do {
                for try await event in terminal.events {
                    switch event {
                    case .started: break
                    case .output(let bytes): try? await HostIO.write(STDOUT_FILENO, bytes, path: "stdout")
                    case .exit(let termination, let code):
                        local.restore()
                        if termination == "timedOut" {
                            FileHandle.standardError.write(
                                Data("vmexec: command timed out after \(options.timeout ?? 0) s and was killed\n".utf8))
                        }
                        return Int32(code)
                    }
                }
            } catch let error as DaemonError {
                local.restore()
                FileHandle.standardError.write(Data("vmexec: \(error.message)\n".utf8))
                switch error.failureCode {
                case "commandNotFound": return ErrorReport.notFound
                case "notExecutable": return ErrorReport.notExecutable
                default: return ErrorReport.vmexecError
                }
            }
            local.restore()
            throw VMExecError(.protocolError, "the daemon closed the terminal before the command ended")
        }
    }

    /// The code `vmexec run` would exit with; says why on stderr when it is not the command's own.
    static func exitCode(_ job: JobInfo, timeout: Double?) -> Int32 {
        switch job.state {
        case "exited":
            if job.termination == "timedOut" {
                FileHandle.standardError.write(Data("vmexec: command timed out after \(timeout ?? 0) s and was killed\n".utf8))
            }
            if job.termination == "outOfMemory" {
                FileHandle.standardError.write(Data("vmexec: command killed for memory: it passed its limit\n".utf8))
            }
            return Int32(job.exitCode ?? Int(ErrorReport.vmexecError))
        default:
            FileHandle.standardError.write(Data("vmexec: \(job.reason ?? "the job \(job.state)")\n".utf8))
            switch job.failureCode {
            case "commandNotFound": return ErrorReport.notFound
            case "notExecutable": return ErrorReport.notExecutable
            default: return ErrorReport.vmexecError
            }
        }
    }
}

/// One side of `vmexec cp`: a host path, or NAME:PATH in a sandbox.
enum CopyEnd {
    case host(String)
    case guest(name: String, path: String)

    init(_ text: String) {
        if let colon = text.firstIndex(of: ":"), isSandboxName(text[..<colon]) {
            self = .guest(name: String(text[..<colon]), path: String(text[text.index(after: colon)...]))
        } else {
            self = .host(text)
        }
    }
}

struct Copy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp",
        abstract: "Copy a file into or out of a sandbox: vmexec cp FILE NAME:PATH, vmexec cp NAME:PATH FILE.",
        discussion: """
            A file goes in whole or not at all (the guest renames it into place once every byte \
            arrived), keeps the host file's mode, and is owned by the guest's default user; an \
            existing file is replaced. A file that comes out keeps its permission bits. A \
            destination ending in / (or an existing host directory) gets the source's name.
            """)

    @Argument(help: "Source: a host file or NAME:PATH.") var source: String
    @Argument(help: "Destination: NAME:PATH or a host path.") var destination: String
    @Flag(name: .shortAndLong, help: "Create missing parent directories in the guest.") var parents = false

    func run() async throws {
        switch (CopyEnd(source), CopyEnd(destination)) {
        case (.host(let from), .guest(let name, let to)):
            try await upload(from, name: name, to: to.hasSuffix("/") ? to + (from as NSString).lastPathComponent : to)
        case (.guest(let name, let from), .host(let to)):
            var target = to
            var isDir: ObjCBool = false
            if to.hasSuffix("/") || (FileManager.default.fileExists(atPath: to, isDirectory: &isDir) && isDir.boolValue) {
                target = (to as NSString).appendingPathComponent((from as NSString).lastPathComponent)
            }
            try await download(name: name, from, to: target)
        default:
            throw ValidationError("one side must be a host path and the other NAME:PATH in a sandbox")
        }
    }

    private func upload(_ hostPath: String, name: String, to guestPath: String) async throws {
        let fd = open(hostPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMExecError(.invalidRequest, "cannot open \(hostPath): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw VMExecError(.invalidRequest, "\(hostPath) is not a regular file")
        }
        let size = Int64(st.st_size)
        // The file is read as the daemon takes it: any size in bounded memory.
        let chunks = AsyncThrowingStream<ArraySlice<UInt8>, any Error>(unfolding: {
            let chunk = try await HostIO.read(fd, upTo: 1 << 16)
            return chunk.isEmpty ? nil : ArraySlice(chunk)
        })
        let client = try await DaemonConnection.client(start: false)
        _ = try await client.upload(
            name, path: guestPath, bytes: HTTPBody(chunks, length: .known(size), iterationBehavior: .single),
            overwrite: true, parents: parents, mode: UInt32(st.st_mode) & 0o7777)
    }

    private func download(name: String, _ guestPath: String, to hostPath: String) async throws {
        let client = try await DaemonConnection.client(start: false)
        let info = try await client.stat(name, path: guestPath)
        let body = try await client.download(name, path: guestPath)
        let part = hostPath + ".vmexec-part-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(part, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VMExecError(.invalidRequest, "cannot create \(part): \(String(cString: strerror(errno)))") }
        do {
            for try await chunk in body { try await HostIO.write(fd, Array(chunk), path: part) }
            let mode = (UInt32(info.mode, radix: 8) ?? 0o644) & 0o777
            guard fchmod(fd, mode_t(mode)) == 0, close(fd) == 0, rename(part, hostPath) == 0 else {
                throw VMExecError(.invalidRequest, "cannot write \(hostPath): \(String(cString: strerror(errno)))")
            }
        } catch {
            close(fd)
            unlink(part)
            throw error
        }
    }
}

struct ProcessList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ps", abstract: "List the processes of a sandbox (the init and kernel threads left out).")

    @Argument(help: "The sandbox's name.") var name: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let processes = try await DaemonConnection.client(start: false).processes(name)
        if json { return try printJSON(processes) }
        let widths = [7, 7, 7, 6, 2, 8, 9]
        func row(_ cells: [String]) -> String {
            zip(cells, widths).map { $0.pad($1) }.joined() + cells[widths.count]
        }
        print(row(["PID", "PPID", "PGID", "UID", "S", "CPU_S", "RSS_KIB", "COMMAND"]))
        for p in processes {
            print(
                row([
                    "\(p.pid)", "\(p.ppid)", "\(p.pgid)", "\(p.uid)", p.state, String(format: "%.2f", p.cpuSeconds),
                    "\(p.rssKiB)", p.arguments.joined(separator: " "),
                ]))
        }
    }
}

struct Kill: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Signal a process of a sandbox, or with --group its whole process group.")

    @Argument(help: "The sandbox's name.") var name: String
    @Argument(help: "The guest process id (see vmexec ps).") var pid: Int
    @Option(name: .shortAndLong, help: "Signal name or number (default TERM).") var signal: String = "TERM"
    @Flag(help: "Signal the process's whole group: the command and everything it started.") var group = false

    func run() async throws {
        try await DaemonConnection.client(start: false).signalProcess(name, pid: pid, signal.uppercased(), group: group)
    }
}

extension String {
    /// Left-aligned in a column of `width`, with at least one space after.
    func pad(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}
