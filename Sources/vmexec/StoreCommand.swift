import ArgumentParser
import Foundation
import PersistOverlay
import VMExecutor

/// `vmexec store …`: overlay stores that keep a guest's changes.
struct StoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Create, show, grow and delete overlay stores (an ext4 image that keeps the guest's changes).",
        subcommands: [Create.self, Info.self, Grow.self, Reset.self, Delete.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a store over the guest images (and layer shards) it will be used with.")

        @Argument(help: "The store's directory.")
        var directory: String

        @Option(help: "Size of the file system (sparse on the host), e.g. 4G.")
        var size: String = "2G"

        @OptionGroup var guest: GuestOptions

        func run() throws {
            let c = try guest.sandboxConfiguration()
            let images = try c.images ?? GuestImages.locate(architecture: c.architecture)
            let lower = try Sandbox.lower(rootfs: images.rootfs, shards: c.shards)
            let store = try Store.create(at: URL(fileURLWithPath: directory), size: try Store.parseSize(size), lower: lower)
            print("store \(store.directory.path): \(size), over \(lower)")
        }
    }

    struct Info: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a store's size, use, lower and snapshots.")

        @Argument(help: "The store's directory.")
        var directory: String

        @Flag(help: "Print JSON.")
        var json = false

        func run() throws {
            let info = try Store.open(at: URL(fileURLWithPath: directory)).info()
            if json { return try printJSON(info) }
            func mib(_ b: UInt64) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }
            print(
                """
                store      \(info.directory)
                size       \(mib(info.sizeBytes)) (\(mib(info.usedBytes)) used, \(mib(info.freeBytes)) free; \(mib(info.allocatedBytes)) on the host)
                created    \(ISO8601DateFormatter().string(from: info.created))
                lower      \(info.lower)
                in use by  \(info.holder ?? "nobody")
                snapshots  \(info.snapshots.map { "\($0.name) (\(ISO8601DateFormatter().string(from: $0.created)))" }.joined(separator: ", "))
                """)
        }
    }

    struct Grow: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Grow a store (while no guest uses it).")

        @Argument(help: "The store's directory.")
        var directory: String

        @Option(help: "The new size, e.g. 8G.")
        var size: String

        func run() throws {
            let lease = try Store.open(at: URL(fileURLWithPath: directory)).lock(holder: "vmexec store grow")
            try lease.grow(to: try Store.parseSize(size))
            print("store \(directory): now \(size)")
        }
    }

    struct Reset: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Empty a store (snapshots stay).")

        @Argument(help: "The store's directory.")
        var directory: String

        func run() throws {
            try Store.open(at: URL(fileURLWithPath: directory)).lock(holder: "vmexec store reset").reset()
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a store and its snapshots.")

        @Argument(help: "The store's directory.")
        var directory: String

        func run() throws {
            try Store.open(at: URL(fileURLWithPath: directory)).lock(holder: "vmexec store delete").delete()
        }
    }
}

/// `vmexec snapshot …`: snapshots of a store that no guest uses right now
/// (`--store DIR`), or of the store of a daemon's sandbox while its guest
/// runs (`--sandbox NAME`, through the API).
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Create, list, restore and delete snapshots of a store, or of a daemon sandbox's store.",
        subcommands: [Create.self, List.self, Restore.self, Delete.self])

    struct Target: ParsableArguments {
        @Option(help: "The store's directory (no guest may use it).")
        var store: String?

        @Option(help: "A sandbox of the daemon: its store, while its guest runs.")
        var sandbox: String?

        func validate() throws {
            if (store == nil) == (sandbox == nil) {
                throw ValidationError("give --store DIR or --sandbox NAME (one of them)")
            }
        }

        func lease(_ what: String) throws -> StoreLease {
            try Store.open(at: URL(fileURLWithPath: store ?? "")).lock(holder: "vmexec snapshot \(what)")
        }

        var described: String { sandbox.map { "sandbox \($0)" } ?? store ?? "" }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Snapshot the store as it is now.")
        @OptionGroup var target: Target
        @Argument(help: "The snapshot's name.") var name: String

        func run() async throws {
            if let sandbox = target.sandbox {
                _ = try await DaemonConnection.client(start: false).createSnapshot(sandbox, name)
            } else {
                _ = try target.lease("create").createSnapshot(name)
            }
            print("snapshot \(name) of \(target.described)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a store's snapshots.")
        @OptionGroup var target: Target
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let snapshots: [(name: String, created: Date, allocatedBytes: Int)]
            if let sandbox = target.sandbox {
                let listed = try await DaemonConnection.client(start: false).snapshots(sandbox)
                if json { return try printJSON(listed) }
                snapshots = listed.map { ($0.name, $0.created, $0.allocatedBytes) }
            } else {
                let listed = try Store.open(at: URL(fileURLWithPath: target.store ?? "")).info().snapshots
                if json { return try printJSON(listed) }
                snapshots = listed.map { ($0.name, $0.created, Int($0.allocatedBytes)) }
            }
            for s in snapshots {
                print("\(s.name)\t\(ISO8601DateFormatter().string(from: s.created))\t\(s.allocatedBytes) bytes on the host")
            }
        }
    }

    struct Restore: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put a snapshot back as the store's content (a sandbox's guest restarts).")
        @OptionGroup var target: Target
        @Argument(help: "The snapshot's name.") var name: String

        func run() async throws {
            if let sandbox = target.sandbox {
                try await DaemonConnection.client(start: false).restoreSnapshot(sandbox, name)
            } else {
                try target.lease("restore").restoreSnapshot(name)
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a snapshot of a store no guest uses.")
        @OptionGroup var target: Target
        @Argument(help: "The snapshot's name.") var name: String

        func validate() throws {
            if let sandbox = target.sandbox {
                throw ValidationError(
                    "the daemon does not delete snapshots of a running sandbox; vmexec down \(sandbox), then vmexec snapshot delete --store DIR"
                )
            }
        }

        func run() throws { try target.lease("delete").deleteSnapshot(name) }
    }
}

/// `vmexec diff --store DIR`: what the guest changed, read from the store on the host.
struct DiffCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "List what the guest added, changed and deleted since the store was created or since a snapshot.",
        discussion: "Give the same --shard layers the store is used with: they tell a changed file from an added one.")

    @Option(help: "Compare with this snapshot instead of the empty store.")
    var since: String?

    @Flag(help: "Print JSON.")
    var json = false

    @OptionGroup var guest: GuestOptions

    func validate() throws {
        if guest.store == nil { throw ValidationError("give the store: vmexec diff --store DIR") }
    }

    func run() async throws {
        let sandbox = Sandbox(configuration: try guest.sandboxConfiguration(), logger: guest.logger())
        let changes = try await sandbox.diff(since: since)
        if json { return try printJSON(changes) }
        for c in changes {
            let mark = c.kind == .added ? "A" : c.kind == .changed ? "C" : "D"
            print("\(mark) \(c.path)\(c.type == .directory ? "/" : "")\(c.type == .file ? "  \(c.size) bytes" : "")")
        }
    }
}

/// `vmexec export --store DIR PATH -o FILE.tar`: what the guest changed under PATH, as a tar.
struct ExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write what the guest changed under a path (its upper layer; / for all) as a tar, with OCI whiteouts.")

    @Argument(help: "The path in the guest, e.g. /root or /.")
    var path: String = "/"

    @Option(name: .shortAndLong, help: "The tar file to write.")
    var output: String

    @OptionGroup var guest: GuestOptions

    func validate() throws {
        if guest.store == nil { throw ValidationError("give the store: vmexec export --store DIR PATH -o FILE.tar") }
    }

    func run() async throws {
        let sandbox = Sandbox(configuration: try guest.sandboxConfiguration(), logger: guest.logger())
        try await sandbox.export(path, to: output)
    }
}
