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
    /// Whether commands that do not say get a /tmp of their own (see ``Command/privateTmp``).
    public var privateTmp = true
    /// Environment every command starts from (HOME follows the user); a command's own entries win.
    public var environment: [String: String] = [
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    ]
    /// Bytes of stdout and of stderr kept per collected command; the rest is
    /// dropped and the result says so.
    public var outputLimit = 64 << 20
    /// The largest file ``Sandbox/upload(_:to:options:)`` and
    /// ``Sandbox/download(_:to:maxBytes:)`` move (default 4 GiB).
    public var fileSizeLimit: UInt64 = 4 << 30
    /// No network device unless asked for; see ``NetworkPolicy``.
    public var network: NetworkPolicy = .none
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
    let logger: Logger
    var running: Running?
    private var generation = 0
    /// The shards the guest should have; ``start()`` attaches them all.
    var desiredShards: [Shard]
    /// The shards attached to the running guest, as drives.
    var attachments: [ShardAttachment] = []
    /// Numbers drive serials; never reused within a sandbox.
    var nextDrive = 1
    /// The store's lock while a guest uses it.
    var storeLease: StoreLease?

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
                                     memoryMiB: configuration.memoryMiB, cpus: configuration.cpus,
                                     network: configuration.network.enabled)
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
        do {
            try await r.client.ping()  // nothing of this session is in flight when saved
            let qmp = try await monitor(r)
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
        var arguments = initialArguments + (try configuration.network.backendArguments())
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

    func requireRunning() throws -> Running {
        guard let r = running, r.qemu.ending == nil else {
            throw VMExecError(.notRunning, "the sandbox is not running; call start() first")
        }
        return r
    }

    /// A connection to the running guest's QEMU monitor (hot-plug, boot states).
    func monitor(_ r: Running) async throws -> QMPClient {
        try await QMPClient.connect(path: r.runDirectory.appendingPathComponent("qmp.sock").path)
    }

    /// Runs a command and returns its collected output and status.
    public func exec(_ command: Command) async throws -> ExecResult {
        let (process, stdin, qemu) = try await startProcess(command)
        let policy = resolvedPolicy(command)
        do {
            let out = try await process.collect(limit: configuration.outputLimit)
            return ExecResult(stdout: out.stdout, stderr: out.stderr, termination: out.status.termination,
                              usage: Usage(out.status), stdoutTruncated: out.stdoutTruncated,
                              stderrTruncated: out.stderrTruncated, stdinTruncated: stdin.truncated,
                              user: policy.user, limits: policy.limits, privateTmp: policy.privateTmp)
        } catch {
            throw await Self.explain(error, qemu: qemu)
        }
    }

    /// Runs a command and streams its output as it is produced, then its exit.
    public func stream(_ command: Command) async throws -> ExecStream {
        let (process, stdin, qemu) = try await startProcess(command)
        return ExecStream(process: process, stdin: stdin) { error in await Self.explain(error, qemu: qemu) }
    }

    /// Round trip through the guest init (liveness check, latency probe).
    public func ping() async throws {
        guard let r = running else { throw VMExecError(.notRunning, "the sandbox is not running; call start() first") }
        do { try await r.client.ping() } catch { throw await Self.explain(error, qemu: r.qemu) }
    }

    /// Who runs a command, within which limits and with which /tmp: its own
    /// settings, else the sandbox's.
    private func resolvedPolicy(_ command: Command) -> (user: GuestUser, limits: Limits, privateTmp: Bool) {
        (command.user ?? configuration.user,
         command.limits ?? configuration.limits ?? .defaults(guestMemoryMiB: configuration.memoryMiB),
         command.privateTmp ?? configuration.privateTmp)
    }

    /// Starts a command's process in the guest and feeds its stdin.
    private func startProcess(_ command: Command) async throws -> (RemoteProcess, StdinFeed, QEMUProcess) {
        guard let r = running else { throw VMExecError(.notRunning, "the sandbox is not running; call start() first") }
        let (user, limits, privateTmp) = resolvedPolicy(command)
        var base = ShardSet.environment(attachments.map(\.shard), base: configuration.environment)
        if base["HOME"] == nil { base["HOME"] = user.home }
        let env = base.merging(command.environment) { _, new in new }
        let policy = ExecPolicy(uid: user.ids.uid, gid: user.ids.gid, memoryMax: limits.memoryBytes ?? 0,
                                pidsMax: limits.processes ?? 0, openFiles: limits.openFiles ?? 0,
                                cpuSeconds: limits.cpuSeconds ?? 0, privateTmp: privateTmp)
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
        let feed = StdinFeed(limit: limits.stdinBytes)
        switch command.stdin {
        case .none:
            break
        case .bytes(let bytes):
            Task {
                _ = try? await feed.feed(bytes, to: process)
                try? await process.closeStdin()
            }
        case .stream(let chunks):
            Task {
                for await chunk in chunks where !chunk.isEmpty {
                    guard (try? await feed.feed(chunk, to: process)) == true else { break }
                }
                try? await process.closeStdin()
            }
        case .fileDescriptor(let fd):
            Task {
                while let chunk = try? await HostIO.read(fd), !chunk.isEmpty {
                    guard (try? await feed.feed(chunk, to: process)) == true else { break }
                }
                try? await process.closeStdin()
            }
        }
        return (process, feed, r.qemu)
    }

    /// Runs blocking work (hashing shards, copying images, e2fsprogs) off the
    /// cooperative thread pool; a StoreError comes out as a VMExecError.
    static func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { c in
            DispatchQueue.global().async {
                c.resume(with: Result { try storeCall(work) })
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
                // The guest's last words (a kernel panic, the init's complaint) say why.
                let console = URL(fileURLWithPath: qemu.logPath).deletingLastPathComponent()
                    .appendingPathComponent("console.log").path
                let last = QEMUProcess.tail(of: console, lines: 12)
                return VMExecError(.guestStopped, "the guest stopped: \(ending); call start() to boot a fresh one"
                                   + (last.isEmpty ? "" : "\nguest console:\n\(last)"))
            }
            return VMExecError(.guestStopped, "the channel to the guest closed (\(why)); call start() to boot a fresh one")
        default:
            return VMExecError(.protocolError, e.description)
        }
    }
}
