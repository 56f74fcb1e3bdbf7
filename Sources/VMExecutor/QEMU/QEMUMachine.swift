import Foundation
import Logging
import SerialChannel

/// A QEMU process running one guest: the control channel is a Unix socket
/// in its run directory, disks come and go over QMP, states are saved by a
/// migration into a file.
final class QEMUMachine: GuestMachine {
    let process: QEMUProcess
    let runDirectory: URL
    let accelerator: Accelerator
    /// The virtiofsd of each host folder; they end with QEMU, or are killed with it.
    let folderServers: [FolderServer]

    init(process: QEMUProcess, runDirectory: URL, accelerator: Accelerator, folderServers: [FolderServer] = []) {
        self.process = process
        self.runDirectory = runDirectory
        self.accelerator = accelerator
        self.folderServers = folderServers
    }

    static func controlSocket(in dir: URL) -> URL { dir.appendingPathComponent("ctl.sock") }
    static func monitorSocket(in dir: URL) -> URL { dir.appendingPathComponent("qmp.sock") }
    static func consoleLog(in dir: URL) -> URL { dir.appendingPathComponent("console.log") }

    var processID: Int32? { process.pid }
    var consoleLogPath: String? { Self.consoleLog(in: runDirectory).path }
    var ending: MachineEnding? { process.ending?.machineEnding }

    func waitForExit(timeout: Duration) async -> MachineEnding? {
        await process.waitForExit(timeout: timeout)?.machineEnding
    }

    /// Not there yet: QEMU has not created the socket, or is not listening on it.
    struct ChannelNotReady: Error {}

    func connect(timeout: Duration, hostFacts: [String: String], logger: Logger) async throws -> (ChannelClient, Hello) {
        let socket = Self.controlSocket(in: runDirectory).path
        guard FileManager.default.fileExists(atPath: socket) else { throw ChannelNotReady() }
        return try await ChannelClient.connect(
            unixSocket: socket, handshakeTimeout: timeout, hostFacts: hostFacts, logger: logger)
    }

    /// A connection to QEMU's monitor, one per operation (they are rare).
    private func monitor() async throws -> QMPClient {
        try await QMPClient.connect(path: Self.monitorSocket(in: runDirectory).path)
    }

    /// Block node and device ids of a disk, from its serial.
    static func ids(_ disk: MachineDisk) -> (node: String, device: String) {
        let node = disk.serial.replacingOccurrences(of: "-", with: "")
        return (node, node + "-dev")
    }

    /// The block node and SCSI device of a disk, as ``plug(_:)`` makes them (also given on the
    /// command line of a machine that has the disk from its start).
    static func diskObjects(_ disk: MachineDisk) -> (node: [String: any Sendable], device: [String: any Sendable]) {
        let (node, device) = ids(disk)
        return (
            [
                "driver": "raw", "node-name": node, "read-only": disk.readOnly,
                "file": ["driver": "file", "filename": disk.file, "read-only": disk.readOnly] as [String: any Sendable],
            ],
            [
                "driver": "scsi-hd", "bus": "\(MachineProfile.shardBus).0", "drive": node, "id": device,
                "serial": disk.serial,
            ]
        )
    }

    /// A SCSI disk on the guest's virtio-scsi bus (QMP blockdev-add, then
    /// device_add; the node goes again if the device fails). Guest flushes
    /// reach the host's file: QEMU's default cache mode turns each into an
    /// fdatasync of the image.
    func plug(_ disk: MachineDisk) async throws {
        let qmp = try await monitor()
        let (node, _) = Self.ids(disk)
        let objects = Self.diskObjects(disk)
        try await qmp.execute("blockdev-add", arguments: objects.node)
        do {
            try await qmp.execute("device_add", arguments: objects.device)
        } catch {
            _ = try? await qmp.execute("blockdev-del", arguments: ["node-name": node])
            throw error
        }
    }

    func unplug(_ disk: MachineDisk) async throws {
        let qmp = try await monitor()
        let (node, device) = Self.ids(disk)
        try await qmp.execute("device_del", arguments: ["id": device])
        // A SCSI disk leaves at once, but its block node may still be referenced a moment.
        var attempt = 0
        while true {
            do {
                try await qmp.execute("blockdev-del", arguments: ["node-name": node])
                return
            } catch {
                attempt += 1
                if attempt > 100 { throw error }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    /// A live migration into `file`, then the guest resumed. A guest left
    /// stopped is of no use: it is killed before this throws.
    func saveState(to file: URL) async throws {
        let qmp = try await monitor()
        try await qmp.execute("migrate", arguments: ["uri": "exec:cat > \(QEMUHypervisor.shellQuoted(file.path))"])
        let deadline = ContinuousClock.now + .seconds(60)
        var outcome = try await qmp.migrationStatus()
        while !["completed", "failed", "cancelled"].contains(outcome.status) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            outcome = try await qmp.migrationStatus()
        }
        do {
            try await Self.resume(qmp)
        } catch {
            kill()
            throw VMExecError(.launchFailed, "the guest could not be resumed after saving its state: \(error)")
        }
        guard outcome.status == "completed" else {
            throw VMExecError(
                .launchFailed, "the boot state was not saved: migration ended \(outcome.status): \(outcome.error ?? "timed out")")
        }
    }

    /// Resumes the guest that was just migrated from. QEMU reports the
    /// migration "completed" a moment before it has stopped the source
    /// ("postmigrate"), and a `cont` sent in that gap is overridden, leaving
    /// the guest paused for good; so: wait for a stopped state, `cont`, and
    /// check that it runs.
    private static func resume(_ qmp: QMPClient, timeout: Duration = .seconds(10)) async throws {
        let deadline = ContinuousClock.now + timeout
        var last = "unknown"
        while ContinuousClock.now < deadline {
            let state = try await qmp.runState()
            last = state.status
            if state.running { return }
            if ["postmigrate", "paused"].contains(state.status) { _ = try? await qmp.execute("cont") }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw VMExecError(.launchFailed, "QEMU's run state is still \(last)")
    }

    func kill() {
        process.kill()
        for server in folderServers { server.kill() }
    }

    func lastWords(lines: Int) -> String {
        var words: [String] = []
        let qemu = process.logTail(lines: lines)
        if !qemu.isEmpty { words.append("QEMU said:\n\(qemu)") }
        for server in folderServers {
            let said = server.logTail(lines: lines)
            if !said.isEmpty { words.append("virtiofsd of \(server.folder.hostPath) said:\n\(said)") }
        }
        let console = QEMUProcess.tail(of: Self.consoleLog(in: runDirectory).path, lines: lines)
        if !console.isEmpty { words.append("guest console (\(Self.consoleLog(in: runDirectory).path)):\n\(console)") }
        return words.joined(separator: "\n")
    }

    func discard() { try? FileManager.default.removeItem(at: runDirectory) }
}

extension QEMUProcess.Ending {
    var machineEnding: MachineEnding { MachineEnding(description, killed: signaled) }
}
