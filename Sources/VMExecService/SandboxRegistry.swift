import Foundation
import Logging
import PersistOverlay
import ShardLibrary
import SquashMounts
import Synchronization
import VMExecutor

/// The daemon's sandboxes: each a ``Sandbox`` (its guest) with a
/// ``JobRunner`` (its queue), owned by one client, kept in the job store.
///
/// Transport-free: the HTTP harness, tests and benchmarks call these
/// methods. A name is looked up within its owner only, so another owner's
/// sandbox is "not found", never "forbidden".
///
/// A supervisor looks at every guest each ``ServiceConfiguration/supervisionInterval``:
/// a guest that died (its running jobs already failed with the reason) is
/// booted again on the same store; one idle past its timeout is stopped; a
/// sandbox past its lifetime is deleted.
public actor SandboxRegistry {
    public nonisolated let configuration: ServiceConfiguration
    public nonisolated let jobs: JobStore
    private let logger: Logger
    private var entries: [String: Entry] = [:]
    private var supervisor: Task<Void, Never>?
    /// Set by ``shutdown()``: nothing boots any more.
    private var closed = false
    /// Started guests waiting for sandboxes of the configured profiles.
    private let pool: WarmPool
    /// Where sandboxes go: this machine's QEMU, or the configured libvirt hosts.
    public nonisolated let hosts: HostPool

    /// One sandbox and what the supervisor knows of it.
    private final class Entry: Sendable {
        let record: SandboxRecord
        let sandbox: Sandbox
        let runner: JobRunner
        let health = Mutex(Health())
        /// Library holds of shards attached live (those it started with are in its configuration).
        let holds = Mutex<[ShardLease]>([])

        struct Health {
            var booting = false
            var bootFailed = false
            /// The guest was up at the last look (so its absence now is a death).
            var wasRunning = false
            /// Stopped on purpose (idle): not a death.
            var stoppedOnPurpose = false
            var lastError: String?
        }

        init(record: SandboxRecord, sandbox: Sandbox, runner: JobRunner) {
            self.record = record
            self.sandbox = sandbox
            self.runner = runner
        }
    }

    /// Opens the job store in the state directory. Call ``recover()`` next.
    public init(configuration: ServiceConfiguration, logger: Logger = Logger(label: "vmexec.service")) throws {
        self.configuration = configuration
        self.logger = logger
        try FileManager.default.createDirectory(
            at: configuration.stateDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        self.jobs = try JobStore(path: configuration.jobStorePath)
        self.hosts = HostPool(configuration.hosts, logger: logger)
        let config = configuration
        self.pool = WarmPool(profiles: configuration.pool, logger: logger) { profile in
            let shards = try Self.shards(named: profile.shards, in: config)
            var machine = Self.machine(
                config, shards: shards.shards, store: nil, memoryMiB: profile.memoryMiB, cpus: profile.cpus,
                network: profile.network)
            machine.shardHold = shards.hold
            return Sandbox(
                configuration: machine,
                logger: logger.with("sandbox", "pool"))
        }
    }

    // MARK: lifecycle of the daemon

    /// Brings back what a stopped daemon left: every sandbox (its guest
    /// booting in the background), jobs that were running failed with that
    /// reason, queued ones queued again in order. Starts the supervisor.
    public func recover() async throws {
        try jobs.prune(olderThan: configuration.jobRetentionSeconds, keepPerSandbox: configuration.jobRetentionCount)
        let queued = try jobs.recover()
        await hosts.start()
        for record in try jobs.sandboxes() where entries[record.id] == nil {
            if let host = record.host { await hosts.adopt(record.id, host: host, memoryMiB: record.spec.memoryMiB) }
            do {
                let entry = try makeEntry(record)
                entries[record.id] = entry
                Task { await self.boot(entry) }
            } catch {
                logger.error("sandbox \(record.owner)/\(record.name) cannot come back: \(Self.describe(error))")
                // Its queued jobs cannot run: say why rather than leave them queued forever.
                for job in queued where job.sandbox == record.id {
                    _ = try? jobs.finish(
                        job.id, state: .failed, reason: "its sandbox could not be restored: \(Self.describe(error))")
                }
            }
        }
        for job in queued { await entries[job.sandbox]?.runner.resume(job) }
        startSupervisor()
        await pool.refill()
    }

    /// Stops every guest (their stores are synced and released); jobs running now fail, queued ones stay queued.
    public func shutdown() async {
        closed = true
        supervisor?.cancel()
        supervisor = nil
        await hosts.stop()
        await pool.close()
        for entry in entries.values { await entry.runner.stopStarting() }
        for entry in entries.values { await entry.sandbox.shutdown() }
    }

    // MARK: sandboxes

    /// Makes a sandbox and boots its guest; returns once the guest is up
    /// (or throws why it could not boot, the sandbox not kept).
    public func create(owner: String, name: String?, spec: SandboxSpec) async throws -> SandboxStatus {
        try Self.check(spec)
        _ = try Self.hostFolders(spec, allowed: configuration.allowedFolders)
        let mine = entries.values.filter { $0.record.owner == owner }
        let name = name ?? Self.freeName(taken: Set(mine.map(\.record.name)))
        guard Self.isName(name) else {
            throw VMExecError(
                .invalidRequest, "'\(name)' is not a sandbox name: 1-40 of a-z 0-9 _ -, starting with a letter or digit")
        }
        guard !mine.contains(where: { $0.record.name == name }) else {
            throw VMExecError(.alreadyExists, "a sandbox named \(name) exists already; choose another name or delete it first")
        }
        guard entries.count < configuration.maxSandboxes else {
            throw VMExecError(
                .limitReached, "the daemon runs its most sandboxes (\(configuration.maxSandboxes)); delete one first")
        }
        if let store = spec.store, let user = entries.values.first(where: { $0.record.spec.store == store }) {
            let whose = user.record.owner == owner ? "sandbox \(user.record.name)" : "another owner's sandbox"
            throw VMExecError(
                .storeBusy, "store \(store) is used by \(whose); one guest at a time: delete that sandbox, or name another store")
        }
        let memory = entries.values.reduce(0) { $0 + $1.record.spec.memoryMiB }
        guard memory + spec.memoryMiB <= configuration.maxGuestMemoryMiB else {
            throw VMExecError(
                .limitReached,
                "guests would have \(memory + spec.memoryMiB) MiB, over the daemon's \(configuration.maxGuestMemoryMiB) MiB; "
                    + "ask for less memory or delete a sandbox")
        }
        var record = SandboxRecord(id: UUID().uuidString.lowercased(), owner: owner, name: name, spec: spec, created: Date())
        let local = await hosts.onlyLocal
        if !local {
            // A store's image is a file on this machine: its sandbox stays on a host here.
            record.host = try await hosts.place(record.id, memoryMiB: spec.memoryMiB, localOnly: spec.store != nil)
        }
        // A started guest from the warm pool when one serves this spec: no boot on the request's path.
        let started = local || record.host == HostSpec.local.name ? await pool.take(for: spec) : nil
        let entry: Entry
        do {
            entry = try makeEntry(record, started: started)
            try jobs.insertSandbox(record)
        } catch {
            await hosts.release(record.id)
            throw error
        }
        entries[record.id] = entry
        if let failure = await boot(entry) {
            entries[record.id] = nil
            try? jobs.deleteSandbox(record.id)
            await entry.sandbox.shutdown()
            await hosts.release(record.id)
            throw Self.bootFailure(name, failure)
        }
        logger.info("sandbox created", metadata: ["owner": "\(owner)", "sandbox": "\(name)"])
        return await status(of: entry)
    }

    /// The owner's sandboxes, oldest first.
    public func list(owner: String) async -> [SandboxStatus] {
        var result: [SandboxStatus] = []
        for entry in entries.values where entry.record.owner == owner { result.append(await status(of: entry)) }
        return result.sorted { $0.record.created < $1.record.created }
    }

    public func status(owner: String, name: String) async throws -> SandboxStatus {
        await status(of: try entry(owner, name))
    }

    /// Cancels the sandbox's jobs, stops its guest and forgets it (and its jobs). Its store stays.
    public func delete(owner: String, name: String) async throws {
        let entry = try entry(owner, name)
        entries[entry.record.id] = nil
        await entry.runner.cancelAll(reason: "the sandbox was deleted")
        await entry.sandbox.shutdown()
        await hosts.release(entry.record.id)
        try jobs.deleteSandbox(entry.record.id)
        logger.info("sandbox deleted", metadata: ["owner": "\(owner)", "sandbox": "\(name)"])
    }

    /// Stops the guest and boots it again on the same store; its running jobs fail.
    public func restart(owner: String, name: String) async throws -> SandboxStatus {
        let entry = try entry(owner, name)
        entry.health.withLock { $0.stoppedOnPurpose = true }
        await entry.sandbox.shutdown()
        if let failure = await boot(entry) { throw Self.bootFailure(name, failure) }
        return await status(of: entry)
    }

    /// The sandbox's guest, for files and processes: booted again first if it
    /// was stopped (idle, or after a death), and its idle clock restarted.
    public func sandbox(owner: String, name: String) async throws -> Sandbox {
        let entry = try entry(owner, name)
        await entry.runner.touch()
        if !(await entry.sandbox.isRunning), let failure = await boot(entry) { throw Self.bootFailure(name, failure) }
        return entry.sandbox
    }

    /// Starts a command on a terminal in the sandbox's guest (booted first
    /// if it was stopped), beside its jobs. Call ``JobRunner/terminalEnded()``
    /// on the returned runner once the session is over.
    public func startTerminal(owner: String, name: String, request: JobRequest, size: TerminalSize) async throws -> (
        JobRunner, ExecStream
    ) {
        let entry = try entry(owner, name)
        if !(await entry.sandbox.isRunning), let failure = await boot(entry) { throw Self.bootFailure(name, failure) }
        return (entry.runner, try await entry.runner.startTerminal(request, size: size))
    }

    /// Attaches a shard of the shard folder to the sandbox's guest; the sandbox keeps it across restarts.
    public func attachShard(owner: String, sandbox name: String, shard shardName: String) async throws -> Shard {
        let entry = try entry(owner, name)
        let attached = await entry.sandbox.shards
        let resolved = try Self.shards(named: [shardName], in: configuration, alongside: attached)
        guard let shard = resolved.shards.first(where: { $0.manifest.name == shardName }) else {
            throw VMExecError(.notFound, "no shard named \(shardName)")
        }
        if let missing = resolved.shards.first(where: { s in
            !attached.contains { $0.manifest.name == s.manifest.name } && s != shard
        }) {
            throw VMExecError(
                .shardRefused,
                "\(shardName) needs \(missing.manifest.name) \(missing.manifest.version), which sandbox \(name) does not have; attach it first, or create a sandbox with both"
            )
        }
        if entry.record.spec.store != nil, case .layer = shard.manifest.placement {
            throw VMExecError(
                .shardRefused,
                "\(shardName) is a layer of the guest's root, and sandbox \(name) keeps its changes in a store made over "
                    + "the layers it was created with; create a sandbox with \(shardName) instead (shards mounted at their own path attach live)"
            )
        }
        let sandbox = try await self.sandbox(owner: owner, name: name)
        try await sandbox.attach(shard)
        if let hold = resolved.hold { entry.holds.withLock { $0.append(hold) } }
        try await persistShards(entry)
        return shard
    }

    /// Makes an installed program runnable in the sandbox: its version (the active one unless
    /// `version`) and the libraries it requires are attached if they are not, an older version
    /// of it detached first. Returns its entry point and folder.
    public func prepareProgram(owner: String, sandbox name: String, program: String, version: String?) async throws -> (
        entrypoint: [String], folder: String
    ) {
        guard let library = configuration.library else {
            throw VMExecError(.notFound, "this daemon has no shard library")
        }
        let entry = try entry(owner, name)
        let sandbox = try await self.sandbox(owner: owner, name: name)
        let attached = await sandbox.shards
        // Requirements the guest meets already count; the others come from the library.
        let wanted = version.map { "\(program)==\($0)" } ?? program
        let others = attached.filter { $0.manifest.name != program }.map(\.manifest)
        let versions = try library.resolve([wanted], architecture: configuration.architecture.rawValue, alongside: others)
        guard let chosen = versions.first, chosen.kind == .program, let entrypoint = chosen.manifest.entrypoint,
            case .mount(let folder) = chosen.manifest.placement
        else {
            throw VMExecError(.notFound, "\(program) is not a program of the library (GET /v1/programs lists them)")
        }
        if let old = attached.first(where: { $0.manifest.name == program }), old.manifest.version != chosen.version {
            try await sandbox.detach(program)
        }
        // Requirements first (the resolver lists them after what needs them).
        for version in versions.reversed() where !(await sandbox.shards).contains(where: { $0.manifest.name == version.name }) {
            if case .layer = version.manifest.placement {
                throw VMExecError(
                    .shardRefused,
                    "\(program) needs \(version.name) \(version.version), a layer of the guest's root, which attaches only when a sandbox is made; create the sandbox with \(version.name)"
                )
            }
            let checkout = try library.checkout(
                ["\(version.name)==\(version.version)"], architecture: configuration.architecture.rawValue,
                alongside: await sandbox.shards)
            guard let shard = checkout.shards.first else { continue }
            try await sandbox.attach(shard)
            entry.holds.withLock { $0.append(checkout.lease) }
        }
        try await persistShards(entry)
        return (entrypoint, folder)
    }

    /// Detaches a shard from the sandbox's guest (refused while something uses it).
    public func detachShard(owner: String, sandbox name: String, shard shardName: String) async throws {
        let entry = try entry(owner, name)
        guard await entry.sandbox.shards.contains(where: { $0.manifest.name == shardName }) else {
            throw VMExecError(.notFound, "sandbox \(name) has no shard \(shardName) attached")
        }
        try await self.sandbox(owner: owner, name: name).detach(shardName)
        try await persistShards(entry)
    }

    private func persistShards(_ entry: Entry) async throws {
        var spec = entry.record.spec
        spec.shards = await entry.sandbox.shards.map(\.manifest.name)
        try jobs.updateSandbox(entry.record.id, spec: spec)
    }

    /// The sandbox's store, or why there is none.
    public func store(owner: String, sandbox name: String) async throws -> (name: String, store: Store) {
        let entry = try entry(owner, name)
        guard let storeName = entry.record.spec.store, let store = await entry.sandbox.configuration.store else {
            throw VMExecError(.invalidRequest, "sandbox \(name) has no store; create it with one to keep snapshots")
        }
        return (storeName, store)
    }

    /// Puts the store back as the snapshot holds it; the guest restarts, its running jobs fail.
    public func restoreSnapshot(owner: String, sandbox name: String, snapshot: String) async throws {
        let entry = try entry(owner, name)
        _ = try await store(owner: owner, sandbox: name)
        entry.health.withLock { $0.stoppedOnPurpose = true }
        try await entry.sandbox.restore(snapshot: snapshot)
    }

    /// The sandbox's job queue.
    public func runner(owner: String, name: String) throws -> JobRunner { try entry(owner, name).runner }

    /// A job of the owner's sandbox, and the runner that has it; another sandbox's job is not found.
    public func job(owner: String, sandbox name: String, id: String) throws -> (JobRunner, JobRecord) {
        let entry = try entry(owner, name)
        guard let record = try jobs.job(id), record.sandbox == entry.record.id else {
            throw VMExecError(.notFound, "sandbox \(name) has no job \(id)")
        }
        return (entry.runner, record)
    }

    /// The sandbox's jobs, oldest first.
    public func jobList(owner: String, sandbox name: String) throws -> [JobRecord] {
        try jobs.jobs(sandbox: entry(owner, name).record.id)
    }

    /// Counts over every owner, for the health route and metrics.
    public func load() async -> ServiceLoad {
        var load = ServiceLoad(sandboxes: entries.count)
        load.poolSize = await pool.count
        load.poolTaken = await pool.taken
        for entry in entries.values {
            if await entry.sandbox.isRunning {
                load.guestsRunning += 1
                load.guestMemoryMiB += entry.record.spec.memoryMiB
            }
            let depth = await entry.runner.depth
            load.jobsQueued += depth.queued
            load.jobsRunning += depth.running
        }
        return load
    }

    // MARK: supervision

    private func startSupervisor() {
        guard supervisor == nil else { return }
        let interval = configuration.supervisionInterval
        supervisor = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                await self?.supervise()
            }
        }
    }

    /// One look at every guest: deaths restarted, idle guests stopped, expired sandboxes deleted.
    private func supervise() async {
        let now = Date()
        for entry in Array(entries.values) where !closed {
            let spec = entry.record.spec
            if let lifetime = spec.lifetimeSeconds, now.timeIntervalSince(entry.record.created) > lifetime {
                logger.info("sandbox reached its lifetime", metadata: ["sandbox": "\(entry.record.name)"])
                try? await delete(owner: entry.record.owner, name: entry.record.name)
                continue
            }
            let running = await entry.sandbox.isRunning
            let health = entry.health.withLock { $0 }
            if health.booting || closed { continue }
            if running {
                entry.health.withLock {
                    $0.wasRunning = true
                    $0.stoppedOnPurpose = false
                }
                let depth = await entry.runner.depth
                let terminals = await entry.runner.terminals
                if let idle = spec.idleTimeoutSeconds, depth.queued + depth.running + terminals == 0,
                    now.timeIntervalSince(await entry.runner.lastActivity) > idle
                {
                    logger.info("stopping an idle guest", metadata: ["sandbox": "\(entry.record.name)"])
                    entry.health.withLock { $0.stoppedOnPurpose = true }
                    await entry.sandbox.shutdown()
                }
            } else if health.wasRunning && !health.stoppedOnPurpose {
                let why = "the guest stopped unexpectedly; it was started again on the same store"
                logger.warning("guest died; restarting it", metadata: ["sandbox": "\(entry.record.name)"])
                entry.health.withLock {
                    $0.lastError = why
                    $0.booting = true  // before the task runs, so the next look does not boot it twice
                }
                Task { await self.boot(entry) }
            }
        }
    }

    /// Boots the entry's guest (a no-op if it runs), recording how it went; the error if it did not boot.
    @discardableResult
    private func boot(_ entry: Entry) async -> (any Error)? {
        guard !closed else { return VMExecError(.notRunning, "the daemon is stopping") }
        entry.health.withLock {
            $0.booting = true
            $0.wasRunning = false
        }
        do {
            try await entry.sandbox.start()
            entry.health.withLock {
                $0.booting = false
                $0.bootFailed = false
                $0.wasRunning = true
                $0.stoppedOnPurpose = false
            }
            return nil
        } catch {
            let why = Self.describe(error)
            logger.error("guest did not start: \(why)", metadata: ["sandbox": "\(entry.record.name)"])
            entry.health.withLock {
                $0.booting = false
                $0.bootFailed = true
                $0.lastError = why
            }
            return error
        }
    }

    /// A boot's error as the caller sees it: its own code (a busy store stays
    /// `storeBusy`), the sandbox named.
    static func bootFailure(_ name: String, _ error: any Error) -> VMExecError {
        let code = (error as? VMExecError)?.code ?? .launchFailed
        return VMExecError(code, "sandbox \(name) did not start: \(describe(error))", cause: error)
    }

    // MARK: plumbing

    private func entry(_ owner: String, _ name: String) throws -> Entry {
        guard let entry = entries.values.first(where: { $0.record.owner == owner && $0.record.name == name }) else {
            throw VMExecError(.notFound, "no sandbox named \(name); `GET /v1/sandboxes` lists yours")
        }
        return entry
    }

    private func status(of entry: Entry) async -> SandboxStatus {
        let running = await entry.sandbox.isRunning
        let depth = await entry.runner.depth
        let health = entry.health.withLock { $0 }
        let state: GuestState =
            health.booting ? .starting : running ? .running : health.bootFailed ? .failed : .stopped
        var record = entry.record
        record.spec.shards = await entry.sandbox.shards.map(\.manifest.name)  // as attached now
        return SandboxStatus(
            record: record, state: state, jobsQueued: depth.queued, jobsRunning: depth.running,
            lastError: health.lastError)
    }

    /// The sandbox's guest and queue, its shards and store resolved by name;
    /// `started` is a guest from the warm pool to use instead of a new one.
    private func makeEntry(_ record: SandboxRecord, started: Sandbox? = nil) throws -> Entry {
        let spec = record.spec
        let sandbox: Sandbox
        if let started {
            sandbox = started
        } else {
            let resolved = try Self.shards(named: spec.shards, in: configuration)
            let store = try spec.store.map { try self.store(named: $0, shards: resolved.shards) }
            var machine = Self.machine(
                configuration, shards: resolved.shards, store: store, memoryMiB: spec.memoryMiB, cpus: spec.cpus,
                network: spec.network)
            machine.shardHold = resolved.hold
            machine.hostname = spec.hostname
            machine.entrypoint = spec.entrypoint
            machine.folders = try Self.hostFolders(spec, allowed: configuration.allowedFolders)
            if let host = record.host, host != HostSpec.local.name {
                machine.hypervisor = PlacedHypervisor(
                    pool: hosts, host: host, uri: hosts.specs.first { $0.name == host }?.uri)
            }
            sandbox = Sandbox(
                configuration: machine,
                logger: logger.with("sandbox", "\(record.owner)/\(record.name)"))
        }
        return Entry(
            record: record, sandbox: sandbox,
            runner: JobRunner(
                id: record.id, sandbox: sandbox, store: jobs, concurrency: spec.concurrency, defaultLimits: spec.limits,
                logger: logger.with("sandbox", "\(record.owner)/\(record.name)")))
    }

    /// A guest's configuration on this daemon: its images, hypervisor and boot states, and what the sandbox asks for.
    static func machine(
        _ configuration: ServiceConfiguration, shards: [Shard], store: Store?, memoryMiB: Int, cpus: Int, network: Bool
    ) -> SandboxConfiguration {
        var config = SandboxConfiguration()
        config.images = configuration.images
        config.architecture = configuration.architecture
        config.qemuBinary = configuration.qemuBinary
        config.accelerator = configuration.accelerator
        config.bootStateDirectory = configuration.bootStateDirectory
        config.memoryMiB = memoryMiB
        config.cpus = cpus
        config.network = network ? NetworkPolicy(enabled: true) : .none
        config.shards = shards
        config.store = store
        return config
    }

    /// Shards by name: those installed in the library as it resolves them (their
    /// requirements added, the trust store asked now, the files held), the others
    /// from the shard folder. `alongside`: shards the guest has already.
    static func shards(named names: [String], in configuration: ServiceConfiguration, alongside: [Shard] = []) throws -> (
        shards: [Shard], hold: ShardLease?
    ) {
        let installed = Set(try configuration.library?.list().map(\.name) ?? [])
        let fromFolder = try names.filter { !installed.contains($0) }.map { try shard(named: $0, in: configuration) }
        let fromLibrary = names.filter { installed.contains($0) }
        guard let library = configuration.library, !fromLibrary.isEmpty else { return (fromFolder, nil) }
        let checkout = try library.checkout(
            fromLibrary, architecture: configuration.architecture.rawValue, alongside: fromFolder + alongside)
        let added = checkout.shards.filter { s in !alongside.contains { $0.manifest.name == s.manifest.name } }
        return (fromFolder + added, checkout.lease)
    }

    /// The newest shard file in the shard directory whose manifest has this name.
    static func shard(named name: String, in configuration: ServiceConfiguration) throws -> Shard {
        let dir = configuration.shardDirectory ?? configuration.images.directory
        guard configuration.folderShards else {
            throw VMExecError(
                .notFound, "no shard named \(name) is installed in the library; install it with `vmexec shard install FILE`")
        }
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        var found: [(Shard, Date)] = []
        for file in files where file.hasSuffix(".shard") {
            let path = dir.appendingPathComponent(file).path
            guard let shard = try? Shard.open(path), shard.manifest.name == name else { continue }
            let modified = (try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date) ?? nil
            found.append((shard, modified ?? .distantPast))
        }
        guard let newest = found.max(by: { $0.1 < $1.1 }) else {
            throw VMExecError(
                .notFound,
                "no shard named \(name) in the library\(configuration.library.map { " (\($0.directory.path))" } ?? "") or in \(dir.path); install it with `vmexec shard install FILE`"
            )
        }
        return newest.0
    }

    /// The named store, made over the base image and `shards` on first use.
    private func store(named name: String, shards: [Shard]) throws -> Store {
        let dir = configuration.storeDirectory.appendingPathComponent(name)
        if FileManager.default.fileExists(atPath: dir.path) { return try Store.open(at: dir) }
        try FileManager.default.createDirectory(
            at: configuration.storeDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        return try Store.create(
            at: dir, size: configuration.storeSize,
            lower: Sandbox.lower(rootfs: configuration.images.rootfs, shards: shards))
    }

    /// A spec's folders as the sandbox takes them, each checked to lie inside a folder the
    /// daemon shares (symlinks resolved first, so a link cannot lead outside).
    static func hostFolders(_ spec: SandboxSpec, allowed: [String]) throws -> [HostFolder] {
        let folders = try (spec.folders ?? []).map { f in
            guard let mode = HostFolder.Mode(rawValue: f.mode) else {
                throw VMExecError(.invalidRequest, "a mount's mode is ro, rw or overlay, not '\(f.mode)'")
            }
            let roots = allowed.compactMap { root in
                realpath(root, nil).map { p in
                    defer { free(p) }; return String(cString: p)
                }
            }
            func inside(_ path: String) -> Bool {
                roots.contains { path == $0 || path.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") }
            }
            // Outside the shared folders, a path that does not exist or is no folder gets the same
            // answer as one that is: a client must not learn what the host holds by asking.
            let wanted = HostFolder(hostPath: f.host, guestPath: f.guest, mode: mode)
            let real: String?
            do {
                real = try wanted.resolvedHostPath()
            } catch {
                if inside(URL(fileURLWithPath: f.host).standardizedFileURL.path) { throw error }
                real = nil
            }
            guard let real, inside(real) else {
                throw VMExecError(
                    .folderRefused,
                    roots.isEmpty
                        ? "this daemon shares no host folders; start it with --allow-mount DIR to let sandboxes see folders inside DIR"
                        : "\(f.host) is not inside a folder this daemon shares (\(roots.joined(separator: ", "))); see vmexec serve --allow-mount"
                )
            }
            return HostFolder(hostPath: real, guestPath: f.guest, mode: mode)
        }
        try HostFolder.check(folders)
        return folders
    }

    static func check(_ spec: SandboxSpec) throws {
        func bad(_ what: String) -> VMExecError { VMExecError(.invalidRequest, what) }
        guard (128...65536).contains(spec.memoryMiB) else { throw bad("memoryMiB must be 128-65536") }
        guard (1...64).contains(spec.cpus) else { throw bad("cpus must be 1-64") }
        guard (1...64).contains(spec.concurrency) else { throw bad("concurrency must be 1-64") }
        if let name = spec.hostname, !Sandbox.isHostname(name) {
            throw bad("hostname must be 1-63 letters, digits, '-' and '.', not starting with '-' or '.'")
        }
        if let entrypoint = spec.entrypoint, entrypoint.isEmpty || entrypoint.contains(where: \.isEmpty) {
            throw bad("entrypoint must be 1-64 non-empty arguments")
        }
        guard spec.shards.allSatisfy(isName), spec.store.map(isName) ?? true else {
            throw bad("shard and store names are 1-40 of a-z 0-9 _ -")
        }
        guard Set(spec.shards).count == spec.shards.count else { throw bad("a shard is named twice") }
        for t in [spec.idleTimeoutSeconds, spec.lifetimeSeconds] {
            if let t, !(t >= 1) { throw bad("idleTimeoutSeconds and lifetimeSeconds must be at least 1") }
        }
    }

    /// 1-40 of a-z 0-9 _ -, starting with a letter or digit (as the API's Name schema).
    public static func isName(_ s: String) -> Bool {
        guard let first = s.utf8.first, s.utf8.count <= 40 else { return false }
        func ok(_ c: UInt8, head: Bool) -> Bool {
            (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || (!head && (c == 95 || c == 45))
        }
        return ok(first, head: true) && s.utf8.allSatisfy { ok($0, head: false) }
    }

    private static func freeName(taken: Set<String>) -> String {
        var n = 1
        while taken.contains("sandbox-\(n)") { n += 1 }
        return "sandbox-\(n)"
    }

    static func describe(_ error: any Error) -> String {
        (error as? any VMExecFailure)?.explanation ?? "\(error)"
    }
}

extension Logger {
    /// A copy with one more metadata field.
    func with(_ key: String, _ value: String) -> Logger {
        var copy = self
        copy[metadataKey: key] = "\(value)"
        return copy
    }
}
