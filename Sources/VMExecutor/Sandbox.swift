import Foundation
import Logging
import PersistOverlay
import SerialChannel
import SquashMounts

/// Settings of a ``Sandbox``; the defaults suit a small scripting guest.
public struct SandboxConfiguration: Sendable {
    /// Guest images; nil finds them with ``GuestImages/locate(explicit:architecture:environment:)``.
    public var images: GuestImages?
    public var architecture: GuestArchitecture = .host
    /// QEMU binary; nil picks `qemu-system-<arch>` from PATH.
    public var qemuBinary: String?
    public var memoryMiB = 512
    public var cpus = 1
    public var accelerator: AcceleratorChoice = .auto
    /// Launch to the init's hello, at most.
    public var bootTimeout: Duration = .seconds(60)
    /// Who commands run as unless they say: the unprivileged `vmexec` user.
    public var user: GuestUser = .unprivileged
    /// Limits of commands that set none; nil: ``Limits/defaults(guestMemoryMiB:)``.
    public var limits: Limits?
    /// Environment every command starts from (HOME follows the user); a command's own entries win.
    public var environment: [String: String] = [
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    ]
    /// Bytes of stdout and of stderr kept per collected command; the rest is
    /// dropped and the result says so.
    public var outputLimit = 64 << 20
    /// Appended to QEMU's command line (extra devices, e.g. a second port for a benchmark peer).
    public var extraQEMUArguments: [String] = []
    /// Start by restoring the machine state saved after the first boot of the
    /// same images and command line (see ``BootState``), and save one after a
    /// cold boot. Off: always boot.
    public var reuseBootState = true
    /// Where saved boot states live; nil for `$VMEXEC_CACHE/boot-states`
    /// (else `$XDG_CACHE_HOME/vmexec/…`, else `~/.cache/vmexec/…`).
    public var bootStateDirectory: URL?
    /// Shards attached read-only to the guest (see ``Sandbox/attach(_:)``):
    /// verified and checked against each other before boot.
    public var shards: [Shard] = []
    /// The overlay store that keeps the guest's changes (see ``Store``); nil: a
    /// throwaway tmpfs upper layer. The sandbox holds the store's lock while its
    /// guest lives.
    public var store: Store?
    /// Open a store made over another base or other layers. Its changes may not
    /// fit the new lower (deleted files can reappear or hide new ones).
    public var allowLowerChange = false

    public init() {}
}

/// One persistent guest: boots once, then runs many commands, each a few
/// frames over the virtio-serial channel.
///
/// If QEMU dies (killed, kernel panic, init crash) every waiting call throws
/// ``VMExecError/Code/guestStopped`` at once, and ``start()`` boots a fresh guest.
public actor Sandbox {
    public let configuration: SandboxConfiguration
    private let logger: Logger
    private var running: Running?
    private var generation = 0
    /// The shards the guest should have; ``start()`` attaches them all.
    private var desiredShards: [Shard]
    /// The shards attached to the running guest, as drives.
    private var attachments: [ShardAttachment] = []
    /// Numbers drive serials; never reused within a sandbox.
    private var nextDrive = 1
    /// The store's lock while a guest uses it.
    private var storeLease: StoreLease?

    /// A booted guest.
    struct Running {
        let generation: Int
        let qemu: QEMUProcess
        let client: ChannelClient
        let runDirectory: URL
        let accelerator: Accelerator
        let hello: Hello
        let restored: Bool
        let state: BootState
    }

    public init(configuration: SandboxConfiguration = SandboxConfiguration(), logger: Logger = Logger(label: "vmexec")) {
        self.configuration = configuration
        self.logger = logger
        self.desiredShards = configuration.shards
    }

    deinit {
        running?.qemu.kill()
        if let dir = running?.runDirectory { try? FileManager.default.removeItem(at: dir) }
    }

    // MARK: state

    /// Whether a guest is up and its channel open.
    public var isRunning: Bool { running.map { $0.qemu.ending == nil && $0.client.isOpen } ?? false }
    /// The accelerator of the running guest.
    public var accelerator: Accelerator? { running?.accelerator }
    /// QEMU's process id (for diagnostics and crash tests).
    public var qemuProcessID: Int32? { running?.qemu.pid }
    /// What the init said about itself in its HELLO (init version, kernel).
    public var guestInfo: [String: String] { running?.hello.fields ?? [:] }
    /// The channel of the running guest, for tests that speak to the init directly.
    var channelForTesting: ChannelClient? { running?.client }

    /// Whether the running guest was restored from a saved boot state.
    public var restoredFromSavedState: Bool { running?.restored ?? false }
    /// The guest console's log file of the running guest.
    public var consoleLog: String? { running.map { $0.runDirectory.appendingPathComponent("console.log").path } }

    // MARK: lifecycle

    /// Boots the guest and waits for the init's hello. Does nothing if the
    /// guest is already running; replaces a guest that died.
    public func start() async throws {
        if isRunning { return }
        if let dead = running { cleanUp(dead) }
        let images = try configuration.images ?? GuestImages.locate(architecture: configuration.architecture)
        // Refused before boot: a damaged shard, a requirement unmet, a clash, another architecture.
        try await Self.vet(desiredShards, verifying: desiredShards, architecture: configuration.architecture)
        // And a store held by another guest, or made over another lower.
        if let store = configuration.store, storeLease == nil {
            do {
                let lease = try store.lock(holder: "a vmexec sandbox")
                try lease.checkLower(try StoreAttachment.lower(rootfs: images.rootfs, shards: desiredShards),
                                     allowChange: configuration.allowLowerChange)
                storeLease = lease
            } catch let error as StoreError {
                throw VMExecError(error.code == .locked ? .storeBusy : .storeRefused, error.message)
            }
        }
        let profile = MachineProfile(architecture: configuration.architecture, qemuBinary: configuration.qemuBinary,
                                     memoryMiB: configuration.memoryMiB, cpus: configuration.cpus)
        do {
            switch configuration.accelerator {
            case .tcg:
                running = try await boot(profile, images, .tcg, deadline: configuration.bootTimeout)
            case .kvm:
                running = try await boot(profile, images, .kvm, deadline: configuration.bootTimeout)
            case .auto:
                running = try await bootAuto(profile, images)
            }
        } catch {
            releaseStore()
            throw error
        }
        // Shards are hot-plugged after boot, so the saved boot state serves any set of them.
        attachments = []
        do {
            if let lease = storeLease { try await plugStore(lease) }
            try await plugAll(desiredShards)
        } catch {
            if let r = running { cleanUp(r) }
            throw error
        }
        logger.info("guest up", metadata: ["accelerator": "\(running!.accelerator)", "kernel": "\(guestInfo["kernel"] ?? "?")",
                                           "start": "\(running!.restored ? "restored saved state" : "cold boot")"])
    }

    /// Tries KVM for real (see ``AcceleratorProbe``) and falls back to TCG.
    private func bootAuto(_ profile: MachineProfile, _ images: GuestImages) async throws -> Running {
        if let why = await AcceleratorProbe.quickCheck() {
            logger.info("KVM not usable (\(why)); using TCG")
            return try await boot(profile, images, .tcg, deadline: configuration.bootTimeout)
        }
        switch AcceleratorProbe.cachedVerdict(qemu: profile.qemuBinary) {
        case false?:
            logger.info("KVM hung on this host before (cached verdict); using TCG")
            return try await boot(profile, images, .tcg, deadline: configuration.bootTimeout)
        case true?:
            return try await boot(profile, images, .kvm, deadline: configuration.bootTimeout)
        case nil:
            do {
                let r = try await boot(profile, images, .kvm, deadline: AcceleratorProbe.trialDeadline)
                AcceleratorProbe.record(usable: true, qemu: profile.qemuBinary, reason: "trial boot said hello")
                return r
            } catch let e as VMExecError where e.code == .bootTimeout || e.code == .launchFailed {
                let why = "a guest under KVM did not reach its init within \(AcceleratorProbe.trialDeadline) (\(e.code))"
                AcceleratorProbe.record(usable: false, qemu: profile.qemuBinary, reason: why)
                logger.warning("\(why); falling back to TCG")
                return try await boot(profile, images, .tcg, deadline: configuration.bootTimeout)
            }
        }
    }

    /// Restores the saved boot state when there is one (falling back to a
    /// cold boot if it fails), else boots and saves a state for next time.
    private func boot(
        _ profile: MachineProfile, _ images: GuestImages, _ accelerator: Accelerator, deadline: Duration
    ) async throws -> Running {
        if configuration.reuseBootState {
            do {
                if let r = try await launch(profile, images, accelerator, deadline: deadline, restoring: true) { return r }
            } catch {
                logger.warning("restoring the saved boot state failed; booting afresh: \(error)")
            }
        }
        let r = try await launch(profile, images, accelerator, deadline: deadline, restoring: false)!
        if configuration.reuseBootState { try await saveBootState(r) }
        return r
    }

    private func bootState(_ profile: MachineProfile, _ images: GuestImages, _ accelerator: Accelerator,
                           _ dir: URL, _ paths: MachineProfile.Paths) -> (BootState, [String]) {
        let arguments = profile.arguments(accelerator: accelerator, paths: paths) + configuration.extraQEMUArguments
        let files = [images.kernel.path, images.initramfs.path, images.rootfs.path,
                     QEMUProcess.find(profile.qemuBinary) ?? profile.qemuBinary]
        let state = BootState(arguments: arguments, runDirectory: dir.path, files: files,
                              directory: configuration.bootStateDirectory ?? BootState.defaultDirectory)
        return (state, arguments)
    }

    /// Saves the just-booted guest's state. Not saving only costs the next
    /// start time; a guest left stopped by the save is unusable, so that ends
    /// this start with an error (after which QEMU is gone).
    private func saveBootState(_ r: Running) async throws {
        let monitor = r.runDirectory.appendingPathComponent("qmp.sock").path
        do {
            try await r.client.ping()  // nothing of this session is in flight when saved
            let qmp = try await QMPClient.connect(path: monitor)
            let started = ContinuousClock.now
            try await r.state.save(monitor: qmp)
            logger.info("boot state saved", metadata: ["file": "\(r.state.file.path)", "took": "\(ContinuousClock.now - started)"])
        } catch let failure as BootState.SaveFailure {
            if case .notResumed = failure {
                r.qemu.kill()
                try? FileManager.default.removeItem(at: r.runDirectory)
                throw VMExecError(.launchFailed, "\(failure)")
            }
            logger.warning("\(failure) (the next start boots again)")
        } catch {
            logger.warning("could not save the boot state (the next start boots again): \(error)")
        }
        try await r.client.ping()  // the guest answers again
    }

    /// Launches QEMU and waits for the init's hello. With `restoring`, loads
    /// the saved boot state instead of booting, and returns nil if there is none.
    private func launch(
        _ profile: MachineProfile, _ images: GuestImages, _ accelerator: Accelerator, deadline: Duration,
        restoring: Bool
    ) async throws -> Running? {
        let dir = try RunDirectory.make()
        let socket = dir.appendingPathComponent("ctl.sock").path
        let console = dir.appendingPathComponent("console.log").path
        let paths = MachineProfile.Paths(images: images, controlSocket: socket, consoleLog: console,
                                         monitorSocket: dir.appendingPathComponent("qmp.sock").path)
        let (state, initialArguments) = bootState(profile, images, accelerator, dir, paths)
        var arguments = initialArguments
        if restoring {
            guard state.exists else {
                try? FileManager.default.removeItem(at: dir)
                return nil
            }
            arguments += state.incomingArguments
        }
        generation += 1
        let generation = self.generation
        let qemu: QEMUProcess
        do {
            qemu = try QEMUProcess(
                binary: profile.qemuBinary,
                arguments: arguments,
                logPath: dir.appendingPathComponent("qemu.log").path
            ) { [weak self] ending in
                Task { await self?.qemuEnded(generation: generation, ending) }
            }
        } catch {
            try? FileManager.default.removeItem(at: dir)
            throw error
        }
        let clock = ContinuousClock()
        let started = clock.now
        func fail(_ code: VMExecError.Code, _ what: String) -> VMExecError {
            qemu.kill()
            if restoring { state.remove() }  // a state that does not restore is of no use
            let consoleTail = QEMUProcess.tail(of: console, lines: 8)
            let qemuTail = qemu.logTail()
            var message = what
            if !qemuTail.isEmpty { message += "\nQEMU said:\n\(qemuTail)" }
            if !consoleTail.isEmpty { message += "\nguest console (\(console)):\n\(consoleTail)" }
            return VMExecError(code, message)
        }
        while true {
            if let ending = qemu.ending {
                throw fail(.launchFailed, "\(ending) before the guest booted (\(accelerator))")
            }
            let remaining = deadline - (clock.now - started)
            if remaining <= .zero {
                throw fail(.bootTimeout, "the guest did not say hello within \(deadline) (\(accelerator))")
            }
            if FileManager.default.fileExists(atPath: socket) {
                do {
                    let (client, hello) = try await ChannelClient.connect(
                        unixSocket: socket, handshakeTimeout: remaining, logger: logger)
                    if let bootError = hello.fields["boot_error"], !bootError.isEmpty {
                        client.close(.closed("boot failed"))
                        throw fail(.bootFailed, "the guest init could not set up the guest: \(bootError)")
                    }
                    return Running(generation: generation, qemu: qemu, client: client, runDirectory: dir,
                                   accelerator: accelerator, hello: hello, restored: restoring, state: state)
                } catch let e as ProtocolError {
                    if case .handshakeTimeout = e {
                        throw fail(.bootTimeout, "the guest did not say hello within \(deadline) (\(accelerator))")
                    }
                    if case .versionMismatch = e { throw fail(.bootFailed, e.description) }
                    if let ending = await qemu.waitForExit(timeout: .milliseconds(200)) {
                        throw fail(.launchFailed, "\(ending) before the guest booted (\(accelerator))")
                    }
                    throw fail(.protocolError, e.description)
                } catch let e as VMExecError {
                    throw e
                } catch {
                    // QEMU created the socket but is not listening yet: try again.
                }
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    private func qemuEnded(generation: Int, _ ending: QEMUProcess.Ending) {
        guard let r = running, r.generation == generation else { return }
        r.client.close(.closed(ending.description))
        releaseStore()
        logger.notice("guest stopped: \(ending)")
    }

    private func cleanUp(_ r: Running) {
        r.client.close(.closed("the sandbox was stopped"))
        r.qemu.kill()
        releaseStore()
        try? FileManager.default.removeItem(at: r.runDirectory)
        running = nil
    }

    /// Ends every process, syncs and powers the guest off (QEMU is killed if
    /// it does not exit within `timeout`).
    public func shutdown(timeout: Duration = .seconds(10)) async {
        guard let r = running else { return }
        running = nil
        if r.qemu.ending == nil {
            let asked = Task { try? await r.client.shutdown() }
            if await r.qemu.waitForExit(timeout: timeout) == nil {
                logger.warning("guest did not power off within \(timeout); killing QEMU")
            }
            asked.cancel()
        }
        cleanUp(r)
    }

    /// Drops the channel and connects to the same guest again, as a restarted
    /// host would. The init ends the processes of the old session; calls
    /// waiting on them fail. The guest itself keeps running.
    public func reconnect(timeout: Duration = .seconds(10)) async throws {
        guard let r = running, r.qemu.ending == nil else {
            throw VMExecError(.notRunning, "the sandbox is not running; call start() first")
        }
        r.client.close(.closed("the host reconnected"))
        let socket = r.runDirectory.appendingPathComponent("ctl.sock").path
        do {
            let (client, hello) = try await ChannelClient.connect(unixSocket: socket, handshakeTimeout: timeout, logger: logger)
            running = Running(generation: r.generation, qemu: r.qemu, client: client, runDirectory: r.runDirectory,
                              accelerator: r.accelerator, hello: hello, restored: r.restored, state: r.state)
        } catch {
            throw await Self.explain(error, qemu: r.qemu)
        }
    }

    // MARK: commands

    /// Runs a command and returns its collected output and status.
    public func exec(_ command: Command) async throws -> ExecResult {
        let (process, qemu) = try await startProcess(command)
        do {
            let out = try await process.collect(limit: configuration.outputLimit)
            return ExecResult(stdout: out.stdout, stderr: out.stderr, termination: out.status.termination,
                              usage: Usage(out.status), stdoutTruncated: out.stdoutTruncated,
                              stderrTruncated: out.stderrTruncated, user: command.user ?? configuration.user,
                              limits: command.limits ?? configuration.limits ?? .defaults(guestMemoryMiB: configuration.memoryMiB))
        } catch {
            throw await Self.explain(error, qemu: qemu)
        }
    }

    /// Runs a command and streams its output as it is produced, then its exit.
    public func stream(_ command: Command) async throws -> ExecStream {
        let (process, qemu) = try await startProcess(command)
        return ExecStream(process: process) { error in await Self.explain(error, qemu: qemu) }
    }

    /// Round trip through the guest init (liveness check, latency probe).
    public func ping() async throws {
        guard let r = running else { throw VMExecError(.notRunning, "the sandbox is not running; call start() first") }
        do { try await r.client.ping() } catch { throw await Self.explain(error, qemu: r.qemu) }
    }

    /// Starts a command's process in the guest and feeds its stdin.
    private func startProcess(_ command: Command) async throws -> (RemoteProcess, QEMUProcess) {
        guard let r = running else { throw VMExecError(.notRunning, "the sandbox is not running; call start() first") }
        let user = command.user ?? configuration.user
        let limits = command.limits ?? configuration.limits ?? .defaults(guestMemoryMiB: configuration.memoryMiB)
        var base = ShardSet.environment(attachments.map(\.shard), base: configuration.environment)
        if base["HOME"] == nil { base["HOME"] = user.home }
        let env = base.merging(command.environment) { _, new in new }
        let policy = ExecPolicy(uid: user.ids.uid, gid: user.ids.gid, memoryMax: limits.memoryBytes ?? 0,
                                pidsMax: limits.processes ?? 0, openFiles: limits.openFiles ?? 0,
                                cpuSeconds: limits.cpuSeconds ?? 0)
        var timeoutMs: UInt32 = 0
        if let t = command.timeout {
            let ms = t.components.seconds * 1000 + t.components.attoseconds / 1_000_000_000_000_000
            timeoutMs = UInt32(clamping: max(1, ms))
        }
        var hasStdin = false
        if case .none = command.stdin {} else { hasStdin = true }
        let request = ExecRequest(
            arguments: command.arguments, environment: env.map { "\($0.key)=\($0.value)" }.sorted(),
            workingDirectory: command.workingDirectory, timeoutMilliseconds: timeoutMs, hasStdin: hasStdin,
            policy: policy)
        let process: RemoteProcess
        do {
            process = try await r.client.exec(request)
        } catch {
            throw await Self.explain(error, qemu: r.qemu)
        }
        switch command.stdin {
        case .none:
            break
        case .bytes(let bytes):
            Task {
                try? await process.writeStdin(bytes)
                try? await process.closeStdin()
            }
        case .stream(let chunks):
            Task {
                for await chunk in chunks where !chunk.isEmpty {
                    do { try await process.writeStdin(chunk) } catch { break }
                }
                try? await process.closeStdin()
            }
        case .fileDescriptor(let fd):
            Task {
                while let chunk = await Self.read(fd), !chunk.isEmpty {
                    do { try await process.writeStdin(chunk) } catch { break }
                }
                try? await process.closeStdin()
            }
        }
        return (process, r.qemu)
    }

    // MARK: the store

    private func releaseStore() {
        storeLease?.release()
        storeLease = nil
    }

    private func plugStore(_ lease: StoreLease) async throws {
        let r = try requireRunning()
        let qmp = try await QMPClient.connect(path: r.runDirectory.appendingPathComponent("qmp.sock").path)
        try await StoreAttachment.plug(qmp, image: lease.store.image)
        do {
            try await r.client.request(.store(serial: StoreAttachment.serial))
        } catch {
            let why = (error as? ProtocolError)?.description ?? "\(error)"
            throw VMExecError(.storeRefused, "the guest could not take on the store \(lease.store.directory.path): \(why)")
        }
    }

    /// Returns once everything the guest wrote so far is in the store's image
    /// on the host's disk (the guest's syncfs, whose flush QEMU turns into an
    /// fdatasync of the image).
    public func sync() async throws {
        let r = try requireRunning()
        do { try await r.client.request(.sync) } catch { throw await Self.explain(error, qemu: r.qemu) }
    }

    /// Snapshots the store while the guest runs, without a reboot: the guest
    /// freezes the store (syncs it and holds every write), the image is copied
    /// (a reflink where the host file system shares blocks), the store thaws.
    /// Without a running guest, copies the store as it is.
    @discardableResult
    public func snapshot(_ name: String) async throws -> SnapshotInfo {
        guard let store = configuration.store else { throw VMExecError(.invalidRequest, "this sandbox has no store") }
        guard running?.qemu.ending == nil, let lease = storeLease else {
            let lease = try Self.storeCall { try store.lock(holder: "taking a snapshot") }
            return try await Self.offPool { try lease.createSnapshot(name) }
        }
        return try await whileFrozen { try await Self.offPool { try lease.createSnapshot(name) } }
    }

    /// Runs `body` with the guest's store frozen: everything written before is
    /// in the image file, and nothing is written until it returns.
    private func whileFrozen<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        let r = try requireRunning()
        do { try await r.client.request(.freeze) } catch { throw await Self.explain(error, qemu: r.qemu) }
        let result: Result<T, any Error>
        do { result = .success(try await body()) } catch { result = .failure(error) }
        do { try await r.client.request(.thaw) } catch { throw await Self.explain(error, qemu: r.qemu) }
        return try result.get()
    }

    /// Restarts the guest from a snapshot of its store: the guest is shut
    /// down, the snapshot's image put back, and a fresh guest started.
    public func restore(snapshot name: String) async throws {
        guard let store = configuration.store else { throw VMExecError(.invalidRequest, "this sandbox has no store") }
        let wasRunning = isRunning
        await shutdown()
        let lease = try Self.storeCall { try store.lock(holder: "restoring a snapshot") }
        try await Self.offPool { try lease.restoreSnapshot(name) }
        lease.release()
        if wasRunning { try await start() }
    }

    /// Empties the store (snapshots stay): the guest is shut down, the store
    /// gets a fresh file system, and a guest is started again if one ran.
    public func resetStore() async throws {
        guard let store = configuration.store else { throw VMExecError(.invalidRequest, "this sandbox has no store") }
        let wasRunning = isRunning
        await shutdown()
        let lease = try Self.storeCall { try store.lock(holder: "resetting the store") }
        try await Self.offPool { try lease.reset() }
        lease.release()
        if wasRunning { try await start() }
    }

    /// What was added, changed and deleted in the guest's root since the store
    /// was created, or since `snapshot`. With a guest running, reads a copy of
    /// the store taken while the guest held it frozen.
    public func diff(since snapshot: String? = nil) async throws -> [StoreChange] {
        let lower = try await lowerPaths()
        return try await withStoreImage { lease, image in
            try lease.diff(since: snapshot, image: image) { lower.contains($0) }
        }
    }

    /// Writes what the guest changed under `path` (its upper layer; `/` for all)
    /// as a tar with OCI whiteouts.
    public func export(_ path: String, to tar: String) async throws {
        try await withStoreImage { lease, image in try lease.export(path, to: tar, image: image) }
    }

    /// Paths of the lower: the base root file system and the layer shards.
    private func lowerPaths() async throws -> Set<String> {
        let images = try configuration.images ?? GuestImages.locate(architecture: configuration.architecture)
        let layers = ShardSet.layers(desiredShards)
        return try await Self.offPool {
            do throws(ShardError) {
                var paths = try Shard.paths(ofSquashfsImage: images.rootfs.path)
                for layer in layers { paths.formUnion(try layer.paths()) }
                return paths
            } catch {
                throw VMExecError(.storeRefused, error.message)
            }
        }
    }

    /// Runs `body` on a consistent image of the store: a copy taken with the
    /// store frozen while the guest runs, else the store itself (locked).
    private func withStoreImage<T: Sendable>(_ body: @escaping @Sendable (StoreLease, String?) throws -> T) async throws -> T {
        guard let store = configuration.store else { throw VMExecError(.invalidRequest, "this sandbox has no store") }
        guard running?.qemu.ending == nil, let lease = storeLease else {
            let lease = try Self.storeCall { try store.lock(holder: "reading the store") }
            if let images = try? configuration.images ?? GuestImages.locate(architecture: configuration.architecture) {
                let lower = try StoreAttachment.lower(rootfs: images.rootfs, shards: desiredShards)
                try Self.storeCall { try lease.checkLower(lower, allowChange: configuration.allowLowerChange) }
            }
            return try await Self.offPool { try body(lease, nil) }
        }
        let copy = try await whileFrozen { try await Self.offPool { try lease.copyImage() } }
        defer { lease.removeCopy(copy) }
        return try await Self.offPool { try body(lease, copy) }
    }

    /// Runs blocking store work (copies, e2fsprogs) off the cooperative thread pool.
    static func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { c in
            DispatchQueue.global().async {
                c.resume(with: Result { try storeCall(work) })
            }
        }
    }

    /// A store call with its error as a VMExecError.
    static func storeCall<T>(_ work: () throws -> T) throws -> T {
        do {
            return try work()
        } catch let error as StoreError {
            throw VMExecError(error.code == .locked ? .storeBusy : .storeRefused, error.message)
        }
    }

    // MARK: shards

    /// The shards given to the guest, attached or to be attached at ``start()``.
    public var shards: [Shard] { desiredShards }

    private func requireRunning() throws -> Running {
        guard let r = running, r.qemu.ending == nil else {
            throw VMExecError(.notRunning, "the sandbox is not running; call start() first")
        }
        return r
    }

    private func newAttachment(_ shard: Shard) -> ShardAttachment {
        defer { nextDrive += 1 }
        return ShardAttachment(shard: shard, serial: "vxs-\(nextDrive)")
    }

    /// The layers request for these attachments: layer shards, bottom first.
    private static func layersRequest(_ attachments: [ShardAttachment]) -> DriveRequest {
        let order = ShardSet.layers(attachments.map(\.shard))
        return .layers(order.compactMap { shard in attachments.first { $0.shard == shard }?.serial })
    }

    private func plugAll(_ shards: [Shard]) async throws {
        guard !shards.isEmpty else { return }
        let r = try requireRunning()
        let qmp = try await QMPClient.connect(path: r.runDirectory.appendingPathComponent("qmp.sock").path)
        for shard in shards {
            let a = newAttachment(shard)
            try await a.plug(qmp)
            attachments.append(a)
            if case .mount(let target) = shard.manifest.placement {
                do {
                    try await r.client.request(.mount(serial: a.serial, target: target))
                } catch {
                    throw Self.driveError(error, shard: shard)
                }
            }
        }
        if attachments.contains(where: \.isLayer) {
            do {
                try await r.client.request(Self.layersRequest(attachments))
            } catch {
                throw VMExecError(.shardRefused, "the guest could not stack the layer shards: \((error as? ProtocolError)?.description ?? "\(error)")")
            }
        }
    }

    /// Attaches a shard to the running guest without a reboot: verified,
    /// checked against the attached ones, hot-plugged as a read-only disk,
    /// then mounted (or stacked as a layer, which needs no command running).
    /// Later starts attach it too.
    public func attach(_ shard: Shard) async throws {
        let r = try requireRunning()
        try await Self.vet(desiredShards + [shard], verifying: [shard], architecture: configuration.architecture)
        let qmp = try await QMPClient.connect(path: r.runDirectory.appendingPathComponent("qmp.sock").path)
        let a = newAttachment(shard)
        try await a.plug(qmp)
        do {
            switch shard.manifest.placement {
            case .mount(let target): try await r.client.request(.mount(serial: a.serial, target: target))
            case .layer: try await r.client.request(Self.layersRequest(attachments + [a]))
            }
        } catch {
            try? await a.unplug(qmp)
            throw Self.driveError(error, shard: shard)
        }
        attachments.append(a)
        desiredShards.append(shard)
        logger.info("shard attached", metadata: ["shard": "\(shard.label)", "drive": "\(a.serial)"])
    }

    /// Detaches the shard named `name` from the running guest. Refused
    /// (``VMExecError/Code/shardBusy``, naming the user) while a process uses it;
    /// a layer shard only while no command runs.
    public func detach(_ name: String) async throws {
        let r = try requireRunning()
        guard let a = attachments.first(where: { $0.shard.manifest.name == name }) else {
            let names = attachments.map(\.shard.manifest.name).joined(separator: ", ")
            throw VMExecError(.invalidRequest, "no shard named \(name) is attached (attached: \(names.isEmpty ? "none" : names))")
        }
        let rest = attachments.filter { $0.serial != a.serial }
        do {
            try await r.client.request(a.isLayer ? Self.layersRequest(rest) : .unmount(serial: a.serial))
        } catch {
            throw Self.driveError(error, shard: a.shard)
        }
        attachments = rest
        desiredShards.removeAll { $0.manifest.name == name }
        let qmp = try await QMPClient.connect(path: r.runDirectory.appendingPathComponent("qmp.sock").path)
        try await a.unplug(qmp)
        logger.info("shard detached", metadata: ["shard": "\(a.shard.label)"])
    }

    /// One blocking read of up to 64 KiB, off the cooperative pool; nil on error.
    private static func read(_ fd: Int32) async -> [UInt8]? {
        await withCheckedContinuation { c in
            DispatchQueue.global().async {
                var buf = [UInt8](repeating: 0, count: 65536)
                var n: Int
                repeat { n = Foundation.read(fd, &buf, buf.count) } while n < 0 && errno == EINTR
                c.resume(returning: n < 0 ? nil : Array(buf.prefix(n)))
            }
        }
    }

    /// Turns a channel error into a ``VMExecError`` that says what happened.
    static func explain(_ error: any Error, qemu: QEMUProcess) async -> any Error {
        guard let e = error as? ProtocolError else { return error }
        switch e {
        case .execFailed(let reply):
            let code: VMExecError.Code =
                reply.code == .workdir ? .invalidRequest
                : reply.errno == ENOENT || reply.errno == ENOTDIR ? .commandNotFound : .notExecutable
            return VMExecError(code, reply.message)
        case .invalidRequest(let why):
            return VMExecError(.invalidRequest, why)
        case .closed(let why):
            if let ending = await qemu.waitForExit(timeout: .milliseconds(500)) {
                return VMExecError(.guestStopped, "the guest stopped: \(ending); call start() to boot a fresh one")
            }
            return VMExecError(.guestStopped, "the channel to the guest closed (\(why)); call start() to boot a fresh one")
        default:
            return VMExecError(.protocolError, e.description)
        }
    }
}
