import ArgumentParser
import Foundation
import VMExecClient
import VMExecutor

/// `vmexec up`, `ls`, `down`, `jobs` and `logs`: sandboxes kept by the
/// daemon (started on first use), and their jobs.

struct Up: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a sandbox in the daemon (started if none runs) and boot its guest.",
        discussion: """
            Shards and stores are named, not given as paths: the daemon offers the shards in its \
            shard folder (the images' folder by default: cpython, numpy) and keeps stores in its \
            state folder, making a store on first use. Then: vmexec exec NAME -- CMD.
            """)

    @Argument(help: "The sandbox's name (default: sandbox-N).") var name: String?
    @Option(help: "A shard by name (repeatable), e.g. cpython.") var shard: [String] = []
    @Option(help: "A store by name: the guest's changes are kept in it.") var store: String?
    @Option(help: "Guest memory in MiB.") var memory: Int = 512
    @Option(help: "Guest vCPUs.") var cpus: Int = 1
    @Flag(help: "A restricted user-mode network (no route out).") var network = false
    @Option(help: "Jobs run at once; the others wait in order.") var concurrency: Int = 4
    @Option(help: "Stop the guest after this many seconds with nothing running (it boots again for the next job).")
    var idleTimeout: Double?
    @Option(help: "Delete the sandbox this many seconds after it was made.") var lifetime: Double?
    @Option(help: "The guest's host name (default vmexec).") var hostname: String?
    @Option(help: "A program every job runs through, with the job's command as its arguments.") var entrypoint: String?
    @Option(
        name: .customLong("mount"),
        help: "A host folder the guest sees (HOST:GUEST[:ro|rw|overlay], repeatable), inside the daemon's --allow-mount folders.")
    var folders: [String] = []
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let client = try await DaemonConnection.client()
        let progress = Progress.start("booting \(name ?? "a sandbox")")
        defer { progress.stop() }
        let info = try await client.createSandbox(
            SandboxRequest(
                name: name, shards: shard, store: store, memoryMiB: memory, cpus: cpus, network: network,
                concurrency: concurrency, idleTimeoutSeconds: idleTimeout, lifetimeSeconds: lifetime, hostname: hostname,
                entrypoint: entrypoint.map { [$0] },
                mounts: try folders.map { text in
                    // The daemon has another working directory: host paths go absolute.
                    let f = try HostFolder(parsing: text)
                    return (URL(fileURLWithPath: f.hostPath).standardizedFileURL.path, f.guestPath, f.mode.rawValue)
                }))
        progress.stop()
        if json { try printJSON(info) } else { print(info.name) }
    }
}

struct ListSandboxes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the daemon's sandboxes.")

    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let sandboxes = try await DaemonConnection.client(start: false).sandboxes()
        if json { return try printJSON(sandboxes) }
        print(
            ["NAME".pad(20), "STATE".pad(10), "HOST".pad(16), "MEMORY".pad(8), "JOBS".pad(9), "STORE".pad(14), "SHARDS"]
                .joined())
        for s in sandboxes {
            print(
                [
                    s.name.pad(20), s.state.pad(10), (s.host ?? "local").pad(16), "\(s.memoryMiB)M".pad(8),
                    "\(s.jobsRunning)+\(s.jobsQueued)".pad(9), (s.store ?? "-").pad(14), s.shards.joined(separator: ","),
                ].joined())
        }
    }
}

struct Hosts: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the hosts the daemon places sandboxes on (serve --host), whether each is up, and its load.")

    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let hosts = try await DaemonConnection.client(start: false).hosts()
        if json { return try printJSON(hosts) }
        print(["HOST".pad(16), "STATE".pad(7), "GUESTS".pad(8), "MEMORY".pad(9), "FREE".pad(9), "URI"].joined())
        for h in hosts {
            let guests = h.maxGuests.map { "\(h.guests)/\($0)" } ?? "\(h.guests)"
            print(
                [
                    h.name.pad(16), (h.up ? "up" : "down").pad(7), guests.pad(8), "\(h.guestMemoryMiB)M".pad(9),
                    (h.freeMemoryMiB.map { "\($0)M" } ?? "-").pad(9), h.uri + (h.up ? "" : "  (\(h.reason ?? "no answer"))"),
                ].joined())
        }
    }
}

struct Down: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete a sandbox: its jobs are cancelled and its guest stopped; its store is kept.")

    @Argument(help: "The sandbox's name.") var name: String

    func run() async throws {
        try await DaemonConnection.client(start: false).deleteSandbox(name)
    }
}

struct Jobs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List a sandbox's jobs, oldest first.")

    @Argument(help: "The sandbox's name.") var name: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let jobs = try await DaemonConnection.client(start: false).jobs(name)
        if json { return try printJSON(jobs) }
        print(["JOB".pad(38), "STATE".pad(10), "EXIT".pad(6), "WALL_S".pad(8), "COMMAND"].joined())
        for j in jobs {
            print(
                [
                    j.id.pad(38), j.state.pad(10), (j.exitCode.map { "\($0)" } ?? "-").pad(6),
                    (j.wallSeconds.map { String(format: "%.2f", $0) } ?? "-").pad(8), j.arguments.joined(separator: " "),
                ].joined())
        }
    }
}

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a job's output: stdout to stdout, stderr to stderr; with --follow, as it comes until the job ends.")

    @Argument(help: "The sandbox's name.") var name: String
    @Argument(help: "The job's id (see vmexec jobs).") var job: String
    @Flag(name: .shortAndLong, help: "Go on printing until the job ends.") var follow = false

    func run() async throws {
        let client = try await DaemonConnection.client(start: false)
        if follow {
            for try await event in try await client.events(name, job) {
                if case .output(let stream, let bytes) = event {
                    try await HostIO.write(stream == .stdout ? STDOUT_FILENO : STDERR_FILENO, bytes, path: stream.rawValue)
                }
            }
            return
        }
        for (stream, fd) in [(JobEvent.Stream.stdout, STDOUT_FILENO), (.stderr, STDERR_FILENO)] {
            var offset = 0
            while true {
                let page = try await client.output(name, job, stream: stream, offset: offset)
                try await HostIO.write(fd, page.bytes, path: stream.rawValue)
                if page.bytes.isEmpty || page.next == offset { break }
                offset = page.next
            }
        }
    }
}

/// A spinner on stderr while a long step runs, when stderr is a terminal.
final class Progress: @unchecked Sendable {
    // Touched only under `lock`.
    private let lock = NSLock()
    private var task: Task<Void, Never>?

    static func start(_ what: String) -> Progress {
        let p = Progress()
        guard isatty(STDERR_FILENO) == 1 else { return p }
        let started = ContinuousClock.now
        p.task = Task {
            let frames = ["|", "/", "-", "\\"]
            var i = 0
            while !Task.isCancelled {
                let seconds = (ContinuousClock.now - started).components.seconds
                FileHandle.standardError.write(Data("\r\(frames[i % 4]) \(what) \(seconds)s".utf8))
                i += 1
                try? await Task.sleep(for: .milliseconds(150))
            }
        }
        return p
    }

    func stop() {
        lock.lock()
        defer { lock.unlock() }
        guard let task else { return }
        task.cancel()
        self.task = nil
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}
