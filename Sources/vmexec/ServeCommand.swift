import ArgumentParser
import Foundation
import Logging
import PersistOverlay
import ShardLibrary
import VMExecServer
import VMExecService
import VMExecutor

/// `vmexec serve`: the daemon that owns the guests and runs jobs in them.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the vmexec daemon: sandboxes and jobs over an HTTP API (docs/openapi.yaml).",
        discussion: """
            It listens on a Unix socket (mode 0600; the caller is the owner `local`) and, with --listen \
            and --tokens, on TCP too, where each request carries a bearer token and sees only its own \
            sandboxes. Sandboxes and jobs are kept in --state: a restarted daemon brings the sandboxes \
            back, runs the jobs still queued and reports those that were running as failed. \
            SIGTERM or SIGINT stops it after its guests.
            """)

    @Option(help: "The Unix socket (default: daemon.sock in the runtime directory).")
    var socket: String?

    @Option(help: "Also listen on TCP at HOST:PORT (needs --tokens).")
    var listen: String?

    @Option(help: "File of lines OWNER TOKEN: the bearer tokens TCP requests must carry.")
    var tokens: String?

    @Option(help: "The daemon's state: job store and stores (default: $XDG_STATE_HOME/vmexec or ~/.local/state/vmexec).")
    var state: String?

    @Option(help: "Folder holding the guest images (default: $VMEXEC_IMAGES, then the build folder).")
    var images: String?

    @Option(help: "The shard library sandboxes name shards from (default: $VMEXEC_LIBRARY, then library/ in --state).")
    var library: String?

    @Option(
        help:
            "A developer's folder of more shards sandboxes may name, for names the library lacks (default: the images' folder; none: only the library)."
    )
    var shards: String?

    @Option(
        name: .customLong("allow-mount"),
        help:
            "A host folder whose folders sandboxes may see (repeatable; none by default: clients cannot reach the host's files)."
    )
    var allowedFolders: [String] = []

    @Option(
        name: .customLong("host"),
        help: ArgumentHelp(
            "A host to place sandboxes on (repeatable): a libvirt URI (qemu+tls://h/system, qemu+ssh://u@h/system, qemu:///system), NAME=URI, with ,guests=N; local is this machine's QEMU.",
            discussion: "Without --host every sandbox runs on this machine's QEMU.", valueName: "URI"))
    var hosts: [String] = []

    @Option(help: "Largest file upload over TCP, e.g. 10M.")
    var uploadLimit: String = "10M"

    @Option(help: "Largest file upload over the Unix socket, e.g. 4G.")
    var localUploadLimit: String = "4G"

    @Option(help: "Sandboxes at most.")
    var maxSandboxes: Int = 16

    @Option(help: "Guest memory of all sandboxes together at most, in MiB.")
    var maxMemory: Int = 16384

    @Option(help: "Forget ended jobs after this many days.")
    var retentionDays: Double = 7

    @Option(help: "Keep at most this many ended jobs per sandbox.")
    var retentionJobs: Int = 1000

    @Option(
        help:
            "Keep started guests waiting for sandboxes with these shards: NAMES[:COUNT], names comma-separated or none (repeatable)."
    )
    var pool: [String] = []

    @Option(help: "Memory in MiB of the pool's guests (a sandbox takes one only when it asks for as much).")
    var poolMemory: Int = 512

    @Option(help: "Accelerator: auto, kvm or tcg.")
    var accel: AcceleratorChoice = .auto

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    func validate() throws {
        if (listen == nil) != (tokens == nil) { throw ValidationError("--listen and --tokens go together") }
        if let listen { _ = try Self.hostPort(listen) }
        _ = try poolProfiles()
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level '\(logLevel)'") }
    }

    static func hostPort(_ text: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port)
        else { throw ValidationError("--listen takes HOST:PORT, e.g. 127.0.0.1:8080") }
        return (String(text[..<colon]), port)
    }

    /// `--pool` options as profiles.
    func poolProfiles() throws -> [PoolProfile] {
        try pool.map { text in
            let parts = text.split(separator: ":", maxSplits: 1)
            let count = parts.count == 2 ? Int(parts[1]) : 1
            guard let names = parts.first, let count, (1...16).contains(count) else {
                throw ValidationError("--pool takes NAMES[:COUNT] (COUNT 1-16), e.g. cpython:2 or none:1, not '\(text)'")
            }
            let shards = names == "none" ? [] : names.split(separator: ",").map(String.init)
            return PoolProfile(shards: shards, memoryMiB: poolMemory, size: count)
        }
    }

    static func defaultStateDirectory() -> URL {
        let env = ProcessInfo.processInfo.environment
        if let d = env["VMEXEC_STATE"], !d.isEmpty { return URL(fileURLWithPath: d) }
        if let d = env["XDG_STATE_HOME"], !d.isEmpty { return URL(fileURLWithPath: d).appendingPathComponent("vmexec") }
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".local/state/vmexec")
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "vmexec.daemon")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var config = ServiceConfiguration(
            stateDirectory: state.map { URL(fileURLWithPath: $0) } ?? Self.defaultStateDirectory(),
            images: try GuestImages.locate(explicit: images))
        config.shardDirectory = shards.flatMap { $0 == "none" ? nil : URL(fileURLWithPath: $0) }
        config.folderShards = shards != "none"
        config.library = try ShardLibrary(
            directory: library.map { URL(fileURLWithPath: $0) }
                ?? ShardLibrary.defaultDirectory(state: config.stateDirectory),
            logger: logger)
        config.maxSandboxes = maxSandboxes
        config.maxGuestMemoryMiB = maxMemory
        config.jobRetentionSeconds = retentionDays * 86400
        config.jobRetentionCount = retentionJobs
        config.accelerator = accel
        config.pool = try poolProfiles()
        config.hosts = try hosts.map { try HostSpec.parse($0) }
        config.allowedFolders = try allowedFolders.map { try HostFolder(hostPath: $0, guestPath: "/").resolvedHostPath() }
        var options = DaemonOptions(socketPath: socket ?? DaemonConnection.socketPath)
        options.uploadLimit = Int(try Store.parseSize(uploadLimit))
        options.localUploadLimit = Int(try Store.parseSize(localUploadLimit))
        if let listen, let tokens {
            let (host, port) = try Self.hostPort(listen)
            options.tcpHost = host
            options.tcpPort = port
            options.tokens = try TokenBook(file: tokens)
        }
        let registry = try SandboxRegistry(configuration: config, logger: logger)
        let server = DaemonServer(registry: registry, options: options, logger: logger)
        let (socketPath, stateDirectory, log) = (options.socketPath, config.stateDirectory.path, logger)
        // Beside the socket: which process serves it (for operators, and tests that kill it).
        let pidFile = socketPath + ".pid"
        try? "\(getpid())\n".write(toFile: pidFile, atomically: true, encoding: .utf8)
        defer { unlink(pidFile) }
        try await server.run { port in
            log.notice(
                "vmexec daemon \(vmexecVersion) serving on \(socketPath)\(port > 0 ? " and TCP port \(port)" : "")",
                metadata: ["state": "\(stateDirectory)"])
        }
    }
}
