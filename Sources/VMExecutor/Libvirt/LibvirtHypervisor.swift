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
        // Fixed length (16 hex digits): the name is patched into saved states' copies.
        let name = "vmexec-" + String(format: "%016llx", UInt64.random(in: 0...UInt64.max))
        let runDirectory = connection.isLocal ? try RunDirectory.make() : nil
        let consoleLog = runDirectory?.appendingPathComponent("console.log").path
        let files = try await hostFiles(spec)
        let xml = description(spec, accelerator, name: name, consoleLog: consoleLog, files: files).xml
        let machine = LibvirtDomain(
            name: name, connection: connection, accelerator: accelerator, runDirectory: runDirectory,
            consoleLog: consoleLog, disks: spec.disks.map(\.serial), onExit: onExit)
        connection.watch(domain: name) { machine.ended($0) }
        let connection = self.connection
        do {
            let domain: LibvirtHandle
            if let restoring {
                guard let runDirectory else {
                    throw VMExecError(.unsupported, "saved states are kept for local libvirt hosts only")
                }
                domain = try await restore(restoring, name: name, consoleLog: consoleLog ?? "", in: runDirectory)
            } else {
                domain = try await connection.call { () throws(VMExecError) -> LibvirtHandle in
                    guard let domain = virDomainCreateXML(connection.pointer, xml, 0) else {
                        throw VMExecError(
                            .launchFailed,
                            "libvirt on \(connection.uri) could not start the guest: \(LibvirtEventLoop.lastError("no reason given"))"
                        )
                    }
                    return LibvirtHandle(pointer: domain)
                }
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

extension LibvirtHypervisor {
    func description(
        _ spec: MachineSpec, _ accelerator: Accelerator, name: String, consoleLog: String?,
        files: DomainDescription.HostFiles? = nil
    ) -> DomainDescription {
        DomainDescription(
            name: name, spec: spec, accelerator: accelerator, files: files ?? Self.localFiles(of: spec),
            consoleLog: consoleLog, emulator: emulator)
    }

    /// The spec's files by their paths on this machine.
    static func localFiles(of spec: MachineSpec) -> DomainDescription.HostFiles {
        var files = DomainDescription.HostFiles(
            kernel: spec.images.kernel.path, initramfs: spec.images.initramfs.path, rootfs: spec.images.rootfs.path)
        for disk in spec.disks { files.disks[disk.serial] = disk.file }
        return files
    }

    /// The spec's files as the host sees them: the same paths on a local host;
    /// volumes of its `vmexec` pool on a remote one (``HostVolumes``).
    func hostFiles(_ spec: MachineSpec) async throws -> DomainDescription.HostFiles {
        guard !connection.isLocal else { return Self.localFiles(of: spec) }
        let volumes = connection.volumes
        var files = DomainDescription.HostFiles(
            kernel: try await volumes.hostPath(for: spec.images.kernel.path),
            initramfs: try await volumes.hostPath(for: spec.images.initramfs.path),
            rootfs: try await volumes.hostPath(for: spec.images.rootfs.path))
        for disk in spec.disks { files.disks[disk.serial] = try await connection.remoteDisk(disk) }
        return files
    }

    /// States are kept for local hosts (the state file is a file here), for
    /// machines without host folders or network, keyed by the domain's XML
    /// (name and console as placeholders), the host, and the files by path,
    /// size and modification time.
    public func stateKey(for spec: MachineSpec, accelerator: Accelerator) -> String? {
        Self.stateKey(uri: connection.uri, emulator: emulator, for: spec, accelerator: accelerator)
    }

    /// The state key of a machine on the host at `uri`, without a connection to it: a
    /// sandbox placed on a host asks it before it knows the host's connection of the moment.
    public static func stateKey(uri: String, emulator: String?, for spec: MachineSpec, accelerator: Accelerator)
        -> String?
    {
        guard LibvirtConnection.isLocal(uri), spec.folders.isEmpty, !spec.network.enabled else { return nil }
        var text = "libvirt\u{1}\(uri)\u{1}\(emulator ?? "")\u{1}"
        text +=
            DomainDescription(
                name: "@NAME@", spec: spec, accelerator: accelerator, files: localFiles(of: spec), consoleLog: "@CONSOLE@",
                emulator: emulator
            ).xml
        text += BootState.identities(
            of: [spec.images.kernel.path, spec.images.initramfs.path, spec.images.rootfs.path] + spec.disks.map(\.file))
        return BootState.key(of: text)
    }

    /// Restores a saved state as a new domain `name`: from a private copy with a UUID of
    /// its own and the new name (``SavedDomainImage``), its XML given the new console.
    private func restore(_ state: URL, name: String, consoleLog: String, in runDirectory: URL) async throws(VMExecError)
        -> LibvirtHandle
    {
        let copy = runDirectory.appendingPathComponent("restore.state").path
        defer { unlink(copy) }
        try SavedDomainImage.copy(state.path, to: copy, uuid: UUID(), name: name)
        let connection = self.connection
        return try await connection.call { () throws(VMExecError) -> LibvirtHandle in
            guard
                let saved = virDomainSaveImageGetXMLDesc(
                    connection.pointer, copy, UInt32(VIR_DOMAIN_SAVE_IMAGE_XML_SECURE.rawValue))
            else {
                throw VMExecError(
                    .launchFailed, "libvirt cannot read the saved state: \(LibvirtEventLoop.lastError("no reason"))")
            }
            var xml = String(cString: saved)
            free(saved)
            xml = Self.renamed(xml, consoleLog: consoleLog)
            guard virDomainRestoreFlags(connection.pointer, copy, xml, UInt32(VIR_DOMAIN_SAVE_RUNNING.rawValue)) == 0 else {
                throw VMExecError(
                    .launchFailed, "libvirt could not restore the saved state: \(LibvirtEventLoop.lastError("no reason given"))")
            }
            guard let domain = virDomainLookupByName(connection.pointer, name) else {
                throw VMExecError(
                    .launchFailed, "the restored domain \(name) is gone: \(LibvirtEventLoop.lastError("no reason"))")
            }
            return LibvirtHandle(pointer: domain)
        }
    }

    /// A saved domain's XML with its console in a new file (not part of its ABI).
    static func renamed(_ xml: String, consoleLog: String) -> String {
        var out = xml
        // The console file appears on the serial port and on the console that mirrors it.
        if let serial = out.range(of: "<serial type='file'>"),
            let source = out.range(of: "<source path='", range: serial.upperBound..<out.endIndex),
            let end = out.range(of: "'", range: source.upperBound..<out.endIndex)
        {
            let old = String(out[source.upperBound..<end.lowerBound])
            out = out.replacingOccurrences(of: "path='\(old)'", with: "path='\(DomainDescription.escaped(consoleLog))'")
        }
        return out
    }
}

extension LibvirtConnection {
    /// A disk's file on a remote host: read-only ones (shards) as volumes; a store's image
    /// is written by its guest and read by the store's tools here, so it stays local for now.
    func remoteDisk(_ disk: MachineDisk) async throws -> String {
        guard disk.readOnly else {
            throw VMExecError(
                .unsupported,
                "a store's guest runs on a local libvirt host or the QEMU machine; \(uri) is remote")
        }
        return try await volumes.hostPath(for: disk.file)
    }

    /// Whether the daemon runs on this machine (a URI without a host), so
    /// that the files of a spec can be given to it by their paths here.
    public var isLocal: Bool { Self.isLocal(uri) }

    /// Whether `uri` names a libvirt daemon on this machine (no host part).
    public static func isLocal(_ uri: String) -> Bool {
        guard let components = URLComponents(string: uri) else { return false }
        return (components.host ?? "").isEmpty
    }
}
