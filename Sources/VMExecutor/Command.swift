import SerialChannel
import Synchronization

/// A command to run in the guest.
public struct Command: Sendable {
    /// Program and arguments; the program is looked up in the guest's PATH.
    public var arguments: [String]
    /// Added to (and overriding) the sandbox's default environment.
    public var environment: [String: String]
    public var workingDirectory: String
    /// Wall-clock limit enforced in the guest; past it the process group is killed.
    public var timeout: Duration?
    public var stdin: Stdin
    /// Who runs it; nil: the sandbox's default (an unprivileged user).
    public var user: GuestUser?
    /// Its limits; nil: the sandbox's defaults.
    public var limits: Limits?
    /// Whether it gets a /tmp and /dev/shm of its own (empty tmpfs that end
    /// with it, which other commands cannot see) and System V IPC and
    /// message queues of its own; nil: the sandbox's default
    /// (``SandboxConfiguration/privateTmp``, on). Off, it shares the guest's
    /// /tmp, /dev/shm and IPC with other such commands and the files API.
    public var privateTmp: Bool?
    /// Runs the command on a terminal of this size (a pty pair in the guest,
    /// the command leading its session with it as controlling terminal), as
    /// `ssh -t` or `docker exec -t` do: line editing, job control, Ctrl-C as
    /// input, colours. Input goes through ``ExecStream/writeStdin(_:)`` or
    /// ``stdin``; all output comes as stdout. nil: pipes.
    public var terminal: TerminalSize?
    /// Outlives the channel's session (``ExecPolicy/service``): the warm interpreter's own command.
    var service = false
    /// Whether the sandbox's ``SandboxConfiguration/entrypoint`` runs it (with its arguments
    /// after the entry point's); vmexec's own commands (runners, the zygote) set it false.
    public var throughEntrypoint = true

    /// Where the command's stdin comes from.
    public enum Stdin: Sendable {
        /// /dev/null.
        case none
        case bytes([UInt8])
        /// Chunks forwarded as they come; stdin ends when the stream finishes.
        case stream(AsyncStream<[UInt8]>)
        /// Read from this host file descriptor until EOF, one chunk at a time
        /// as the guest takes them (the host never buffers ahead).
        case fileDescriptor(Int32)
        /// Written by the caller through ``ExecStream/writeStdin(_:)`` and
        /// ended by ``ExecStream/closeStdin()`` (a relay, such as the keeper
        /// forwarding a client's stdin); each write waits for the guest's credit.
        case caller
    }

    public init(
        _ arguments: [String], environment: [String: String] = [:], workingDirectory: String = "/",
        timeout: Duration? = nil, stdin: Stdin = .none, user: GuestUser? = nil, limits: Limits? = nil,
        privateTmp: Bool? = nil, terminal: TerminalSize? = nil
    ) {
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.timeout = timeout
        self.stdin = stdin
        self.user = user
        self.limits = limits
        self.privateTmp = privateTmp
        self.terminal = terminal
    }
}

/// Who a command runs as in the guest.
public enum GuestUser: Sendable, Equatable, CustomStringConvertible {
    /// uid 0, with every capability: only when asked for.
    case root
    case id(uid: UInt32, gid: UInt32)

    /// The base image's `vmexec` user (1000:1000, home /home/vmexec): the default.
    public static let unprivileged = GuestUser.id(uid: 1000, gid: 1000)

    /// Its uid and gid (0, 0 for root).
    public var ids: (uid: UInt32, gid: UInt32) {
        switch self {
        case .root: return (0, 0)
        case .id(let uid, let gid): return (uid, gid)
        }
    }

    /// The HOME a command gets unless it sets one.
    var home: String {
        switch self {
        case .root: return "/root"
        case .id(1000, _): return "/home/vmexec"
        case .id: return "/tmp"
        }
    }

    public var description: String {
        switch self {
        case .root: return "root"
        case .id(let uid, let gid): return "\(uid):\(gid)"
        }
    }
}

/// Per-command limits, enforced in the guest; nil means none.
public struct Limits: Sendable, Equatable, Codable {
    /// Memory of all the command's processes together (a cgroup's memory.max);
    /// past it the kernel's OOM killer ends one, and the result says `outOfMemory`.
    public var memoryBytes: UInt64?
    /// Processes and threads at once (pids.max): a fork bomb stops there.
    public var processes: UInt32?
    /// Open files per process.
    public var openFiles: UInt32?
    /// CPU seconds per process (then SIGXCPU, and SIGKILL a second later).
    public var cpuSeconds: UInt32?
    /// Bytes of stdin passed on; past them stdin is closed (the command sees
    /// end of file) and the result says ``ExecResult/stdinTruncated``.
    public var stdinBytes: UInt64?
    /// Size of a private /tmp (and /dev/shm); nil: the memory limit, or none without one.
    public var tmpBytes: UInt64?

    public init(
        memoryBytes: UInt64? = nil, processes: UInt32? = nil, openFiles: UInt32? = nil, cpuSeconds: UInt32? = nil,
        stdinBytes: UInt64? = nil, tmpBytes: UInt64? = nil
    ) {
        self.memoryBytes = memoryBytes
        self.processes = processes
        self.openFiles = openFiles
        self.cpuSeconds = cpuSeconds
        self.stdinBytes = stdinBytes
        self.tmpBytes = tmpBytes
    }

    /// The defaults for a guest of `memoryMiB`: three quarters of its memory,
    /// 512 processes, 1024 open files, 4 GiB of stdin, no CPU-time limit (the timeout bounds time).
    public static func defaults(guestMemoryMiB: Int) -> Limits {
        Limits(
            memoryBytes: UInt64(max(64, guestMemoryMiB * 3 / 4)) << 20, processes: 512, openFiles: 1024,
            stdinBytes: 4 << 30)
    }
}

/// Resource use of a finished command, as the guest measured it.
extension Limits {
    /// These limits with each one `overrides` sets put in its place (a
    /// client's options over a sandbox's defaults).
    public func overridden(by overrides: Limits) -> Limits {
        var l = self
        if let v = overrides.memoryBytes { l.memoryBytes = v }
        if let v = overrides.processes { l.processes = v }
        if let v = overrides.openFiles { l.openFiles = v }
        if let v = overrides.cpuSeconds { l.cpuSeconds = v }
        if let v = overrides.stdinBytes { l.stdinBytes = v }
        if let v = overrides.tmpBytes { l.tmpBytes = v }
        return l
    }
}

public struct Usage: Sendable, Equatable {
    /// From fork to reap, in the guest.
    public var wallNanoseconds: UInt64
    public var userMicroseconds: UInt64
    public var systemMicroseconds: UInt64
    public var maxRSSKiB: UInt64

    public init(wallNanoseconds: UInt64, userMicroseconds: UInt64, systemMicroseconds: UInt64, maxRSSKiB: UInt64) {
        self.wallNanoseconds = wallNanoseconds
        self.userMicroseconds = userMicroseconds
        self.systemMicroseconds = systemMicroseconds
        self.maxRSSKiB = maxRSSKiB
    }
}

/// The collected result of a command.
public struct ExecResult: Sendable {
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    public var termination: Termination
    public var usage: Usage
    /// True when output passed the sandbox's output limit and was cut.
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    /// True when stdin passed its limit (``Limits/stdinBytes``) and the rest was not passed on.
    public var stdinTruncated = false
    /// Who ran it, the limits it ran within, and whether its /tmp was its own.
    public var user: GuestUser
    public var limits: Limits
    public var privateTmp: Bool

    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }

    /// The code a shell would report: the exit code, 128+N for signal N,
    /// 124 for a timeout (as `timeout(1)` and `docker run` do).
    public var exitCode: Int32 { termination.shellCode }
}

extension Termination {
    /// The code a shell would report for this ending.
    public var shellCode: Int32 {
        switch self {
        case .exited(let c): c
        case .signaled(let s): 128 + s
        case .timedOut: 124
        case .outOfMemory(let s): 128 + s
        }
    }
}

extension Usage {
    init(_ s: ExitStatus) {
        self.init(
            wallNanoseconds: s.runNanoseconds, userMicroseconds: s.userMicroseconds,
            systemMicroseconds: s.systemMicroseconds, maxRSSKiB: s.maxRSSKiB)
    }
}

/// A terminal's size in rows and columns (SerialChannel's, named here for users of VMExecutor alone).
public typealias TerminalSize = SerialChannel.TerminalSize

/// How a command ended (SerialChannel's, named here for users of VMExecutor alone).
public typealias Termination = SerialChannel.Termination

/// What a streamed command produces: output chunks as they are produced,
/// then exactly one exit.
public enum ExecEvent: Sendable, Equatable {
    case stdout([UInt8])
    case stderr([UInt8])
    case exit(Termination, Usage)
}

/// A running command whose output is streamed. Iterate it once.
public struct ExecStream: AsyncSequence, Sendable {
    public typealias Element = ExecEvent
    let process: RemoteProcess
    let stdin: StdinFeed
    /// Whether it runs on a terminal (``Command/terminal``).
    public let hasTerminal: Bool
    let mapError: @Sendable (any Error) async -> any Error

    /// Whether stdin passed its limit and was cut (final once the exit arrived).
    public var stdinTruncated: Bool { stdin.truncated }

    /// The guest's process id.
    public var pid: UInt32 { process.pid ?? 0 }
    /// The channel stream it runs on (``ProcessEntry/stream`` of its processes).
    public var streamID: UInt32 { process.stream }

    /// Signals the command's process group.
    public func signal(_ number: Int32) async throws {
        do { try await process.signal(number) } catch { throw await mapError(error) }
    }

    /// Sends bytes to the command's stdin (started with `stdin: .caller`),
    /// once the guest has credit for them; the part past the stdin limit is
    /// dropped. False once the limit is reached; throws once the command has
    /// ended or closed its stdin.
    public func writeStdin(_ bytes: [UInt8]) async throws -> Bool {
        do { return try await stdin.feed(bytes, to: process) } catch { throw await mapError(error) }
    }

    /// Gives the command's terminal a new size (started with
    /// ``Command/terminal``); its foreground process group gets SIGWINCH.
    public func resize(_ size: TerminalSize) async throws {
        guard hasTerminal else {
            throw VMExecError(.invalidRequest, "the command has no terminal to resize: start it with a terminal size")
        }
        do { try await process.resize(size) } catch { throw await mapError(error) }
    }

    /// Ends the command's stdin (started with `stdin: .caller`). On a
    /// terminal, the guest types the terminal's end-of-file character
    /// (Ctrl-D) instead, which ends a read at the start of a line.
    public func closeStdin() async throws {
        do { try await process.closeStdin() } catch { throw await mapError(error) }
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let stream: ExecStream
        var output: RemoteProcess.Output.AsyncIterator
        var finished = false

        public mutating func next() async throws -> ExecEvent? {
            if finished { return nil }
            do {
                if let chunk = try await output.next() {
                    return chunk.stream == .stdout ? .stdout(chunk.bytes) : .stderr(chunk.bytes)
                }
                let status = try await stream.process.wait()
                finished = true
                return .exit(status.termination, Usage(status))
            } catch {
                finished = true
                throw await stream.mapError(error)
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(stream: self, output: process.output.makeAsyncIterator())
    }
}

/// Feeds a command's stdin within its byte limit and remembers whether it cut it.
final class StdinFeed: Sendable {
    let limit: UInt64
    private let state = Mutex((sent: UInt64(0), truncated: false))

    init(limit: UInt64?) { self.limit = limit ?? .max }

    var truncated: Bool { state.withLock { $0.truncated } }

    /// Sends `chunk`, or the part of it within the limit; false once the limit is reached.
    func feed(_ chunk: [UInt8], to process: RemoteProcess) async throws -> Bool {
        let room = state.withLock { limit - $0.sent }
        let take = chunk.count <= room ? chunk : Array(chunk.prefix(Int(room)))
        if !take.isEmpty { try await process.writeStdin(take) }
        return state.withLock { s in
            s.sent += UInt64(take.count)
            if take.count < chunk.count { s.truncated = true }
            return !s.truncated
        }
    }
}
