import Foundation
import SerialChannel
import SquashMounts

/// The shards of a sandbox: attached at start, and attached or detached
/// while the guest runs.
extension Sandbox {
    /// The shards given to the guest, attached or to be attached at ``start()``.
    public var shards: [Shard] { desiredShards }

    func newAttachment(_ shard: Shard) -> ShardAttachment {
        defer { nextDrive += 1 }
        return ShardAttachment(shard: shard, serial: "vxs-\(nextDrive)")
    }

    /// The layers request for these attachments: layer shards, bottom first.
    static func layersRequest(_ attachments: [ShardAttachment]) -> DriveRequest {
        let order = ShardSet.layers(attachments.map(\.shard))
        return .layers(order.compactMap { shard in attachments.first { $0.shard == shard }?.serial })
    }

    /// Mounts the machine's host folders in the guest, each at its guest path in its mode.
    func mountFolders(_ folders: [MachineFolder]) async throws {
        let r = try requireRunning()
        for (folder, wanted) in zip(folders, configuration.folders) {
            do {
                try await r.client.request(.folder(tag: folder.tag, target: wanted.guestPath, mode: wanted.wireMode))
            } catch {
                throw VMExecError(
                    .folderRefused,
                    "the guest could not mount the host folder \(folder.hostPath) at \(wanted.guestPath): "
                        + "\((error as? ProtocolError)?.description ?? "\(error)")",
                    cause: error as? any VMExecFailure)
            }
        }
    }

    func plugAll(_ shards: [Shard]) async throws {
        guard !shards.isEmpty else { return }
        let r = try requireRunning()
        for shard in shards {
            let a = newAttachment(shard)
            try await r.machine.plug(a.disk)
            attachments.append(a)
            if case .mount(let target) = shard.manifest.placement {
                do {
                    try await r.client.request(.mount(serial: a.serial, target: target))
                } catch {
                    throw await Self.driveError(error, shard: shard, machine: r.machine)
                }
            }
        }
        if attachments.contains(where: \.isLayer) {
            do {
                try await r.client.request(Self.layersRequest(attachments))
            } catch {
                throw VMExecError(
                    .shardRefused,
                    "the guest could not stack the layer shards: \((error as? ProtocolError)?.description ?? "\(error)")",
                    cause: error as? any VMExecFailure)
            }
        }
    }

    /// Attaches a shard to the running guest without a reboot: verified,
    /// checked against the attached ones, hot-plugged as a read-only disk,
    /// then mounted (or stacked as a layer, which needs no command running).
    /// Later starts attach it too.
    public func attach(_ shard: Shard) async throws {
        try await exclusively { try await attachNow(shard) }
    }

    private func attachNow(_ shard: Shard) async throws {
        let r = try requireRunning()
        try await Self.vet(desiredShards + [shard], verifying: [shard], architecture: configuration.architecture)
        // The warm interpreter restarts with the new set's preloads (and a layer restacks only
        // while no command runs).
        await stopZygote()
        let a = newAttachment(shard)
        try await r.machine.plug(a.disk)
        do {
            switch shard.manifest.placement {
            case .mount(let target): try await r.client.request(.mount(serial: a.serial, target: target))
            case .layer: try await r.client.request(Self.layersRequest(attachments + [a]))
            }
        } catch {
            try? await r.machine.unplug(a.disk)
            throw await Self.driveError(error, shard: shard, machine: r.machine)
        }
        attachments.append(a)
        desiredShards.append(shard)
        logger.info("shard attached", metadata: ["shard": "\(shard.label)", "drive": "\(a.serial)"])
    }

    /// Detaches the shard named `name` from the running guest. Refused
    /// (``VMExecError/Code/shardBusy``, naming the user) while a process uses it;
    /// a layer shard only while no command runs.
    public func detach(_ name: String) async throws {
        try await exclusively { try await detachNow(name) }
    }

    private func detachNow(_ name: String) async throws {
        let r = try requireRunning()
        guard let a = attachments.first(where: { $0.shard.manifest.name == name }) else {
            let names = attachments.map(\.shard.manifest.name).joined(separator: ", ")
            throw VMExecError(.invalidRequest, "no shard named \(name) is attached (attached: \(names.isEmpty ? "none" : names))")
        }
        let rest = attachments.filter { $0.serial != a.serial }
        await stopZygote()  // its open files would keep the shard busy
        do {
            try await r.client.request(a.isLayer ? Self.layersRequest(rest) : .unmount(serial: a.serial))
        } catch {
            throw await Self.driveError(error, shard: a.shard, machine: r.machine)
        }
        attachments = rest
        desiredShards.removeAll { $0.manifest.name == name }
        try await r.machine.unplug(a.disk)
        logger.info("shard detached", metadata: ["shard": "\(a.shard.label)"])
    }

    /// Checks `shards` against each other and the guest's architecture, and
    /// verifies those in `verifying` (sha256 against the manifest, every table readable) and
    /// checks them against each other and the guest's architecture, off the
    /// cooperative thread pool. Throws `.shardRefused` naming the shard and why.
    static func vet(_ shards: [Shard], verifying: [Shard], architecture: GuestArchitecture) async throws {
        try await offPool {
            do throws(ShardError) {
                try ShardSet.check(shards, guestArchitecture: architecture.rawValue)
                for shard in verifying { try shard.verify(deep: false) }
            } catch {
                throw VMExecError(.shardRefused, error.message, cause: error)
            }
        }
    }

    /// The guest's answer to a drive request, as a VMExecError that says what
    /// to do; any other channel failure (the guest stopped) as ``explain(_:machine:)`` says it.
    static func driveError(_ error: any Error, shard: Shard, machine: any GuestMachine) async -> any Error {
        if case .refused(let reply)? = error as? ProtocolError {
            let code: VMExecError.Code = reply.code == .busy ? .shardBusy : .shardRefused
            return VMExecError(code, "shard \(shard.label): \(reply.message)", cause: error as? ProtocolError)
        }
        return await explain(error, machine: machine)
    }
}
