import Foundation

/// The libvirt domain XML for a ``MachineSpec``: the same guest as
/// ``MachineProfile`` gives QEMU, on the machine types libvirt knows (q35 on
/// x86_64, `virt` on aarch64; libvirt has no `microvm`), with its virtio
/// devices on PCI(e) instead of virtio-mmio.
///
/// What the init needs is kept exactly: the root file system as a read-only
/// virtio disk with serial `vmexec-root`, a virtio-scsi controller for the
/// shards and the store (found by serial), the virtio-serial port
/// `org.vmexec.ctl` (a UNIX channel libvirt opens to us as a stream), the
/// console on the first serial port, and `panic=-1` with every end of the
/// guest destroying the domain, so a dying init ends it at once.
struct DomainDescription {
    var name: String
    var spec: MachineSpec
    var accelerator: Accelerator
    /// Where the files of the spec are on the libvirt host (the same paths
    /// for a local host; storage-pool volumes for a remote one).
    var files: HostFiles
    /// Where the guest's console is written (a local host); nil: a pty nobody reads
    /// (a remote host, where a file could only pile up).
    var consoleLog: String?
    /// The QEMU binary on the libvirt host; nil lets libvirt choose.
    var emulator: String?

    /// The paths of a spec's files as the libvirt host sees them.
    struct HostFiles {
        var kernel: String
        var initramfs: String
        var rootfs: String
        /// By serial: the disks the machine has from its start.
        var disks: [String: String] = [:]
    }

    /// The control port's name: the init opens it by this name.
    static let controlPort = "org.vmexec.ctl"

    var xml: String {
        let arch = spec.architecture
        let machine = arch == .x86_64 ? "q35" : "virt"
        var x = "<domain type='\(accelerator == .kvm ? "kvm" : "qemu")'>\n"
        x += "  <name>\(Self.escaped(name))</name>\n"
        x += "  <memory unit='MiB'>\(spec.memoryMiB)</memory>\n"
        x += "  <vcpu>\(spec.cpus)</vcpu>\n"
        x += "  <os>\n"
        x += "    <type arch='\(arch.rawValue)' machine='\(machine)'>hvm</type>\n"
        x += "    <kernel>\(Self.escaped(files.kernel))</kernel>\n"
        x += "    <initrd>\(Self.escaped(files.initramfs))</initrd>\n"
        let profile = MachineProfile(architecture: arch, memoryMiB: spec.memoryMiB, cpus: spec.cpus)
        x += "    <cmdline>\(Self.escaped(profile.kernelCommandLine(accelerator: accelerator)))</cmdline>\n"
        x += "  </os>\n"
        x += "  <features>\n"
        if arch == .x86_64 { x += "    <acpi/>\n" } else { x += "    <gic version='2'/>\n" }
        // TCG's translation cache, bounded as for the QEMU machine (MachineProfile says why).
        if accelerator == .tcg { x += "    <tcg><tb-cache unit='MiB'>128</tb-cache></tcg>\n" }
        x += "  </features>\n"
        x += cpu
        // Every end of the guest ends the domain: the host learns of it from the lifecycle event.
        x += "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n"
        x += "  <devices>\n"
        if let emulator { x += "    <emulator>\(Self.escaped(emulator))</emulator>\n" }
        x += "    <disk type='file' device='disk'>\n"
        x += "      <driver name='qemu' type='raw'/>\n"
        x += "      <source file='\(Self.escaped(files.rootfs))'/>\n"
        x += "      <target dev='vda' bus='virtio'/>\n"
        x += "      <readonly/>\n"
        x += "      <serial>vmexec-root</serial>\n"
        x += "    </disk>\n"
        x += "    <controller type='scsi' index='0' model='virtio-scsi'/>\n"
        for (unit, disk) in spec.disks.enumerated() {
            x += Self.diskXML(disk, file: files.disks[disk.serial] ?? disk.file, unit: unit, indent: "    ")
        }
        x += "    <controller type='usb' model='none'/>\n"
        if let consoleLog {
            x += "    <serial type='file'>\n      <source path='\(Self.escaped(consoleLog))'/>\n"
            x += "      <target port='0'/>\n    </serial>\n"
        } else {
            x += "    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n"
        }
        x += "    <channel type='unix'>\n      <target type='virtio' name='\(Self.controlPort)'/>\n    </channel>\n"
        x += "    <memballoon model='none'/>\n"
        x += "  </devices>\n"
        if !spec.extraArguments.isEmpty {
            x += "  <qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"
            for argument in spec.extraArguments { x += "    <qemu:arg value='\(Self.escaped(argument))'/>\n" }
            x += "  </qemu:commandline>\n"
        }
        x += "</domain>\n"
        return x
    }

    /// The guest CPU: as the QEMU machine's (MachineProfile says why these).
    private var cpu: String {
        if accelerator == .kvm { return "  <cpu mode='host-passthrough'/>\n" }
        switch spec.architecture {
        case .x86_64:
            return "  <cpu mode='maximum'>\n    <feature policy='disable' name='erms'/>\n"
                + "    <feature policy='disable' name='fsrm'/>\n  </cpu>\n"
        case .aarch64:
            return "  <cpu mode='custom' match='exact'>\n    <model fallback='forbid'>neoverse-n1</model>\n  </cpu>\n"
        }
    }

    /// A SCSI disk on the shard controller, at `unit` (also its device name
    /// `sd…`): the same XML plugs it, and unplugs it again.
    static func diskXML(_ disk: MachineDisk, file: String, unit: Int, indent: String = "") -> String {
        var x = "\(indent)<disk type='file' device='disk'>\n"
        x += "\(indent)  <driver name='qemu' type='raw'/>\n"
        x += "\(indent)  <source file='\(escaped(file))'/>\n"
        x += "\(indent)  <target dev='\(deviceName(unit: unit))' bus='scsi'/>\n"
        x += "\(indent)  <address type='drive' controller='0' bus='0' target='0' unit='\(unit)'/>\n"
        if disk.readOnly { x += "\(indent)  <readonly/>\n" }
        x += "\(indent)  <serial>\(escaped(disk.serial))</serial>\n"
        x += "\(indent)</disk>\n"
        return x
    }

    /// sda, sdb, … sdz, sdaa, …: the device name libvirt wants for a SCSI unit.
    static func deviceName(unit: Int) -> String {
        let letters = Array("abcdefghijklmnopqrstuvwxyz")
        var n = unit
        var name = ""
        repeat {
            name = String(letters[n % 26]) + name
            n = n / 26 - 1
        } while n >= 0
        return "sd" + name
    }

    /// Text made safe for XML content and single-quoted attributes.
    static func escaped(_ text: String) -> String {
        var out = ""
        for c in text {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "'": out += "&apos;"
            case "\"": out += "&quot;"
            default: out.append(c)
            }
        }
        return out
    }
}
