import Foundation
import Synchronization

/// QEMU as a child process of this host: the ``GuestHypervisor`` vmexec
/// ships. The command line comes from ``MachineProfile`` (per
/// architecture), the accelerator from ``AcceleratorProbe``; each machine
/// gets a private run directory (control socket, monitor socket, logs).
public struct QEMUHypervisor: GuestHypervisor {
    /// The QEMU binary; nil picks `qemu-system-<arch>` from PATH.
    public var binary: String?

    public init(binary: String? = nil) {
        self.binary = binary
    }

    func profile(_ spec: MachineSpec) -> MachineProfile {
        MachineProfile(
            architecture: spec.architecture, qemuBinary: binary, memoryMiB: spec.memoryMiB,
            cpus: spec.cpus, network: spec.network.enabled)
    }

    /// KVM is tried for real (see ``AcceleratorProbe``): the HLT probe first,
    /// then a cached verdict of an earlier trial boot on this host boot, else
    /// a trial boot with a short deadline.
    public func plan(_ choice: AcceleratorChoice, for spec: MachineSpec) async -> AcceleratorPlan {
        switch choice {
        case .tcg: return .use(.tcg, reason: nil)
        case .kvm: return .use(.kvm, reason: nil)
        case .auto:
            guard spec.architecture == .host else { return .use(.tcg, reason: "a \(spec.architecture) guest on this host") }
            if let why = await AcceleratorProbe.quickCheck() {
                return .use(.tcg, reason: "KVM not usable (\(why))")
            }
            switch AcceleratorProbe.cachedVerdict(qemu: profile(spec).qemuBinary) {
            case false?: return .use(.tcg, reason: "KVM hung on this host before (cached verdict)")
            case true?: return .use(.kvm, reason: nil)
            case nil: return .trial(.kvm, deadline: AcceleratorProbe.trialDeadline, fallback: .tcg)
            }
        }
    }

    public func recordTrial(_ accelerator: Accelerator, for spec: MachineSpec, usable: Bool, reason: String) {
        guard accelerator == .kvm else { return }
        AcceleratorProbe.record(usable: usable, qemu: profile(spec).qemuBinary, reason: reason)
    }

    /// The command line (run-directory paths as a placeholder) and the image
    /// files and QEMU binary by path, size and modification time: a state
    /// saved by one of these machines restores into any other.
    /// None for a machine with host folders: QEMU cannot save a vhost-user-fs device's state.
    public func stateKey(for spec: MachineSpec, accelerator: Accelerator) -> String? {
        guard spec.folders.isEmpty else { return nil }
        let profile = profile(spec)
        let placeholder = URL(fileURLWithPath: "/@RUN@")
        var text = arguments(profile, spec, accelerator, runDirectory: placeholder).joined(separator: "\u{1}")
        let files =
            [
                spec.images.kernel.path, spec.images.initramfs.path, spec.images.rootfs.path,
                QEMUProcess.find(profile.qemuBinary) ?? profile.qemuBinary,
            ] + spec.disks.map(\.file)
        text += BootState.identities(of: files)
        return BootState.key(of: text)
    }

    public func launch(
        _ spec: MachineSpec, accelerator: Accelerator, restoring: URL?,
        onExit: @escaping @Sendable (MachineEnding) -> Void
    ) async throws -> any GuestMachine {
        let profile = profile(spec)
        let dir = try RunDirectory.make()
        var servers: [FolderServer] = []
        // A virtiofsd that ends under a running guest ends its machine (its log says why).
        let qemu = Mutex<QEMUProcess?>(nil)
        do {
            for folder in spec.folders {
                servers.append(try await FolderServer(folder, runDirectory: dir) { qemu.withLock { $0 }?.kill() })
            }
            // Forwards are outside the state key: they are the host's side of the network only.
            var args =
                arguments(profile, spec, accelerator, runDirectory: dir, folders: servers)
                + (try spec.network.backendArguments())
            if let state = restoring {
                args += ["-incoming", "exec:cat \(Self.shellQuoted(state.path))"]
            }
            let process = try QEMUProcess(
                binary: profile.qemuBinary, arguments: args,
                logPath: dir.appendingPathComponent("qemu.log").path
            ) { ending in
                onExit(ending.machineEnding)
            }
            qemu.withLock { $0 = process }
            return QEMUMachine(process: process, runDirectory: dir, accelerator: accelerator, folderServers: servers)
        } catch {
            for server in servers { server.kill() }
            try? FileManager.default.removeItem(at: dir)
            throw error
        }
    }

    private func arguments(
        _ profile: MachineProfile, _ spec: MachineSpec, _ accelerator: Accelerator,
        runDirectory dir: URL, folders: [FolderServer] = []
    ) -> [String] {
        let paths = MachineProfile.Paths(
            images: spec.images, controlSocket: QEMUMachine.controlSocket(in: dir).path,
            consoleLog: QEMUMachine.consoleLog(in: dir).path,
            monitorSocket: QEMUMachine.monitorSocket(in: dir).path,
            folderSockets: folders.map { ($0.folder.tag, $0.socket) })
        return profile.arguments(accelerator: accelerator, paths: paths) + spec.disks.flatMap(Self.diskArguments)
            + spec.extraArguments
    }

    /// A disk present from the start: the block node and SCSI device that hot-plugging makes,
    /// in QEMU's JSON option syntax (no escaping of the file name).
    static func diskArguments(_ disk: MachineDisk) -> [String] {
        let objects = QEMUMachine.diskObjects(disk)
        func json(_ object: [String: any Sendable]) -> String {
            let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
            return String(decoding: data ?? Data(), as: UTF8.self)
        }
        return ["-blockdev", json(objects.node), "-device", json(objects.device)]
    }

    /// QEMU runs `exec:` URIs through /bin/sh; this quotes any path for it.
    static func shellQuoted(_ s: String) -> String {
        "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
