import CLibvirt
import Foundation

/// Guests as libvirt domains on a libvirt host: the second implementation of
/// the machine seam beside ``QEMUHypervisor``. A domain is made transient
/// (`virDomainCreateXML`), so a guest that ends leaves nothing defined; its
/// control port is reached through libvirt itself (`virDomainOpenChannel`),
/// so a remote guest needs no port, tunnel or agent of its own.
///
/// What it cannot do yet throws ``VMExecError/Code/unsupported`` before
/// anything starts: host folders and the user-mode network need the QEMU
/// machine.
public struct LibvirtHypervisor: GuestHypervisor {
    public let connection: LibvirtConnection
    /// The QEMU binary on the libvirt host; nil lets libvirt pick the one for the architecture.
    public var emulator: String?

    public init(connection: LibvirtConnection, emulator: String? = nil) {
        self.connection = connection
        self.emulator = emulator
    }

    /// KVM only when asked for: libvirt's own capabilities decide whether it
    /// can; `auto` runs TCG, which every host has.
    public func plan(_ choice: AcceleratorChoice, for spec: MachineSpec) async -> AcceleratorPlan {
        choice == .kvm ? .use(.kvm, reason: nil) : .use(.tcg, reason: nil)
    }

    public func launch(
        _ spec: MachineSpec, accelerator: Accelerator, restoring: URL?,
        onExit: @escaping @Sendable (MachineEnding) -> Void
    ) async throws -> any GuestMachine {
        guard spec.folders.isEmpty else {
            throw VMExecError(
                .unsupported, "host folders are shared with the QEMU machine only; run this sandbox without a libvirt host")
        }
        guard !spec.network.enabled else {
            throw VMExecError(
                .unsupported, "the user-mode network is set up by the QEMU machine only; run this sandbox without a libvirt host")
        }
        if let lost = connection.lost { throw VMExecError(.launchFailed, lost) }
        let name = "vmexec-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let local = connection.isLocal
        let runDirectory = local ? try RunDirectory.make() : nil
        let consoleLog =
            runDirectory?.appendingPathComponent("console.log").path ?? "/var/log/libvirt/qemu/\(name).console.log"
        var files = DomainDescription.HostFiles(
            kernel: spec.images.kernel.path, initramfs: spec.images.initramfs.path, rootfs: spec.images.rootfs.path)
        for disk in spec.disks { files.disks[disk.serial] = disk.file }
        let xml = DomainDescription(
            name: name, spec: spec, accelerator: accelerator, files: files, consoleLog: consoleLog, emulator: emulator
        ).xml
        let machine = LibvirtDomain(
            name: name, connection: connection, accelerator: accelerator, runDirectory: runDirectory,
            consoleLog: consoleLog, firstUnit: spec.disks.count, onExit: onExit)
        connection.watch(domain: name) { machine.ended($0) }
        let connection = self.connection
        do {
            let domain = try await connection.call { () throws(VMExecError) -> LibvirtHandle in
                guard let domain = virDomainCreateXML(connection.pointer, xml, 0) else {
                    throw VMExecError(
                        .launchFailed,
                        "libvirt on \(connection.uri) could not start the guest: \(LibvirtEventLoop.lastError("no reason given"))"
                    )
                }
                return LibvirtHandle(pointer: domain)
            }
            machine.started(domain)
        } catch {
            connection.unwatch(domain: name)
            if let runDirectory { try? FileManager.default.removeItem(at: runDirectory) }
            throw error
        }
        return machine
    }
}

extension LibvirtConnection {
    /// Whether the daemon runs on this machine (a URI without a host), so
    /// that the files of a spec can be given to it by their paths here.
    public var isLocal: Bool {
        guard let components = URLComponents(string: uri) else { return false }
        return (components.host ?? "").isEmpty
    }
}
