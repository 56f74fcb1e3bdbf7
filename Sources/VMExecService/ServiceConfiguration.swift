import Foundation
import ShardLibrary
import VMExecutor

/// What the daemon's core needs to know about this host: where its state,
/// images, shards and stores are, and how much it may run at once.
public struct ServiceConfiguration: Sendable {
    /// The daemon's own files: the job store (`jobs.sqlite`) and, by default, the stores.
    public var stateDirectory: URL
    /// The guest's kernel, initramfs and root file system.
    public var images: GuestImages
    /// The shard library: sandboxes name its shards, resolved to the active versions
    /// (with what they require) and checked against its trust store at each start.
    public var library: ShardLibrary?
    /// More shards sandboxes may name, by manifest name (`*.shard` files): names the
    /// library does not hold are looked up here; nil: the images' folder. A developer's
    /// folder: its shards are verified but not checked against the trust store.
    public var shardDirectory: URL?
    /// False: sandboxes take shards from the library only (what a field daemon should do).
    public var folderShards = true
    /// Stores sandboxes may name; each `NAME` is a store folder, made on first use.
    public var storeDirectory: URL
    /// Size of a store made on first use.
    public var storeSize: UInt64 = 2 << 30
    /// Sandboxes at most (each has a guest, running or not).
    public var maxSandboxes = 16
    /// Configured guest memory of all sandboxes together, at most.
    public var maxGuestMemoryMiB = 16384
    /// Ended jobs are forgotten after this long, and beyond this many per sandbox.
    public var jobRetentionSeconds: Double = 7 * 24 * 3600
    public var jobRetentionCount = 1000
    /// Where saved boot states go; nil: the user's cache.
    public var bootStateDirectory: URL?
    /// The guests' architecture (the images must be built for it).
    public var architecture: GuestArchitecture = .preferred
    /// Host folders clients may ask sandboxes to see (each a folder inside one of these);
    /// none by default: a client of the API must not choose what of the host a guest reads.
    public var allowedFolders: [String] = []
    public var qemuBinary: String?
    public var accelerator: AcceleratorChoice = .auto
    /// Started guests kept waiting, per profile: a sandbox that matches one
    /// takes a started guest instead of booting. They come on top of ``maxGuestMemoryMiB``.
    public var pool: [PoolProfile] = []
    /// Hosts sandboxes are placed on (``HostPool``); empty: this machine's QEMU only.
    /// Sandboxes on libvirt hosts take no started guest from the pool and keep no saved states.
    public var hosts: [HostSpec] = []
    /// How often the supervisor looks at each guest (deaths, idleness, lifetimes).
    public var supervisionInterval: Duration = .milliseconds(250)

    public init(stateDirectory: URL, images: GuestImages) {
        self.stateDirectory = stateDirectory
        self.images = images
        self.storeDirectory = stateDirectory.appendingPathComponent("stores")
    }

    /// The job store's file.
    public var jobStorePath: String { stateDirectory.appendingPathComponent("jobs.sqlite").path }
}
