import Foundation
import SerialChannel
import SquashMounts

/// How a sandbox gets a running guest from its hypervisor: the accelerator
/// plan, a saved boot state restored when there is one (a cold boot when it
/// fails), the init's hello within the deadline, and a state saved after a
/// cold boot. Only ``GuestHypervisor`` and ``GuestMachine`` are used here.
extension Sandbox {
    /// Boots under the hypervisor's accelerator plan: a trial that does not
    /// reach the init in time is recorded and followed by the fallback.
    func boot(_ spec: MachineSpec) async throws -> Running {
        let hypervisor = self.hypervisor
        switch await hypervisor.plan(configuration.accelerator, for: spec) {
        case .use(let accelerator, let reason):
            if let reason { logger.info("\(reason); using \(accelerator)") }
            return try await boot(spec, accelerator, deadline: configuration.bootTimeout)
        case .trial(let accelerator, let deadline, let fallback):
            do {
                let r = try await boot(spec, accelerator, deadline: deadline)
                hypervisor.recordTrial(accelerator, for: spec, usable: true, reason: "trial boot said hello")
                return r
            } catch let e as VMExecError where e.code == .bootTimeout || e.code == .launchFailed {
                let why = "a guest under \(accelerator) did not reach its init within \(deadline) (\(e.code))"
                hypervisor.recordTrial(accelerator, for: spec, usable: false, reason: why)
                logger.warning("\(why); falling back to \(fallback)")
                return try await boot(spec, fallback, deadline: configuration.bootTimeout)
            }
        }
    }

    /// Whether this start may restore (or save) a warm state: saved states on, shards to
    /// attach, and no store (whose content a saved state would not follow).
    var warmStateEligible: Bool {
        configuration.reuseBootState && configuration.reuseWarmState && storeLease == nil && configuration.store == nil
            && !warmShards.isEmpty && configuration.folders.isEmpty
    }

    /// The shards a warm state holds: all but program shards mounted at their own path. A
    /// program changes with every upload, so a saved machine per version would be saved once
    /// and rarely restored (and 100 MB each); it is hot-plugged after the restore instead.
    var warmShards: [Shard] { desiredShards.filter { !Self.isLate($0) } }

    /// Shards attached after the warm state's restore (see ``warmShards``).
    var lateShards: [Shard] { desiredShards.filter(Self.isLate) }

    static func isLate(_ shard: Shard) -> Bool {
        guard shard.manifest.kind == .program, case .mount = shard.manifest.placement else { return false }
        return true
    }

    /// With disks in the spec (the shards, see ``startMachine()``): restores the warm state saved
    /// after a start with them attached; else boots without them (the boot state) and says
    /// where to save one once they are.
    private func boot(_ spec: MachineSpec, _ accelerator: Accelerator, deadline: Duration) async throws -> Running {
        guard !spec.disks.isEmpty, let key = hypervisor.stateKey(for: spec, accelerator: accelerator) else {
            return try await bootFresh(spec, accelerator, deadline: deadline)
        }
        let warm = BootState(
            key: BootState.key(of: key + warmStateVariant),
            directory: configuration.bootStateDirectory ?? BootState.defaultDirectory)
        if warm.exists {
            do {
                var r = try await launch(spec, accelerator, deadline: deadline, restoring: warm)
                r.warm = true
                r.warmZygote = warm.readNotes(PythonZygote.Saved.self)
                return r
            } catch {
                warm.remove()
                logger.warning("restoring the warm state failed; starting afresh: \(error)")
            }
        }
        var bare = spec
        bare.disks = []
        var r = try await bootFresh(bare, accelerator, deadline: deadline)
        r.warmToSave = warm
        return r
    }

    /// Saves the state of a guest whose shards were just attached (and whose warm interpreter
    /// listens, when one is wanted), for later starts with the same ones; a failure only costs
    /// those starts the attaching.
    func saveWarmState(_ state: BootState) async throws {
        let zygote = await prepareWarmState()
        guard let r = running else { return }
        try await saveBootState(r, state, what: "warm state", notes: zygote.flatMap { try? JSONEncoder().encode($0) })
    }

    /// Restores the saved boot state when there is one (falling back to a
    /// cold boot if it fails), else boots and saves a state for next time.
    private func bootFresh(_ spec: MachineSpec, _ accelerator: Accelerator, deadline: Duration) async throws -> Running {
        let state =
            configuration.reuseBootState
            ? hypervisor.stateKey(for: spec, accelerator: accelerator).map {
                BootState(key: $0, directory: configuration.bootStateDirectory ?? BootState.defaultDirectory)
            } : nil
        if let state, state.exists {
            do {
                return try await launch(spec, accelerator, deadline: deadline, restoring: state)
            } catch {
                state.remove()  // a state that does not restore is of no use
                logger.warning("restoring the saved boot state failed; booting afresh: \(error)")
            }
        }
        let r = try await launch(spec, accelerator, deadline: deadline, restoring: nil)
        if let state { try await saveBootState(r, state, what: "boot state") }
        return r
    }

    /// Saves the just-booted guest's state. Not saving only costs the next
    /// start time; a machine that could not run on after the save ends this
    /// start with an error.
    private func saveBootState(_ r: Running, _ state: BootState, what: String, notes: Data? = nil) async throws {
        do {
            try await r.client.ping()  // nothing of this session is in flight when saved
            let started = ContinuousClock.now
            try await state.save(r.machine, notes: notes)
            logger.info("\(what) saved", metadata: ["file": "\(state.file.path)", "took": "\(ContinuousClock.now - started)"])
        } catch {
            if r.machine.ending != nil {
                r.client.close(.closed("the guest stopped"))
                r.machine.discard()
                throw VMExecError(
                    .launchFailed, "the guest stopped while its \(what) was saved: \(error)",
                    cause: error as? any VMExecFailure)
            }
            logger.warning("could not save the \(what) (the next start does without): \(error)")
        }
        try await r.client.ping()  // the guest answers again
    }

    /// Launches a machine and waits for the init's hello. Every failure ends
    /// the machine and says what the hypervisor and the guest said last.
    private func launch(
        _ spec: MachineSpec, _ accelerator: Accelerator, deadline: Duration, restoring state: BootState?
    ) async throws -> Running {
        nextGeneration += 1
        let generation = nextGeneration
        let machine = try await hypervisor.launch(spec, accelerator: accelerator, restoring: state?.file) { [weak self] ending in
            Task { await self?.machineEnded(generation: generation, ending) }
        }
        let clock = ContinuousClock()
        let started = clock.now
        func fail(_ code: VMExecError.Code, _ what: String) -> VMExecError {
            machine.kill()
            let last = machine.lastWords(lines: 8)
            machine.discard()
            return VMExecError(code, last.isEmpty ? what : "\(what)\n\(last)")
        }
        while true {
            if let ending = machine.ending {
                throw fail(.launchFailed, "\(ending) before the guest booted (\(accelerator))")
            }
            let remaining = deadline - (clock.now - started)
            if remaining <= .zero {
                throw fail(.bootTimeout, "the guest did not say hello within \(deadline) (\(accelerator))")
            }
            do {
                let (client, hello) = try await machine.connect(timeout: remaining, hostFacts: hostFacts, logger: logger)
                if let bootError = hello.fields["boot_error"], !bootError.isEmpty {
                    client.close(.closed("boot failed"))
                    throw fail(.bootFailed, "the guest init could not set up the guest: \(bootError)")
                }
                return Running(
                    generation: generation, machine: machine, client: client, hello: hello,
                    restored: state != nil)
            } catch let e as ProtocolError {
                if case .handshakeTimeout = e {
                    throw fail(.bootTimeout, "the guest did not say hello within \(deadline) (\(accelerator))")
                }
                if case .versionMismatch = e { throw fail(.bootFailed, e.description) }
                if let ending = await machine.waitForExit(timeout: .milliseconds(200)) {
                    throw fail(.launchFailed, "\(ending) before the guest booted (\(accelerator))")
                }
                throw fail(.protocolError, e.description)
            } catch let e as VMExecError {
                throw e
            } catch {
                // The channel is not there yet: try again.
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}
