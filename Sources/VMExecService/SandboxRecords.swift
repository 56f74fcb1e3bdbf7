import Foundation
import VMExecutor

/// A sandbox as a client asks for it: its guest, its defaults and its
/// bounds in time. Kept in the job store, so that a restarted daemon
/// brings every sandbox back as it was made.
public struct SandboxSpec: Codable, Sendable, Equatable {
    /// Shards by manifest name, from the daemon's shard directory.
    public var shards: [String]
    /// A store by name, in the daemon's store directory (made on first use).
    public var store: String?
    public var memoryMiB: Int
    public var cpus: Int
    /// Limits every job starts from; nil: the guest's defaults.
    public var limits: Limits?
    /// A restricted user-mode network (no route out).
    public var network: Bool
    /// Jobs run at once; the others wait in order.
    public var concurrency: Int
    /// Stop the guest after this long with nothing running; the next job boots it again.
    public var idleTimeoutSeconds: Double?
    /// Delete the sandbox this long after it was made.
    public var lifetimeSeconds: Double?
    /// The guest's host name; nil: vmexec.
    public var hostname: String?
    /// A program every job runs through, with the job's argv as its arguments.
    public var entrypoint: [String]?
    /// Host folders the guest sees; each must lie inside one the daemon shares
    /// (``ServiceConfiguration/allowedFolders``).
    public var folders: [SandboxFolder]?

    public init(
        shards: [String] = [], store: String? = nil, memoryMiB: Int = 512, cpus: Int = 1, limits: Limits? = nil,
        network: Bool = false, concurrency: Int = 4, idleTimeoutSeconds: Double? = nil, lifetimeSeconds: Double? = nil
    ) {
        self.shards = shards
        self.store = store
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        self.limits = limits
        self.network = network
        self.concurrency = concurrency
        self.idleTimeoutSeconds = idleTimeoutSeconds
        self.lifetimeSeconds = lifetimeSeconds
    }
}

/// A host folder of a sandbox, as a client names it (``HostFolder``'s fields, kept in the job store).
public struct SandboxFolder: Codable, Sendable, Equatable {
    public var host: String
    public var guest: String
    /// ro, rw or overlay.
    public var mode: String

    public init(host: String, guest: String, mode: String = "ro") {
        self.host = host
        self.guest = guest
        self.mode = mode
    }
}

/// A sandbox as the store keeps it. `id` is the store's key (jobs refer
/// to it); `owner` and `name` are how clients find it.
public struct SandboxRecord: Codable, Sendable, Equatable {
    public var id: String
    public var owner: String
    public var name: String
    public var spec: SandboxSpec
    public var created: Date
    /// The host its guest runs on (``HostSpec/name``); nil: this machine's QEMU (`local`).
    public var host: String?

    public init(id: String, owner: String, name: String, spec: SandboxSpec, created: Date, host: String? = nil) {
        self.id = id
        self.owner = owner
        self.name = name
        self.spec = spec
        self.created = created
        self.host = host
    }
}

/// Where a sandbox's guest is.
public enum GuestState: String, Sendable, Codable {
    /// Booting (at creation, after a restart, or for a job after an idle stop or a death).
    case starting
    case running
    /// Stopped for idleness, or after the guest died: the next job boots it again.
    case stopped
    /// The last boot failed; the next job tries again.
    case failed
}

/// A sandbox and what it is doing now.
public struct SandboxStatus: Sendable, Equatable {
    public var record: SandboxRecord
    public var state: GuestState
    public var jobsQueued: Int
    public var jobsRunning: Int
    /// Why the guest last stopped or failed to start.
    public var lastError: String?
}

/// What the daemon holds now, over every owner.
public struct ServiceLoad: Sendable, Equatable {
    public var sandboxes: Int
    public var guestsRunning = 0
    /// Configured memory of the running guests.
    public var guestMemoryMiB = 0
    public var jobsQueued = 0
    public var jobsRunning = 0
    /// Started guests waiting in the warm pool, and those it has handed to sandboxes so far.
    public var poolSize = 0
    public var poolTaken = 0
}
