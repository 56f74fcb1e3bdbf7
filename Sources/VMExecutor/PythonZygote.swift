import Foundation
import SquashMounts

/// What a sandbox's warm interpreter imported, once it listens for jobs.
public struct PythonWarmth: Sendable, Equatable {
    /// The modules the attached shards ask to preload (``ShardManifest/preload``), in order.
    public var preloaded: [String]
    /// Those that did not import, with the error; jobs import them themselves.
    public var failed: [String: String]
}

/// A sandbox's warm interpreter, its zygote (images/runner/vmexec_runner/zygote.py): a root
/// Python process that has imported the shards' preloads and the runner, and forks a child per
/// job. A job is still a command: the SDK shard's static `zygote-client` (images/zygote-client.c),
/// started by the init with the job's isolation, hands its descriptors, arguments and
/// environment to the zygote, whose child takes that isolation before it runs the runner.
///
/// Jobs go through it only once it said it listens; before that, after it ended, and on an SDK
/// shard without it, they start cold. It restarts at the next job after it ended or the shards
/// changed.
enum PythonZygote {
    static let socket = "/run/vmexec/python.sock"
    static let client = "/usr/lib/vmexec/zygote-client"
    static let runner = ["python3", "-m", "vmexec_runner"]

    /// Where a sandbox's zygote is.
    enum State {
        case stopped
        /// Started on this machine generation; waiters get the outcome.
        case starting(generation: Int, Task<Result<PythonWarmth, VMExecError>, Never>)
        /// Listening, as guest process `pid`; `ended` finishes when it has ended (its own stream,
        /// or a watch on a zygote adopted after a restore or a reconnect). `epoch` tells this
        /// watch's end from an earlier one's for the same process.
        case ready(generation: Int, pid: UInt32, warmth: PythonWarmth, epoch: Int, ended: Task<Void, Never>)
        /// It could not start on this generation (an SDK shard without it, a failed start):
        /// not tried again until the shards change or the guest restarts.
        case unavailable(generation: Int, reason: String)
    }

    /// Whether a sandbox with these shards gets a zygote: one of them offers Python.
    static func wanted(_ shards: [Shard]) -> Bool {
        shards.contains { $0.manifest.provides.contains("python3") }
    }

    /// What a warm state saved with a listening zygote records of it, beside the state file.
    struct Saved: Codable {
        var pid: UInt32
        var preloaded: [String]
        var failed: [String: String]
    }

    /// The modules to preload: every attached shard's, in attachment order, each once.
    static func preloads(_ shards: [Shard]) -> [String] {
        var seen = Set<String>()
        return shards.flatMap { $0.manifest.preload ?? [] }.filter { seen.insert($0).inserted }
    }

    /// The zygote's own command: root, the shared /tmp, no timeout, no stdin; the sandbox's
    /// memory and process limits but no CPU-time limit, which a process that lives as long as
    /// the guest would reach. Its children take each job's limits.
    static func command(_ modules: [String], limits: Limits) -> Command {
        var limits = limits
        limits.cpuSeconds = nil
        var command = Command(
            runner.dropLast() + ["vmexec_runner.zygote", socket] + modules, stdin: .none, user: .root, limits: limits,
            privateTmp: false)
        // It outlives the channel's session: a warm state saved with it restores it running.
        command.service = true
        command.throughEntrypoint = false
        return command
    }

    /// Reads the zygote's output up to its ready line; a failure when it ended first, saying why.
    static func awaitReady(_ exec: ExecStream) async -> Result<PythonWarmth, VMExecError> {
        var line: [UInt8] = []
        var said: [UInt8] = []
        do {
            for try await event in exec {
                switch event {
                case .stdout(let bytes):
                    line += bytes
                    guard let end = line.firstIndex(of: UInt8(ascii: "\n")) else {
                        // Guest output: a ready line is a few hundred bytes, never unbounded.
                        if line.count > 64 << 10 {
                            try? await exec.signal(SIGKILL)
                            return .failure(
                                VMExecError(.protocolError, "the warm interpreter wrote 64 KiB without its ready line"))
                        }
                        continue
                    }
                    struct Ready: Decodable { var failed: [String: String] }
                    guard let ready = try? JSONDecoder().decode(Ready.self, from: Data(line[..<end])) else {
                        return .failure(VMExecError(.protocolError, "the warm interpreter said \(line.prefix(200))"))
                    }
                    return .success(PythonWarmth(preloaded: [], failed: ready.failed))
                case .stderr(let bytes):
                    if said.count < 4096 { said += bytes.prefix(4096 - said.count) }
                case .exit(let termination, _):
                    let text = String(decoding: said, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                    return .failure(
                        VMExecError(
                            .unsupported,
                            "the warm interpreter ended (\(termination)) before it listened\(text.isEmpty ? "" : ": \(text.suffix(600))")"
                        ))
                }
            }
        } catch {
            return .failure(VMExecError(.guestStopped, "the warm interpreter's stream ended: \(error)"))
        }
        return .failure(VMExecError(.protocolError, "the warm interpreter's stream ended without its exit"))
    }
}

extension Sandbox {
    /// Starts the sandbox's warm Python interpreter (its zygote) if it is not running, and waits
    /// until it listens: later Python jobs fork from it, with the attached shards' preloads
    /// (e.g. numpy) already imported. Python jobs start it themselves (without waiting) when
    /// ``SandboxConfiguration/warmPython`` is on; call this to have it ready before the first.
    public func warmPython() async throws -> PythonWarmth {
        let r = try requireRunning()
        switch zygote {
        case .ready(let generation, _, let warmth, _, _) where generation == r.generation:
            return warmth
        case .unavailable(let generation, let reason) where generation == r.generation:
            throw VMExecError(.unsupported, reason)
        case .starting(let generation, let task) where generation == r.generation:
            return try await task.value.get()
        default:
            return try await startZygote(r).value.get()
        }
    }

    /// The command for a runner job: through the zygote when it listens (else as given, a cold
    /// start, and the zygote started for later jobs when the configuration asks for it).
    func pythonCommand(_ command: Command) -> Command {
        guard command.arguments.starts(with: PythonZygote.runner), let r = running else { return command }
        switch zygote {
        case .ready(let generation, _, _, _, _) where generation == r.generation:
            var warm = command
            warm.arguments = [PythonZygote.client, PythonZygote.socket] + command.arguments
            return warm
        case .starting(let generation, _) where generation == r.generation:
            return command
        case .unavailable(let generation, _) where generation == r.generation:
            return command
        default:
            if configuration.warmPython { _ = startZygote(r) }
            return command
        }
    }

    /// What a warm state of this sandbox holds besides its shards: the zygote, when one is
    /// wanted (part of the state's key).
    var warmStateVariant: String {
        let shards = desiredShards
        guard configuration.warmPython, PythonZygote.wanted(shards) else { return "" }
        return "\u{3}python-zygote:" + PythonZygote.preloads(shards).joined(separator: ",")
    }

    /// Before a warm state is saved: the zygote started and listening, when one is wanted
    /// (a failure leaves it out; jobs then start it as usual).
    func prepareWarmState() async -> PythonZygote.Saved? {
        guard configuration.warmPython, PythonZygote.wanted(desiredShards) else { return nil }
        do {
            let warmth = try await warmPython()
            guard case .ready(_, let pid, _, _, _) = zygote else { return nil }
            return PythonZygote.Saved(pid: pid, preloaded: warmth.preloaded, failed: warmth.failed)
        } catch {
            logger.warning("the warm state is saved without a warm interpreter: \(error)")
            return nil
        }
    }

    /// After a warm state was restored, or the host reconnected: the zygote runs (the init kept
    /// it across the session change, a service command), and jobs use it at once; a watch says
    /// when it ends.
    func adoptZygote(_ saved: PythonZygote.Saved) {
        guard let r = running else { return }
        let warmth = PythonWarmth(preloaded: saved.preloaded, failed: saved.failed)
        let pid = saved.pid
        zygoteEpoch += 1
        let epoch = zygoteEpoch
        let ended = Task {
            var watch = Command([PythonZygote.client, "--watch", "\(pid)"], stdin: .none, user: .root, privateTmp: false)
            watch.throughEntrypoint = false
            watch.limits = Limits()
            let gone: Bool
            if let exec = try? await self.stream(watch) {
                gone = await Self.drain(exec)
            } else {
                gone = true
            }
            if gone { self.zygoteGone(epoch: epoch, ending: "it ended (watched)", said: "") }
        }
        zygote = .ready(generation: r.generation, pid: pid, warmth: warmth, epoch: epoch, ended: ended)
        logger.info("python zygote restored with the warm state", metadata: ["pid": "\(pid)"])
    }

    /// After the host reconnected: the zygote's stream went with the old session, its process
    /// did not; it is adopted again. One still starting is left to the next (which takes over).
    func readoptZygote() {
        guard case .ready(_, let pid, let warmth, _, _) = zygote else {
            if case .starting = zygote { zygote = .stopped }
            return
        }
        adoptZygote(PythonZygote.Saved(pid: pid, preloaded: warmth.preloaded, failed: warmth.failed))
    }

    /// Waits for a command's end; false when its stream failed instead (the channel closed).
    private static func drain(_ exec: ExecStream) async -> Bool {
        do {
            for try await event in exec { if case .exit = event { return true } }
        } catch {}
        return false
    }

    /// Starts the zygote on the running guest; its task ends once it listens or failed.
    @discardableResult
    func startZygote(_ r: Running) -> Task<Result<PythonWarmth, VMExecError>, Never> {
        let modules = PythonZygote.preloads(attachments.map(\.shard))
        let limits = configuration.limits ?? .defaults(guestMemoryMiB: configuration.memoryMiB)
        let generation = r.generation
        let task = Task<Result<PythonWarmth, VMExecError>, Never> {
            let exec: ExecStream
            do {
                exec = try await self.stream(PythonZygote.command(modules, limits: limits))
            } catch {
                let failure = error as? VMExecError ?? VMExecError(.protocolError, "\(error)")
                self.zygoteEnded(generation: generation, failure: failure)
                return .failure(failure)
            }
            var outcome = await PythonZygote.awaitReady(exec)
            if case .success(var warmth) = outcome {
                warmth.preloaded = modules.filter { warmth.failed[$0] == nil }
                outcome = .success(warmth)
                self.zygoteReady(generation: generation, exec: exec, warmth: warmth)
            } else if case .failure(let failure) = outcome {
                self.zygoteEnded(generation: generation, failure: failure)
            }
            return outcome
        }
        zygote = .starting(generation: generation, task)
        logger.info("python zygote starting", metadata: ["preload": "\(modules.joined(separator: ","))"])
        return task
    }

    private func zygoteReady(generation: Int, exec: ExecStream, warmth: PythonWarmth) {
        guard case .starting(generation, _) = zygote else {
            // Stopped (the shards changed) while it started: it goes.
            Task { try? await exec.signal(SIGTERM) }
            return
        }
        // Its output after the ready line is only its end: then jobs start cold until it restarts.
        let pid = exec.pid
        zygoteEpoch += 1
        let epoch = zygoteEpoch
        let ended = Task {
            var said: [UInt8] = []
            var ending = "its stream closed"
            do {
                for try await event in exec {
                    if case .stderr(let bytes) = event, said.count < 4096 { said += bytes.prefix(4096 - said.count) }
                    if case .exit(let termination, _) = event { ending = "\(termination)" }
                }
            } catch {}
            self.zygoteGone(epoch: epoch, ending: ending, said: String(decoding: said, as: UTF8.self))
        }
        zygote = .ready(generation: generation, pid: pid, warmth: warmth, epoch: epoch, ended: ended)
        logger.info(
            "python zygote ready",
            metadata: ["preloaded": "\(warmth.preloaded.joined(separator: ","))", "failed": "\(warmth.failed)"])
    }

    private func zygoteEnded(generation: Int, failure: VMExecError) {
        guard case .starting(generation, _) = zygote else { return }
        // A guest that stopped meanwhile is no reason to give up on the next one.
        zygote = failure.code == .guestStopped ? .stopped : .unavailable(generation: generation, reason: failure.message)
        logger.warning("python zygote unavailable; Python jobs start cold", metadata: ["why": "\(failure.message)"])
    }

    private func zygoteGone(epoch: Int, ending: String, said: String) {
        guard case .ready(_, _, _, let current, _) = zygote, current == epoch else { return }  // re-adopted since
        zygote = .stopped
        logger.notice("python zygote ended", metadata: ["ending": "\(ending)", "said": "\(said.suffix(600))"])
    }

    /// Stops the zygote before the shards change (its preloads would be stale, its open files
    /// keep a detached shard busy). It stops listening at once and ends when its running jobs
    /// have; those are not disturbed. Waits up to `grace` for that.
    func stopZygote(grace: Duration = .seconds(2)) async {
        let state = zygote
        zygote = .stopped
        switch state {
        case .ready(_, let pid, _, _, let ended):
            try? await signal(pid: pid, SIGTERM)
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await ended.value }
                group.addTask { try? await Task.sleep(for: grace) }
                await group.next()
                group.cancelAll()
            }
        case .starting(_, let task):
            _ = await task.value  // once it listens, zygoteReady() finds it stopped and ends it
        default:
            break
        }
    }
}
