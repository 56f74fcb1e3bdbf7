import Foundation
import VMExecFailure

/// An error the daemon answered with: its stable code, what the caller can
/// do about it, and its sentence. The same shape as every vmexec error.
public struct DaemonError: VMExecFailure, Equatable {
    public let status: Int
    public let failureCode: String
    public let kind: FailureKind
    public let message: String

    public var description: String { message }

    static let unexpected = DaemonError(
        status: 0, failureCode: "protocolError", kind: .hostFailure,
        message: "the daemon answered in a way the API does not describe")
}

/// The daemon's load.
public struct DaemonHealth: Sendable, Equatable {
    public var sandboxes: Int
    public var guestsRunning: Int
    public var jobsQueued: Int
    public var jobsRunning: Int
}

/// A sandbox to create; nil fields take the daemon's defaults.
public struct SandboxRequest: Sendable {
    public var name: String?
    /// Shards by name, from the daemon's shard directory.
    public var shards: [String]
    /// A store by name (made on first use).
    public var store: String?
    public var memoryMiB: Int?
    public var cpus: Int?
    public var network: Bool?
    public var concurrency: Int?
    public var idleTimeoutSeconds: Double?
    public var lifetimeSeconds: Double?
    /// The guest's host name (default vmexec).
    public var hostname: String?
    /// A program every job runs through, with the job's argv as its arguments.
    public var entrypoint: [String]?
    /// Host folders the guest sees: (host path, guest path, ro|rw|overlay), inside the daemon's --allow-mount folders.
    public var mounts: [(host: String, guest: String, mode: String)]

    public init(
        name: String? = nil, shards: [String] = [], store: String? = nil, memoryMiB: Int? = nil, cpus: Int? = nil,
        network: Bool? = nil, concurrency: Int? = nil, idleTimeoutSeconds: Double? = nil, lifetimeSeconds: Double? = nil,
        hostname: String? = nil, entrypoint: [String]? = nil, mounts: [(host: String, guest: String, mode: String)] = []
    ) {
        self.name = name
        self.shards = shards
        self.store = store
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        self.network = network
        self.concurrency = concurrency
        self.idleTimeoutSeconds = idleTimeoutSeconds
        self.lifetimeSeconds = lifetimeSeconds
        self.hostname = hostname
        self.entrypoint = entrypoint
        self.mounts = mounts
    }
}

/// A sandbox as the daemon describes it.
public struct SandboxInfo: Sendable, Equatable, Codable {
    public var name: String
    /// starting, running, stopped or failed.
    public var state: String
    public var shards: [String]
    public var store: String?
    public var memoryMiB: Int
    public var cpus: Int
    public var created: Date
    public var jobsQueued: Int
    public var jobsRunning: Int
    public var lastError: String?
    /// The host its guest runs on (`vmexec hosts`); `local`: the daemon's machine.
    public var host: String?

    init(_ s: Components.Schemas.Sandbox) {
        name = s.name
        state = s.state.rawValue
        shards = s.shards
        store = s.store
        memoryMiB = s.memoryMiB
        cpus = s.cpus
        created = s.created
        jobsQueued = s.jobsQueued
        jobsRunning = s.jobsRunning
        lastError = s.lastError
        host = s.host
    }
}

/// A host the daemon places sandboxes on, and its load.
public struct HostInfo: Sendable, Equatable, Codable {
    public var name: String
    /// Its libvirt URI, or `local`.
    public var uri: String
    public var up: Bool
    public var reason: String?
    public var guests: Int
    public var maxGuests: Int?
    public var guestMemoryMiB: Int
    public var freeMemoryMiB: Int?

    init(_ h: Components.Schemas.Host) {
        name = h.name
        uri = h.uri
        up = h.up
        reason = h.reason
        guests = h.guests
        maxGuests = h.maxGuests
        guestMemoryMiB = h.guestMemoryMiB
        freeMemoryMiB = h.freeMemoryMiB
    }
}

/// Limits of one job; nil fields keep the sandbox's.
public struct JobLimits: Sendable, Equatable {
    public var memoryBytes: Int?
    public var processes: Int?
    public var cpuSeconds: Int?
    public var stdinBytes: Int?
    /// Size of the private /tmp and /dev/shm.
    public var tmpBytes: Int?

    public init(
        memoryBytes: Int? = nil, processes: Int? = nil, cpuSeconds: Int? = nil, stdinBytes: Int? = nil, tmpBytes: Int? = nil
    ) {
        self.memoryBytes = memoryBytes
        self.processes = processes
        self.cpuSeconds = cpuSeconds
        self.stdinBytes = stdinBytes
        self.tmpBytes = tmpBytes
    }
}

extension Components.Schemas.Limits {
    init(_ l: JobLimits) {
        self.init(
            memoryBytes: l.memoryBytes, processes: l.processes, cpuSeconds: l.cpuSeconds, stdinBytes: l.stdinBytes,
            tmpBytes: l.tmpBytes)
    }
}

/// A command to run as a job.
public struct JobSubmission: Sendable {
    public var arguments: [String]
    public var environment: [String: String]
    public var workingDirectory: String
    /// root, or UID[:GID]; nil: the sandbox's default user.
    public var user: String?
    public var limits: JobLimits?
    public var timeoutSeconds: Double?
    public var outputLimitBytes: Int?
    /// Bytes given as stdin (then it ends, unless ``stdinOpen``).
    public var stdin: [UInt8]?
    /// Leave stdin open for ``DaemonClient/writeStdin(_:_:_:)`` until ``DaemonClient/closeStdin(_:_:)``.
    public var stdinOpen: Bool
    /// Share the guest's /tmp, /dev/shm and IPC instead of a private set.
    public var sharedTmp = false

    public init(
        _ arguments: [String], environment: [String: String] = [:], workingDirectory: String = "/", user: String? = nil,
        limits: JobLimits? = nil, timeoutSeconds: Double? = nil, outputLimitBytes: Int? = nil, stdin: [UInt8]? = nil,
        stdinOpen: Bool = false
    ) {
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.user = user
        self.limits = limits
        self.timeoutSeconds = timeoutSeconds
        self.outputLimitBytes = outputLimitBytes
        self.stdin = stdin
        self.stdinOpen = stdinOpen
    }
}

/// A job as the daemon describes it.
public struct JobInfo: Sendable, Equatable, Codable {
    public var id: String
    public var sandbox: String
    /// queued, running, exited, failed or cancelled.
    public var state: String
    public var arguments: [String]
    /// For an exited job: exited, signaled, timedOut or outOfMemory, and the shell's exit code.
    public var termination: String?
    public var exitCode: Int?
    public var wallSeconds: Double?
    /// Why it failed or was cancelled.
    public var reason: String?
    /// Why it failed, as a code (`commandNotFound`, `notExecutable`, `guestStopped`…).
    public var failureCode: String?
    public var stdoutBytes: Int
    public var stderrBytes: Int
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    public var created: Date

    /// Whether it has ended for good.
    public var isFinal: Bool { !["queued", "running"].contains(state) }

    init(_ j: Components.Schemas.Job) {
        id = j.id
        sandbox = j.sandbox
        state = j.state.rawValue
        arguments = j.argv
        termination = j.exit?.termination.rawValue
        exitCode = j.exit?.exitCode
        wallSeconds = j.exit?.wallSeconds
        reason = j.reason
        failureCode = j.failureCode
        stdoutBytes = j.stdout.bytes
        stderrBytes = j.stderr.bytes
        stdoutTruncated = j.stdout.truncated
        stderrTruncated = j.stderr.truncated
        created = j.created
    }
}

/// What a job's event stream says.
public enum JobEvent: Sendable, Equatable {
    public enum Stream: String, Sendable { case stdout, stderr }
    /// Bytes of one stream, in order.
    case output(Stream, [UInt8])
    /// A Python job called a host function and waits for ``DaemonClient/answerCallback(_:_:_:value:error:)``;
    /// its arguments are JSON text.
    case callback(id: Int, name: String, arguments: String, keywordArguments: String)
    /// The job ended; the last event.
    case end(JobInfo)
}

/// A file in a guest.
public struct FileInfo: Sendable, Equatable, Codable {
    public var path: String
    public var name: String
    /// file, directory, symlink, …
    public var type: String
    public var size: Int
    /// Permission bits in octal.
    public var mode: String
    public var uid: Int
    public var gid: Int
    public var modified: Date

    init(_ f: Components.Schemas.FileEntry) {
        path = f.path
        name = f.name
        type = f._type.rawValue
        size = f.size
        mode = f.mode
        uid = f.uid
        gid = f.gid
        modified = f.modified
    }
}

/// A snapshot of a sandbox's store.
public struct SandboxSnapshot: Sendable, Equatable, Codable {
    public var name: String
    public var created: Date
    /// Bytes the copy takes on the host's disk (less than the store's where blocks are shared).
    public var allocatedBytes: Int

    init(_ s: Components.Schemas.SnapshotInfo) {
        name = s.name
        created = s.created
        allocatedBytes = s.allocatedBytes
    }
}

/// A process in a guest.
public struct GuestProcess: Sendable, Equatable, Codable {
    public var pid: Int
    public var ppid: Int
    public var pgid: Int
    public var uid: Int
    public var state: String
    public var cpuSeconds: Double
    public var rssKiB: Int
    public var arguments: [String]

    init(_ p: Components.Schemas.Process) {
        pid = p.pid
        ppid = p.ppid
        pgid = p.pgid
        uid = p.uid
        state = p.state
        cpuSeconds = p.cpuSeconds
        rssKiB = p.rssKiB
        arguments = p.argv
    }
}

extension DaemonClient {
    /// The output itself, or the daemon's error as a ``DaemonError``.
    ///
    /// Every operation's output enum has a `default(statusCode:_:)` case
    /// carrying the error body; this one generic check reads it through
    /// reflection instead of a switch per operation.
    static func check<Output>(_ output: Output) throws -> Output {
        let mirror = Mirror(reflecting: output)
        guard let child = mirror.children.first, child.label == "default" else { return output }
        let parts = Mirror(reflecting: child.value).children.map(\.value)
        guard parts.count == 2, let status = parts[0] as? Int, let response = parts[1] as? Components.Responses.Failure,
            case .json(let failure) = response.body
        else { throw DaemonError.unexpected }
        let e = failure.error
        throw DaemonError(
            status: status, failureCode: e.code, kind: FailureKind(rawValue: e.kind.rawValue) ?? .hostFailure,
            message: e.message)
    }
}
