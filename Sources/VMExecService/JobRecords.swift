import Foundation
import VMExecutor

/// Where a job is in its life. A job is queued, then running, then ends
/// exactly once: exited (with its termination), failed (it could not run
/// to its end: the guest died, the daemon stopped), or cancelled.
public enum JobState: String, Codable, Sendable, CaseIterable {
    case queued, running, exited, failed, cancelled

    /// Whether the job has ended for good (it never runs again).
    public var isFinal: Bool { self != .queued && self != .running }
}

/// A command as a client submits it: what to run and within which bounds.
public struct JobRequest: Codable, Sendable, Equatable {
    public var arguments: [String]
    public var environment: [String: String]
    public var workingDirectory: String
    public var timeoutSeconds: Double?
    /// uid and gid; nil: the sandbox's default user.
    public var uid: UInt32?
    public var gid: UInt32?
    /// Limits that replace the sandbox's defaults one by one.
    public var limits: Limits?
    /// Bytes kept of stdout and of stderr each; the rest is dropped and the job says so.
    public var outputLimit: Int
    /// Bytes given as stdin; then it ends, unless ``stdinOpen``.
    public var stdin: Data?
    /// Share the guest's /tmp, /dev/shm and IPC instead of a private set.
    public var sharedTmp = false
    /// Leave stdin open for ``JobRunner/writeStdin(_:_:)`` until ``JobRunner/closeStdin(_:)``.
    public var stdinOpen: Bool
    /// A job submitted as code (exec/python, exec/nodejs): a runner runs it (`arguments` only
    /// name it); no stdin.
    public var code: CodeJob?

    public init(
        _ arguments: [String], environment: [String: String] = [:], workingDirectory: String = "/",
        timeoutSeconds: Double? = nil, uid: UInt32? = nil, gid: UInt32? = nil, limits: Limits? = nil,
        outputLimit: Int = 16 << 20, stdin: Data? = nil, stdinOpen: Bool = false
    ) {
        self.stdin = stdin
        self.stdinOpen = stdinOpen
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.timeoutSeconds = timeoutSeconds
        self.uid = uid
        self.gid = gid
        self.limits = limits
        self.outputLimit = outputLimit
    }
}

/// How an ended job ended.
public struct JobOutcome: Codable, Sendable, Equatable {
    /// `exited`, `signaled`, `timedOut` or `outOfMemory` (``Termination``'s cases).
    public var termination: String
    /// The shell's view: the exit code, or 128+N for signal N, 124 for a timeout.
    public var exitCode: Int32
    public var wallNanoseconds: UInt64
    public var userMicroseconds: UInt64
    public var systemMicroseconds: UInt64
    public var maxRSSKiB: UInt64

    public init(termination: Termination, usage: Usage) {
        self.termination =
            switch termination {
            case .exited: "exited"
            case .signaled: "signaled"
            case .timedOut: "timedOut"
            case .outOfMemory: "outOfMemory"
            }
        exitCode = termination.shellCode
        wallNanoseconds = usage.wallNanoseconds
        userMicroseconds = usage.userMicroseconds
        systemMicroseconds = usage.systemMicroseconds
        maxRSSKiB = usage.maxRSSKiB
    }
}

/// A job as the store keeps it.
public struct JobRecord: Codable, Sendable, Equatable {
    public var id: String
    public var sandbox: String
    public var request: JobRequest
    public var state: JobState
    /// Set once the job exited.
    public var outcome: JobOutcome?
    /// Why it failed or was cancelled.
    public var reason: String?
    /// The error code of a failed job (`commandNotFound`, `guestStopped`, `daemonStopped`…).
    public var failureCode: String?
    public var created: Date
    public var started: Date?
    public var ended: Date?
    /// Bytes kept of each stream so far, and whether its cap cut it.
    public var stdoutBytes: Int
    public var stderrBytes: Int
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    /// A code job's value, exception and reports, once it ended.
    public var code: CodeOutcome?
}

/// Which of a job's output streams.
public enum JobStream: Int, Codable, Sendable {
    case stdout = 1
    case stderr = 2
}

/// A page of a job's output: the bytes from `offset`, where the next page
/// starts, and whether the stream is complete (the job ended and nothing is
/// left past this page).
public struct OutputPage: Codable, Sendable, Equatable {
    public var offset: Int
    public var bytes: [UInt8]
    public var nextOffset: Int
    public var complete: Bool

    public init(offset: Int, bytes: [UInt8], nextOffset: Int, complete: Bool) {
        self.offset = offset
        self.bytes = bytes
        self.nextOffset = nextOffset
        self.complete = complete
    }
}
