import Foundation
import Logging
import PersistOverlay
import SerialChannel
import SquashMounts

/// Settings of a ``Sandbox``; the defaults suit a small scripting guest.
public struct SandboxConfiguration: Sendable {
    /// Guest images; nil finds them with ``GuestImages/locate(explicit:architecture:environment:)``.
    public var images: GuestImages?
    /// The guest's architecture: `$VMEXEC_ARCH`, else the host's (``GuestArchitecture/preferred``).
    public var architecture: GuestArchitecture = .preferred
    /// QEMU binary; nil picks `qemu-system-<arch>` from PATH. Used by the
    /// default hypervisor.
    public var qemuBinary: String?
    /// What runs the guest; nil: ``QEMUHypervisor`` with ``qemuBinary``.
    public var hypervisor: (any GuestHypervisor)?
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
    /// The guest's host name (`uname -n`), set on every session; nil: `vmexec`. 1-63 letters,
    /// digits, '-' and '.'.
    public var hostname: String?
    /// A program every command runs through, with the command as its arguments (as a
    /// container's entry point): `entrypoint + command.arguments`. Not for vmexec's own
    /// commands (``Command/throughEntrypoint``).
    public var entrypoint: [String]?
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
    /// Appended to QEMU's command line (extra devices, e.g. a second port for
    /// a benchmark peer); given to other hypervisors as they are.
    public var extraQEMUArguments: [String] = []
    /// Host folders the guest sees (read-only, read-write or overlaid), shared over virtiofs.
    /// A machine with folders cannot save its state: such a sandbox always boots (about
    /// 1.2-1.5 s under TCG) and saves no boot or warm state.
    public var folders: [HostFolder] = []
    /// Start a warm Python interpreter (a zygote, with the shards' preloads imported) at the
    /// first Python job, so that later ones fork from it in milliseconds; see
    /// ``Sandbox/warmPython()``. Off: every Python job starts its own interpreter.
    public var warmPython = true
    /// Start by restoring the machine state saved after the first boot of the
    /// same images and command line (see ``BootState``), and save one after a
    /// cold boot. Off: always boot.
    public var reuseBootState = true
    /// With ``reuseBootState``: also save the machine as it is once the shards are attached
    /// (and the warm Python interpreter listens, with ``warmPython``), after the first start
    /// with a set of shards, and restore that on later starts with the same set (and no
    /// store): no attaching, no preloading. Off: only the boot state.
    public var reuseWarmState = true
    /// Where saved boot states live; nil for `$VMEXEC_CACHE/boot-states`
    /// (else `$XDG_CACHE_HOME/vmexec/…`, else `~/.cache/vmexec/…`).
    public var bootStateDirectory: URL?
    /// Shards attached read-only to the guest (see ``Sandbox/attach(_:)``):
    /// verified and checked against each other before boot.
    public var shards: [Shard] = []
    /// Kept for as long as the sandbox lives: the shard library's hold on the files of
    /// `shards` (a `ShardLease`), so that no version is removed from under its guest.
    public var shardHold: (any AnyObject & Sendable)?
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
    /// Numbers launched machines, so that a late end of an old one is ignored.
    var nextGeneration = 0
    /// The shards the guest should have; ``start()`` attaches them all.
    var desiredShards: [Shard]
    /// The shards attached to the running guest, as drives.
    var attachments: [ShardAttachment] = []
    /// Numbers drive serials; never reused within a sandbox.
    var nextDrive = 1
    /// The store's lock while a guest uses it.
    var storeLease: StoreLease?
    /// The warm Python interpreter that runner jobs fork from (``warmPython()``).
    var zygote = PythonZygote.State.stopped
    /// Numbers the zygote's watches (``PythonZygote/State/ready(generation:pid:warmth:epoch:ended:)``).
    var zygoteEpoch = 0
    /// Whether a lifecycle operation runs (see ``exclusively(_:)``), and who waits for it.
    private var operationRunning = false
    private var operationWaiters: [CheckedContinuation<Void, Never>] = []

    /// A booted guest: its machine and the channel to its init.
    struct Running {
        let generation: Int
        let machine: any GuestMachine
        let client: ChannelClient
        let hello: Hello
        let restored: Bool
        /// Restored from a warm state: its shards were attached when it was saved.
        var warm = false
        /// Where to save a warm state once its shards are attached, when there is none yet.
        var warmToSave: BootState?
        /// The warm interpreter the restored warm state has running.
        var warmZygote: PythonZygote.Saved?
    }

    public init(configuration: SandboxConfiguration = SandboxConfiguration(), logger: Logger = Logger(label: "vmexec")) {
        self.configuration = configuration
        self.logger = logger
        self.desiredShards = configuration.shards
    }

    deinit {
        running?.machine.kill()
        running?.machine.discard()
    }

    /// The hypervisor this sandbox launches its machines with.
    var hypervisor: any GuestHypervisor {
        configuration.hypervisor ?? QEMUHypervisor(binary: configuration.qemuBinary)
    }

    // MARK: state

    /// Whether a guest is up and its channel open.
    public var isRunning: Bool { running.map { $0.machine.ending == nil && $0.client.isOpen } ?? false }
    /// The accelerator of the running guest.
    public var accelerator: Accelerator? { running?.machine.accelerator }
    /// The process id of the running guest's hypervisor (QEMU's; for diagnostics and crash tests).
    public var qemuProcessID: Int32? { running?.machine.processID }
    /// What the init said about itself in its HELLO (init version, kernel).
    public var guestInfo: [String: String] { running?.hello.fields ?? [:] }
    /// The channel of the running guest, for tests that speak to the init directly.
    var channelForTesting: ChannelClient? { running?.client }

    /// Whether the running guest was restored from a saved boot state.
    public var restoredFromSavedState: Bool { running?.restored ?? false }
    /// Whether it was restored from a warm state: its shards attached (and its warm Python
    /// interpreter running) when it was saved.
    public var restoredFromWarmState: Bool { running?.warm ?? false }
    /// The guest console's log file of the running guest.
    public var consoleLog: String? { running?.machine.consoleLogPath }

    // MARK: lifecycle

    /// Boots the guest and waits for the init's hello. Does nothing if the
    /// guest is already running; replaces a guest that died.
    public func start() async throws {
        try await exclusively { try await startMachine() }
    }

    /// Runs one lifecycle operation (start, shutdown, attach, detach, snapshot,
    /// restore, reset, diff, export) at a time. Actor methods interleave at
    /// every await, and two of these interleaved would plug disks into a
    /// guest being replaced or copy a store being restored. Commands, files
    /// and pings do not wait here.
    func exclusively<T>(_ body: () async throws -> T) async rethrows -> T {
        while operationRunning {
            await withCheckedContinuation { operationWaiters.append($0) }
        }
        operationRunning = true
        defer {
            operationRunning = false
            if !operationWaiters.isEmpty { operationWaiters.removeFirst().resume() }
        }
        return try await body()
    }

    /// What the host's HELLO tells the guest besides its clock and entropy.
    var hostFacts: [String: String] { configuration.hostname.map { ["hostname": $0] } ?? [:] }

    /// Whether `name` can be a guest's host name: 1-63 letters, digits, '-' and '.', not starting with either.
    public static func isHostname(_ name: String) -> Bool {
        guard let first = name.utf8.first, name.utf8.count <= 63, first != UInt8(ascii: "-"), first != UInt8(ascii: ".")
        else { return false }
        return name.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b == UInt8(ascii: "-")
                || b == UInt8(ascii: ".")
        }
    }

    /// ``start()`` inside an operation.
    func startMachine() async throws {
        if isRunning { return }
        if let name = configuration.hostname, !Self.isHostname(name) {
            throw VMExecError(
                .invalidRequest,
                "'\(name)' cannot be a host name: 1-63 letters, digits, '-' and '.', not starting with '-' or '.'")
        }
        if let entrypoint = configuration.entrypoint, entrypoint.first?.isEmpty ?? true {
            throw VMExecError(.invalidRequest, "the entry point needs a program name")
        }
        if let dead = running { cleanUp(dead) }
        let images = try configuration.images ?? GuestImages.locate(architecture: configuration.architecture)
        try HostFolder.check(configuration.folders)
        let folders = try configuration.folders.enumerated().map { i, f in try f.machineFolder(tag: "vxf-\(i)") }
        // Refused before boot: a damaged shard, a requirement unmet, a clash, another architecture.
        try await Self.vet(desiredShards, verifying: desiredShards, architecture: configuration.architecture)
        // And a store held by another guest, or made over another lower.
        if let store = configuration.store, storeLease == nil {
            do {
                let lease = try store.lock(holder: "a vmexec sandbox")
                try lease.checkLower(
                    try StoreAttachment.lower(rootfs: images.rootfs, shards: desiredShards),
                    allowChange: configuration.allowLowerChange)
                storeLease = lease
            } catch let error as StoreError {
                throw VMExecError(error.code == .locked ? .storeBusy : .storeRefused, error.message, cause: error)
            }
        }
        // Shards are hot-plugged after boot, so the saved boot state serves any set of them; a
        // warm state has this set attached already (see Sandbox+Boot), with these serials.
        let planned =
            warmStateEligible
            ? warmShards.enumerated().map { i, shard in
                ShardAttachment(shard: shard, serial: "vxs-\(nextDrive + i)")
            } : []
        let spec = MachineSpec(
            architecture: configuration.architecture, images: images,
            memoryMiB: configuration.memoryMiB, cpus: configuration.cpus,
            network: configuration.network, extraArguments: configuration.extraQEMUArguments,
            disks: planned.map(\.disk), folders: folders)
        do {
            running = try await boot(spec)
        } catch {
            releaseStore()
            throw error
        }
        attachments = []
        do {
            if running!.warm {
                attachments = planned
                nextDrive += planned.count
                if let saved = running!.warmZygote { adoptZygote(saved) }
                try await plugAll(lateShards)
            } else if let state = running!.warmToSave {
                try await plugAll(warmShards)
                try await saveWarmState(state)
                try await plugAll(lateShards)
            } else {
                if let lease = storeLease { try await plugStore(lease) }
                try await plugAll(desiredShards)
            }
            try await mountFolders(folders)
        } catch {
            if let r = running { cleanUp(r) }
            throw error
        }
        logger.info(
            "guest up",
            metadata: [
                "accelerator": "\(running!.machine.accelerator)", "kernel": "\(guestInfo["kernel"] ?? "?")",
                "start": "\(running!.warm ? "restored warm state" : running!.restored ? "restored saved state" : "cold boot")",
            ])
    }

    func machineEnded(generation: Int, _ ending: MachineEnding) {
        guard let r = running, r.generation == generation else { return }
        r.client.close(.closed(ending.description))
        releaseStore()
        logger.notice("guest stopped: \(ending)")
    }

    func cleanUp(_ r: Running) {
        r.client.close(.closed("the sandbox was stopped"))
        r.machine.kill()
        releaseStore()
        r.machine.discard()
        running = nil
    }

    /// Ends every process, syncs and powers the guest off (QEMU is killed if
    /// it does not exit within `timeout`).
    public func shutdown(timeout: Duration = .seconds(10)) async {
        await exclusively { await stopMachine(timeout: timeout) }
    }

    /// ``shutdown(timeout:)`` inside an operation.
    func stopMachine(timeout: Duration = .seconds(10)) async {
        guard let r = running else { return }
        running = nil
        if r.machine.ending == nil {
            let asked = Task { try? await r.client.shutdown() }
            if await r.machine.waitForExit(timeout: timeout) == nil {
                logger.warning("guest did not power off within \(timeout); killing its machine")
            }
            asked.cancel()
        }
        cleanUp(r)
    }

    /// Drops the channel and connects to the same guest again, as a restarted
    /// host would. The init ends the processes of the old session (the warm
    /// Python interpreter, a service, is adopted again); calls waiting on
    /// them fail. The guest itself keeps running.
    public func reconnect(timeout: Duration = .seconds(10)) async throws {
        guard let r = running, r.machine.ending == nil else {
            throw VMExecError(.notRunning, "the sandbox is not running; call start() first")
        }
        r.client.close(.closed("the host reconnected"))
        do {
            let (client, hello) = try await r.machine.connect(timeout: timeout, hostFacts: hostFacts, logger: logger)
            var again = Running(generation: r.generation, machine: r.machine, client: client, hello: hello, restored: r.restored)
            again.warm = r.warm
            running = again
            readoptZygote()
        } catch {
            throw await Self.explain(error, machine: r.machine)
        }
    }

    // MARK: commands

    func requireRunning() throws -> Running {
        guard let r = running, r.machine.ending == nil else {
            throw VMExecError(.notRunning, "the sandbox is not running; call start() first")
        }
        return r
    }

    /// Runs a command and returns its collected output and status.
    public func exec(_ command: Command) async throws -> ExecResult {
        let (process, stdin, machine) = try await startProcess(command)
        let policy = resolvedPolicy(command)
        do {
            let out = try await process.collect(limit: configuration.outputLimit)
            return ExecResult(
                stdout: out.stdout, stderr: out.stderr, termination: out.status.termination,
                usage: Usage(out.status), stdoutTruncated: out.stdoutTruncated,
                stderrTruncated: out.stderrTruncated, stdinTruncated: stdin.truncated,
                user: policy.user, limits: policy.limits, privateTmp: policy.privateTmp)
        } catch {
            throw await Self.explain(error, machine: machine)
        }
    }

    /// Runs a command and streams its output as it is produced, then its exit.
    public func stream(_ command: Command) async throws -> ExecStream {
        let (process, stdin, machine) = try await startProcess(command)
        return ExecStream(process: process, stdin: stdin, hasTerminal: command.terminal != nil) { error in
            await Self.explain(error, machine: machine)
        }
    }

    /// Round trip through the guest init (liveness check, latency probe).
    public func ping() async throws {
        guard let r = running else { throw VMExecError(.notRunning, "the sandbox is not running; call start() first") }
        do { try await r.client.ping() } catch { throw await Self.explain(error, machine: r.machine) }
    }

    /// Who runs a command, within which limits and with which /tmp: its own
    /// settings, else the sandbox's.
    private func resolvedPolicy(_ command: Command) -> (user: GuestUser, limits: Limits, privateTmp: Bool) {
        (
            command.user ?? configuration.user,
            command.limits ?? configuration.limits ?? .defaults(guestMemoryMiB: configuration.memoryMiB),
            command.privateTmp ?? configuration.privateTmp
        )
    }

    /// Starts a command's process in the guest and feeds its stdin.
    private func startProcess(_ command: Command) async throws -> (RemoteProcess, StdinFeed, any GuestMachine) {
        guard let r = running else { throw VMExecError(.notRunning, "the sandbox is not running; call start() first") }
        let (user, limits, privateTmp) = resolvedPolicy(command)
        var base = ShardSet.environment(attachments.map(\.shard), base: configuration.environment)
        if base["HOME"] == nil { base["HOME"] = user.home }
        let env = base.merging(command.environment) { _, new in new }
        let policy = ExecPolicy(
            uid: user.ids.uid, gid: user.ids.gid, memoryMax: limits.memoryBytes ?? 0,
            pidsMax: limits.processes ?? 0, openFiles: limits.openFiles ?? 0,
            cpuSeconds: limits.cpuSeconds ?? 0, privateTmp: privateTmp, service: command.service,
            tmpBytes: privateTmp ? limits.tmpBytes : nil)
        var timeoutMs: UInt32 = 0
        if let t = command.timeout {
            let ms = t.components.seconds * 1000 + t.components.attoseconds / 1_000_000_000_000_000
            timeoutMs = UInt32(clamping: max(1, ms))
        }
        var hasStdin = command.terminal != nil
        if case .none = command.stdin {} else { hasStdin = true }
        let arguments = command.throughEntrypoint ? (configuration.entrypoint ?? []) + command.arguments : command.arguments
        let request = ExecRequest(
            arguments: arguments, environment: env.map { "\($0.key)=\($0.value)" }.sorted(),
            workingDirectory: command.workingDirectory, timeoutMilliseconds: timeoutMs, hasStdin: hasStdin,
            policy: policy, terminal: command.terminal)
        let process: RemoteProcess
        do {
            process = try await r.client.exec(request)
        } catch {
            throw await Self.explain(error, machine: r.machine)
        }
        let feed = StdinFeed(limit: limits.stdinBytes)
        switch command.stdin {
        case .none, .caller:
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
        return (process, feed, r.machine)
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
    static func explain(_ error: any Error, machine: any GuestMachine) async -> any Error {
        guard let e = error as? ProtocolError else { return error }
        switch e {
        case .execFailed(let reply):
            let code: VMExecError.Code =
                reply.code == .workdir
                ? .invalidRequest
                : reply.errno == ENOENT || reply.errno == ENOTDIR ? .commandNotFound : .notExecutable
            return VMExecError(code, reply.message, cause: e)
        case .invalidRequest(let why):
            return VMExecError(.invalidRequest, why, cause: e)
        case .closed(let why):
            if let ending = await machine.waitForExit(timeout: .milliseconds(500)) {
                // The guest's last words (a kernel panic, the init's complaint) say why.
                let last = machine.lastWords(lines: 12)
                return VMExecError(
                    .guestStopped,
                    "the guest stopped: \(ending); call start() to boot a fresh one"
                        + (last.isEmpty ? "" : "\n\(last)"), cause: e)
            }
            return VMExecError(
                .guestStopped, "the channel to the guest closed (\(why)); call start() to boot a fresh one", cause: e)
        default:
            return VMExecError(.protocolError, e.description, cause: e)
        }
    }
}
