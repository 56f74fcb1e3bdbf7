import ArgumentParser
import Foundation
import NIOCore
import VMExecutor

/// `vmexec cp`, `ps`, `kill`, `exec` and `stop`: requests to a guest kept
/// alive by `vmexec run --keep-alive NAME`, over its control socket.

/// One side of `vmexec cp`: a host path, or NAME:PATH in a kept-alive guest.
enum CopyEnd {
    case host(String)
    case guest(name: String, path: String)

    init(_ text: String) {
        if let colon = text.firstIndex(of: ":"), Control.validate(name: String(text[..<colon])) {
            self = .guest(name: String(text[..<colon]), path: String(text[text.index(after: colon)...]))
        } else {
            self = .host(text)
        }
    }
}

struct Copy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp",
        abstract: "Copy a file into or out of a kept-alive guest: vmexec cp FILE NAME:PATH, vmexec cp NAME:PATH FILE.",
        discussion: """
            Paths in the guest are resolved inside its root; a file goes in whole or not at all \
            (the guest renames it into place once every byte arrived) and keeps the host file's \
            mode, owned by the guest's default user. A file that comes out keeps its permission bits. \
            A destination ending in / (or an existing host directory) gets the source's name.
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
            throw ValidationError("one side must be a host path and the other NAME:PATH in a kept-alive guest")
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
        let size = UInt64(st.st_size)
        let request = ControlRequest(op: .put, path: guestPath, size: size, mode: UInt32(st.st_mode) & 0o7777, parents: parents)
        _ = try await ControlClient.connect(name: name).call(request) { _, out in
            var sent: UInt64 = 0
            while sent < size {
                let chunk = try await HostIO.read(fd, upTo: Int(min(65536, size - sent)))
                guard !chunk.isEmpty else { throw VMExecError(.invalidRequest, "\(hostPath) shrank while it was read") }
                try await out.write(ControlFrame(kind: .data, payload: ByteBuffer(bytes: chunk)))
                sent += UInt64(chunk.count)
            }
            try await out.write(ControlFrame(kind: .end, payload: ByteBuffer()))
        }
    }

    private func download(name: String, _ guestPath: String, to hostPath: String) async throws {
        let part = hostPath + ".vmexec-part-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(part, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VMExecError(.invalidRequest, "cannot create \(part): \(String(cString: strerror(errno)))") }
        do {
            var mode: UInt32 = 0o644
            let result = try await ControlClient.connect(name: name).call(ControlRequest(op: .get, path: guestPath)) {
                frames, _ in
                while let f = try await frames.next() {
                    switch f.kind {
                    case .header: mode = try f.decode(FileEntry.self).permissions & 0o777
                    case .data: try await HostIO.write(fd, Array(f.payload.readableBytesView), path: part)
                    case .end: return
                    case .result: _ = try f.decode(ControlResult.self).check()
                    default: throw VMExecError(.protocolError, "unexpected frame from the guest's keeper")
                    }
                }
            }
            _ = result
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
        commandName: "ps", abstract: "List the processes of a kept-alive guest (the init and kernel threads left out).")

    @Argument(help: "The guest's name.") var name: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let result = try await ControlClient.connect(name: name).call(ControlRequest(op: .ps))
        let processes = result.processes ?? []
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(processes), as: UTF8.self))
            return
        }
        let now = Date().timeIntervalSince1970
        let widths = [7, 7, 6, 7, 2, 8, 9, 8]
        func row(_ cells: [String]) -> String {
            zip(cells, widths).map { $0.pad($1) }.joined() + cells[widths.count]
        }
        print(row(["PID", "PPID", "UID", "STREAM", "S", "CPU_S", "RSS_KIB", "AGE_S", "COMMAND"]))
        for p in processes {
            let age = max(0, now - Double(p.startNanoseconds) / 1e9)
            let cpu = String(format: "%.2f", Double(p.cpuMicroseconds) / 1e6)
            print(
                row([
                    "\(p.pid)", "\(p.parentPID)", "\(p.uid)", p.stream == 0 ? "-" : "\(p.stream)", p.state, cpu,
                    "\(p.residentKiB)", String(format: "%.1f", age), p.arguments.joined(separator: " "),
                ]))
        }
    }
}

struct Kill: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Signal a process of a kept-alive guest, or with --group its whole process group.")

    @Argument(help: "The guest's name.") var name: String
    @Argument(help: "The guest process id (see vmexec ps).") var pid: UInt32
    @Option(name: .shortAndLong, help: "Signal name or number (default TERM).") var signal: String = "TERM"
    @Flag(help: "Signal the process's whole group: the command and everything it started.") var group = false

    func validate() throws { _ = try signalNumber() }

    func signalNumber() throws -> Int32 {
        let names: [String: Int32] = [
            "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "KILL": SIGKILL, "USR1": SIGUSR1,
            "USR2": SIGUSR2, "TERM": SIGTERM, "CONT": SIGCONT, "STOP": SIGSTOP,
        ]
        let key = signal.uppercased().replacingOccurrences(of: "SIG", with: "")
        if let n = names[key] ?? Int32(signal), (1...64).contains(n) { return n }
        throw ValidationError("unknown signal '\(signal)' (a number 1-64 or HUP, INT, QUIT, KILL, USR1, USR2, TERM, CONT, STOP)")
    }

    func run() async throws {
        _ = try await ControlClient.connect(name: name).call(
            ControlRequest(op: .kill, pid: pid, signal: try signalNumber(), group: group))
    }
}

struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command in a kept-alive guest, stream its output, exit with its code.")

    @Argument(help: "The guest's name.") var name: String
    @OptionGroup var options: CommandOptions
    @Flag(name: .shortAndLong, help: "Forward stdin even when it is a terminal.") var interactive = false
    @Argument(parsing: .postTerminator, help: "The command and its arguments.") var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the command after --") }
    }

    func run() async throws {
        let user = try options.guestUser()
        // As vmexec run: stdin goes to the command unless it is a terminal (or with -i).
        let forwardStdin = interactive || isatty(STDIN_FILENO) == 0
        let request = ControlRequest(
            op: .exec, argv: command, env: try options.environment(), workdir: options.workdir,
            timeoutSeconds: options.timeout, uid: user.map(\.ids.uid), gid: user.map(\.ids.gid),
            limits: try options.limitOverrides(), sharedTmp: options.sharedTmp, stdin: forwardStdin)
        let result = try await ControlClient.connect(name: name).call(request) { frames, out in
            // Stdin goes out as it is read, at the pace the keeper (and so the guest) takes it.
            let sender: Task<Void, Never>? =
                forwardStdin
                ? Task {
                    while let chunk = try? await HostIO.read(STDIN_FILENO), !chunk.isEmpty {
                        guard (try? await out.write(ControlFrame(kind: .data, payload: ByteBuffer(bytes: chunk)))) != nil
                        else { return }
                    }
                    try? await out.write(ControlFrame(kind: .end, payload: ByteBuffer()))
                } : nil
            defer { sender?.cancel() }
            while let f = try await frames.next() {
                switch f.kind {
                case .data: try await HostIO.write(STDOUT_FILENO, Array(f.payload.readableBytesView), path: "stdout")
                case .stderr: try await HostIO.write(STDERR_FILENO, Array(f.payload.readableBytesView), path: "stderr")
                case .result:
                    throw ExitCode(try f.decode(ControlResult.self).check().exitCode ?? 0)
                default: break
                }
            }
        }
        throw ExitCode(result.exitCode ?? 0)
    }
}

struct Stop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Shut down a guest kept alive by vmexec run --keep-alive.")

    @Argument(help: "The guest's name.") var name: String

    func run() async throws {
        _ = try await ControlClient.connect(name: name).call(ControlRequest(op: .stop))
    }
}

extension String {
    /// Left-aligned in a column of `width`, with at least one space after.
    func pad(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}
