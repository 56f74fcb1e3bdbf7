import CLibvirt
import Foundation
import Logging
import SerialChannel
import Synchronization

/// One guest running as a libvirt domain. Its control port comes through
/// libvirt as a stream (``ChannelBridge``), disks are attached and detached
/// as SCSI disks with `virDomainAttachDeviceFlags`, and its end is learnt
/// from the connection's lifecycle events (or the connection's loss).
final class LibvirtDomain: GuestMachine {
    let name: String
    let connection: LibvirtConnection
    let accelerator: Accelerator
    private let runDirectory: URL?
    private let consoleLog: String?
    private let onExit: @Sendable (MachineEnding) -> Void

    private struct State {
        var domain: LibvirtHandle?
        var bridge: ChannelBridge?
        /// The SCSI unit of each plugged disk, by serial.
        var units: [String: Int] = [:]
        var nextUnit: Int
    }
    private let state: Mutex<State>
    private let end = EndingSignal<MachineEnding>()

    init(
        name: String, connection: LibvirtConnection, accelerator: Accelerator, runDirectory: URL?, consoleLog: String?,
        disks: [String], onExit: @escaping @Sendable (MachineEnding) -> Void
    ) {
        self.name = name
        self.connection = connection
        self.accelerator = accelerator
        self.runDirectory = runDirectory
        self.consoleLog = consoleLog
        self.onExit = onExit
        // The spec's disks are at units 0, 1, … (DomainDescription); plugged ones follow.
        self.state = Mutex(
            State(units: Dictionary(uniqueKeysWithValues: disks.enumerated().map { ($1, $0) }), nextUnit: disks.count))
    }

    /// The domain exists (virDomainCreateXML returned it).
    func started(_ domain: LibvirtHandle) {
        state.withLock { $0.domain = domain }
        if ending != nil { destroy() }
    }

    /// The domain ended (lifecycle event, lost connection, or ``kill()``): once.
    func ended(_ ending: MachineEnding) {
        guard end.end(ending) else { return }
        state.withLock { $0.bridge }?.close(ending.description)
        onExit(ending)
    }

    var consoleLogPath: String? { consoleLog }
    var ending: MachineEnding? { end.ending }

    func waitForExit(timeout: Duration) async -> MachineEnding? { await end.wait(timeout: timeout) }

    private var domain: LibvirtHandle? { state.withLock { $0.domain } }

    func connect(timeout: Duration, hostFacts: [String: String], logger: Logger) async throws -> (ChannelClient, Hello) {
        if let ending { throw VMExecError(.guestStopped, ending.description) }
        guard let domain else { throw VMExecError(.notRunning, "the domain \(name) is not started") }
        let connection = self.connection
        let name = self.name
        let stream = try await connection.call { () throws(VMExecError) -> LibvirtHandle in
            guard let stream = virStreamNew(connection.pointer, UInt32(VIR_STREAM_NONBLOCK.rawValue)) else {
                throw VMExecError(.launchFailed, "libvirt: \(LibvirtEventLoop.lastError("cannot make a stream"))")
            }
            // FORCE: a new session takes the port over from an earlier one.
            guard
                virDomainOpenChannel(
                    domain.pointer, DomainDescription.controlPort, stream, UInt32(VIR_DOMAIN_CHANNEL_FORCE.rawValue))
                    == 0
            else {
                let why = LibvirtEventLoop.lastError("no reason given")
                virStreamFree(stream)
                throw VMExecError(.launchFailed, "libvirt cannot open the control channel of \(name): \(why)")
            }
            return LibvirtHandle(pointer: stream)
        }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            virStreamAbort(stream.pointer)
            virStreamFree(stream.pointer)
            throw VMExecError(
                .launchFailed, "cannot make a socketpair for the control channel: \(String(cString: strerror(errno)))")
        }
        let bridge = try ChannelBridge(stream: stream.pointer, socket: pair[1]) { _ in }
        let previous = state.withLock { s -> ChannelBridge? in
            defer { s.bridge = bridge }
            return s.bridge
        }
        previous?.close("a new session took the channel over")
        // A domain that ended meanwhile found no bridge to close (ended() reads it after the ending).
        if let ending { bridge.close(ending.description) }
        do {
            return try await ChannelClient.connect(
                socket: pair[0], handshakeTimeout: timeout, hostFacts: hostFacts, logger: logger)
        } catch {
            bridge.close("the handshake failed")
            throw error
        }
    }

    func plug(_ disk: MachineDisk) async throws {
        let unit = state.withLock { s -> Int in
            defer { s.nextUnit += 1 }
            return s.nextUnit
        }
        try await change(disk, unit: unit, attach: true)
        state.withLock { $0.units[disk.serial] = unit }
    }

    func unplug(_ disk: MachineDisk) async throws {
        guard let unit = state.withLock({ $0.units[disk.serial] }) else {
            throw VMExecError(.notFound, "no disk \(disk.serial) is plugged into \(name)")
        }
        try await change(disk, unit: unit, attach: false)
        _ = state.withLock { $0.units.removeValue(forKey: disk.serial) }
    }

    /// Attaches or detaches the disk's SCSI unit (the same XML does both) in the running domain.
    private func change(_ disk: MachineDisk, unit: Int, attach: Bool) async throws {
        guard let domain else { throw VMExecError(.notRunning, "the domain \(name) is not started") }
        let file = connection.isLocal ? disk.file : try await connection.remoteDisk(disk)
        let xml = DomainDescription.diskXML(disk, file: file, unit: unit)
        try await connection.call { () throws(VMExecError) in
            let flags = UInt32(VIR_DOMAIN_AFFECT_LIVE.rawValue)
            let done =
                attach
                ? virDomainAttachDeviceFlags(domain.pointer, xml, flags) : virDomainDetachDeviceFlags(domain.pointer, xml, flags)
            guard done == 0 else {
                throw VMExecError(
                    .launchFailed,
                    "libvirt could not \(attach ? "attach" : "detach") \(disk.serial): \(LibvirtEventLoop.lastError("no reason given"))"
                )
            }
        }
    }

    /// An external memory snapshot without metadata: libvirt pauses the guest, writes its
    /// state into `file` (a file `virDomainRestore` reads), and resumes it. The disks are
    /// left out (read-only shards; a machine with a store saves no state).
    func saveState(to file: URL) async throws {
        guard let domain else { throw VMExecError(.notRunning, "the domain \(name) is not started") }
        let devices = ["vda"] + state.withLock { $0.units.values.sorted() }.map(DomainDescription.deviceName)
        let xml =
            "<domainsnapshot><memory snapshot='external' file='\(DomainDescription.escaped(file.path))'/><disks>"
            + devices.map { "<disk name='\($0)' snapshot='no'/>" }.joined() + "</disks></domainsnapshot>"
        // libvirt writes the file itself and refuses one that exists.
        try? FileManager.default.removeItem(at: file)
        let name = self.name
        do {
            try await connection.call { () throws(VMExecError) in
                guard
                    let snapshot = virDomainSnapshotCreateXML(
                        domain.pointer, xml, UInt32(VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA.rawValue))
                else {
                    throw VMExecError(
                        .launchFailed, "libvirt could not save \(name): \(LibvirtEventLoop.lastError("no reason given"))")
                }
                virDomainSnapshotFree(snapshot)
            }
        } catch {
            // A guest left paused is of no use.
            let running = try? await connection.call { () -> Bool in
                var state: Int32 = 0
                var reason: Int32 = 0
                guard virDomainGetState(domain.pointer, &state, &reason, 0) == 0 else { return false }
                if state == Int32(VIR_DOMAIN_PAUSED.rawValue) { return virDomainResume(domain.pointer) == 0 }
                return state == Int32(VIR_DOMAIN_RUNNING.rawValue)
            }
            if running != true { kill() }
            throw error
        }
    }

    func kill() {
        connection.unwatch(domain: name)
        ended(MachineEnding("killed by vmexec", killed: true))
        destroy()
    }

    /// Destroys the domain without waiting (kill is synchronous; libvirt's call is a round trip).
    private func destroy() {
        guard let domain else { return }
        // The task holds the machine, so the domain's handle outlives the call.
        Task.detached { [self] in
            _ = try? await connection.call { virDomainDestroy(domain.pointer) }
        }
    }

    func lastWords(lines: Int) -> String {
        guard let consoleLog else { return "" }
        let console = QEMUProcess.tail(of: consoleLog, lines: lines)
        return console.isEmpty ? "" : "guest console (\(consoleLog)):\n\(console)"
    }

    func discard() {
        if let runDirectory { try? FileManager.default.removeItem(at: runDirectory) }
    }

    deinit {
        if let domain = state.withLock({ $0.domain }) { virDomainFree(domain.pointer) }
    }
}
