import Foundation
import Logging
import SerialChannel

/// What a sandbox asks of a hypervisor: launch machines for a spec.
///
/// The seam between ``Sandbox`` (policy: shards, stores, boot states,
/// errors) and whatever runs the guest (QEMU as a child process here; a
/// libvirt domain or another host next). A sandbox never names QEMU: it
/// launches through this protocol and drives the machine through
/// ``GuestMachine``. ``QEMUHypervisor`` is the implementation that ships.
public protocol GuestHypervisor: Sendable {
    /// How to honour `choice` for `spec` on this host: an accelerator to
    /// use, or one to try within a deadline before falling back to another.
    func plan(_ choice: AcceleratorChoice, for spec: MachineSpec) async -> AcceleratorPlan

    /// Remembers how a trial boot under `accelerator` went, so later starts
    /// on this host do not pay for a hung accelerator again.
    func recordTrial(_ accelerator: Accelerator, for spec: MachineSpec, usable: Bool, reason: String)

    /// A key naming the saved boot states valid for this spec and
    /// accelerator (every input of the machine: its images, devices,
    /// hypervisor binary); nil when this hypervisor cannot save states.
    func stateKey(for spec: MachineSpec, accelerator: Accelerator) -> String?

    /// Starts a machine: it boots, or loads the state in `restoring`. It
    /// returns once the machine runs; the init is reached later through
    /// ``GuestMachine/connect(timeout:logger:)``. `onExit` is called once,
    /// from any thread, when the machine ends however it ends.
    func launch(
        _ spec: MachineSpec, accelerator: Accelerator, restoring: URL?,
        onExit: @escaping @Sendable (MachineEnding) -> Void
    ) async throws -> any GuestMachine
}

/// One running guest machine, as a sandbox sees it.
///
/// Operations a machine cannot do throw ``VMExecError/Code/unsupported``
/// (the default implementations below), so a sandbox needs no branch per
/// hypervisor.
public protocol GuestMachine: AnyObject, Sendable {
    /// The accelerator it runs under.
    var accelerator: Accelerator { get }
    /// The host process that runs it, if there is one (diagnostics, crash tests).
    var processID: Int32? { get }
    /// Where the guest's console is written, if it is kept.
    var consoleLogPath: String? { get }
    /// How it ended, or nil while it runs.
    var ending: MachineEnding? { get }

    /// Waits until the machine has ended, at most `timeout`; how it ended, or nil.
    func waitForExit(timeout: Duration) async -> MachineEnding?

    /// Connects to the init over the control channel and exchanges HELLOs.
    /// Throws ``ProtocolError`` from the handshake, or another error while
    /// the channel is not there yet (the caller tries again until its deadline).
    /// `hostFacts` go into the host's HELLO info (the guest's `hostname`).
    func connect(timeout: Duration, hostFacts: [String: String], logger: Logger) async throws -> (ChannelClient, Hello)

    /// Hot-plugs `disk` (the guest finds it by its serial).
    func plug(_ disk: MachineDisk) async throws
    /// Removes `disk` once the guest has let go of it.
    func unplug(_ disk: MachineDisk) async throws

    /// Saves the running machine's state into `file` and lets it run on. If
    /// the machine cannot run on afterwards, it is ended (``ending`` is set)
    /// before this throws.
    func saveState(to file: URL) async throws

    /// Ends the machine at once.
    func kill()

    /// The last things the hypervisor and the guest's console said, for
    /// error messages ("" if nothing).
    func lastWords(lines: Int) -> String

    /// Removes what the machine kept on the host (sockets, logs); after kill.
    func discard()
}

extension GuestMachine {
    public var processID: Int32? { nil }
    public var consoleLogPath: String? { nil }

    public func plug(_ disk: MachineDisk) async throws {
        throw VMExecError(
            .unsupported, "this machine cannot hot-plug disks (\(disk.serial)); use a hypervisor that can, such as QEMU")
    }

    public func unplug(_ disk: MachineDisk) async throws {
        throw VMExecError(
            .unsupported, "this machine cannot unplug disks (\(disk.serial)); use a hypervisor that can, such as QEMU")
    }

    public func saveState(to file: URL) async throws {
        throw VMExecError(.unsupported, "this machine cannot save its state; set reuseBootState = false")
    }

    public func lastWords(lines: Int) -> String { "" }
    public func discard() {}
}

extension GuestHypervisor {
    public func plan(_ choice: AcceleratorChoice, for spec: MachineSpec) async -> AcceleratorPlan {
        .use(choice == .kvm ? .kvm : .tcg, reason: nil)
    }

    public func recordTrial(_ accelerator: Accelerator, for spec: MachineSpec, usable: Bool, reason: String) {}

    public func stateKey(for spec: MachineSpec, accelerator: Accelerator) -> String? { nil }
}

/// How to pick the accelerator for one start.
public enum AcceleratorPlan: Sendable, Equatable {
    /// Use this one (`reason` says why, when it is a fallback).
    case use(Accelerator, reason: String?)
    /// Boot under `accelerator` with a short deadline; if it does not say
    /// hello within it, record that and boot under `fallback`.
    case trial(Accelerator, deadline: Duration, fallback: Accelerator)
}

/// The machine a sandbox wants: what every hypervisor must honour.
public struct MachineSpec: Sendable {
    public var architecture: GuestArchitecture
    public var images: GuestImages
    public var memoryMiB: Int
    public var cpus: Int
    /// The network device and what it may reach.
    public var network: NetworkPolicy
    /// Hypervisor-specific arguments appended as they are (QEMU: its command line).
    public var extraArguments: [String]
    /// Disks the machine has from its start, as if plugged in this order (``GuestMachine/plug(_:)``):
    /// a state saved after they were plugged restores only into a machine that has them.
    public var disks: [MachineDisk]
    /// Host folders the machine shares with the guest from its start (virtiofs).
    public var folders: [MachineFolder]

    public init(
        architecture: GuestArchitecture, images: GuestImages, memoryMiB: Int, cpus: Int,
        network: NetworkPolicy = .none, extraArguments: [String] = [], disks: [MachineDisk] = [],
        folders: [MachineFolder] = []
    ) {
        self.architecture = architecture
        self.images = images
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        self.network = network
        self.extraArguments = extraArguments
        self.disks = disks
        self.folders = folders
    }
}

/// A host folder a machine shares with its guest, which mounts it by `tag`
/// (FOLDER requests). The host side must keep the guest inside the folder.
public struct MachineFolder: Sendable, Equatable {
    /// What the guest mounts it by (`vxf-N`).
    public var tag: String
    /// The folder, absolute and without symlinks.
    public var hostPath: String
    /// The host side refuses writes too, not only the guest's mount.
    public var readOnly: Bool

    public init(tag: String, hostPath: String, readOnly: Bool) {
        self.tag = tag
        self.hostPath = hostPath
        self.readOnly = readOnly
    }
}

/// A disk plugged into a running machine: a host file the guest finds by serial.
public struct MachineDisk: Sendable, Equatable {
    /// What the init looks the disk up by (`vxs-N` for shards, `vxstore` for the store).
    public var serial: String
    public var file: String
    public var readOnly: Bool

    public init(serial: String, file: String, readOnly: Bool) {
        self.serial = serial
        self.file = file
        self.readOnly = readOnly
    }
}

/// How a machine ended, in words a user can act on.
public struct MachineEnding: Sendable, CustomStringConvertible, Equatable {
    public var description: String
    /// Whether it was killed (by a signal, or by ``GuestMachine/kill()``), not powered off.
    public var killed: Bool

    public init(_ description: String, killed: Bool) {
        self.description = description
        self.killed = killed
    }
}
