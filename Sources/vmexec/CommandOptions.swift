import ArgumentParser
import Foundation
import PersistOverlay
import VMExecutor

/// The options of a command in the guest, shared by `vmexec run` and
/// `vmexec exec`: who runs it, within which limits, with which environment,
/// working directory, time limit and /tmp. Everything is parsed and checked
/// in `validate()`, before a guest boots or a keeper is asked.
struct CommandOptions: ParsableArguments {
    @Option(help: "Kill the command (and its children) after this many seconds.")
    var timeout: Double?

    @Option(name: .customLong("env"), help: "Set an environment variable (repeatable).")
    var env: [String] = []

    @Option(help: "Working directory in the guest.")
    var workdir: String = "/"

    @Option(help: "Run as root, or as UID[:GID] (default: the unprivileged user vmexec, 1000:1000).")
    var user: String?

    @Option(help: "Memory for the command and its children, e.g. 256M (default: 3/4 of the guest's).")
    var memoryLimit: String?

    @Option(help: "Processes and threads the command may have at once (default 512).")
    var pidsLimit: UInt32?

    @Option(help: "CPU seconds per process (default: none; --timeout bounds the wall clock).")
    var cpuLimit: UInt32?

    @Option(help: "Bytes of stdin passed on, e.g. 64M; past them the command sees end of file (default 4G).")
    var stdinLimit: String?

    @Flag(help: "Share the guest's /tmp (which vmexec cp reaches), /dev/shm and IPC instead of having its own.")
    var sharedTmp = false

    @Option(help: "Size of the command's private /tmp and /dev/shm, e.g. 64M (default: its memory limit).")
    var tmpSize: String?

    func validate() throws {
        _ = try environment()
        if let t = timeout, t <= 0 { throw ValidationError("--timeout must be positive") }
        _ = try guestUser()
        _ = try limitOverrides()
    }

    /// `--env NAME=VALUE` options as a dictionary.
    func environment() throws -> [String: String] {
        try parseEnvironment(env)
    }

    func guestUser() throws -> GuestUser? {
        guard let user else { return nil }
        if user == "root" || user == "0" || user == "0:0" { return .root }
        let parts = user.split(separator: ":", maxSplits: 1).map { UInt32($0) }
        guard let uid = parts.first ?? nil, parts.allSatisfy({ $0 != nil }) else {
            throw ValidationError("--user takes root or UID[:GID], not '\(user)'")
        }
        return .id(uid: uid, gid: parts.count == 2 ? parts[1]! : uid)
    }

    /// The limits these options set; those they leave nil keep the guest's defaults.
    func limitOverrides() throws -> Limits {
        func size(_ text: String?, _ option: String) throws -> UInt64? {
            guard let text else { return nil }
            do { return try Store.parseSize(text) } catch {
                throw ValidationError("--\(option) takes a size such as 256M or 4G, not '\(text)'")
            }
        }
        let tmp = try size(tmpSize, "tmp-size")
        if tmp != nil && sharedTmp { throw ValidationError("--tmp-size sizes a private /tmp: it does not go with --shared-tmp") }
        if let tmp, tmp < 1 << 20 { throw ValidationError("--tmp-size must be at least 1M") }
        return Limits(
            memoryBytes: try size(memoryLimit, "memory-limit"), processes: pidsLimit, cpuSeconds: cpuLimit,
            stdinBytes: try size(stdinLimit, "stdin-limit"), tmpBytes: tmp)
    }

    var timeoutDuration: Duration? { timeout.map { .milliseconds(Int64($0 * 1000)) } }
}
