import CVMExecHost
import Foundation

/// The QEMU command line for one guest: machine type, CPU, devices and the
/// kernel command line, chosen per architecture for a fast boot.
public struct MachineProfile: Sendable {
    public var architecture: GuestArchitecture
    public var qemuBinary: String
    public var memoryMiB: Int
    public var cpus: Int
    /// Whether the guest has a network device (its backend: ``NetworkPolicy``).
    public var network: Bool

    public init(architecture: GuestArchitecture, qemuBinary: String? = nil, memoryMiB: Int, cpus: Int, network: Bool = false) {
        self.architecture = architecture
        self.qemuBinary = qemuBinary ?? "qemu-system-\(architecture.rawValue)"
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        self.network = network
    }

    /// Paths a launch needs.
    public struct Paths: Sendable {
        public var images: GuestImages
        public var controlSocket: String
        public var consoleLog: String
        public var monitorSocket: String
        /// The vhost-user sockets of the machine's host folders (virtiofsd's), by tag.
        public var folderSockets: [(tag: String, socket: String)] = []
    }

    /// The id of the virtio-scsi controller that shards are hot-plugged on.
    static let shardBus = "vxscsi"
    /// The id of the network backend the network device uses.
    static let networkID = "vxnet"

    /// The kernel command line. `quiet` and a low loglevel because every
    /// console byte is an emulated UART write under TCG; `panic=-1` with
    /// QEMU's `-no-reboot` turns a kernel panic (or a dying init) into a QEMU
    /// exit the host notices at once.
    public func kernelCommandLine(accelerator: Accelerator) -> String {
        var args = [
            "quiet", "loglevel=3", "panic=-1", "rdinit=/init",
            // Crypto self-tests cost ~0.4 s of boot under TCG.
            "cryptomgr.notests", "random.trust_cpu=on",
        ]
        switch architecture {
        case .x86_64:
            args += ["console=ttyS0"]
            // microvm has no PIT or HPET to calibrate the TSC against and hangs on a
            // share of boots without this. Under TCG the guest TSC is the host's.
            let khz = HostCache.tscKHz
            if khz > 0 { args.append("tsc_early_khz=\(khz)") }
        case .aarch64:
            args += ["console=ttyAMA0"]
        }
        return args.joined(separator: " ")
    }

    /// The full argument vector (without the binary).
    public func arguments(accelerator: Accelerator, paths: Paths) -> [String] {
        var a: [String] = []
        switch architecture {
        case .x86_64:
            // microvm: no PCI, virtio-mmio devices described through ACPI (which
            // this kernel needs). Its PIT, PIC and RTC stay on: without them the
            // boot takes two seconds longer (measured), and the RTC gives the
            // guest the time of day.
            a += ["-machine", "microvm" + memoryBackend(paths)]
            // Without ERMS/FSRM: TCG emulates `rep movsb` slowly, which costs
            // port throughput and boot time.
            a += ["-cpu", accelerator == .kvm ? "host" : "max,erms=off,fsrm=off"]
        case .aarch64:
            // neoverse-n1, measured (`make bench ARCH=aarch64`, cpu_model_*): it boots as fast as
            // cortex-a57 (1.1-1.25 s) and runs a command 4-15% faster (two runs; the real-guest
            // suite took 307 s against 367 s), presumably through its LSE atomics, which replace
            // the exclusive load/store loops TCG emulates slowly. `-cpu max` boots 4x slower
            // (pointer authentication's QARMA); with `pauth-impdef=on` still 1.3-1.4x.
            a += ["-machine", "virt,gic-version=2" + memoryBackend(paths), "-cpu", accelerator == .kvm ? "host" : "neoverse-n1"]
        }
        // TCG's translation cache defaults to 1 GiB and is kept as it fills:
        // an idle guest then held more host memory than its own RAM (measured:
        // 713 MiB resident for a 512 MiB guest). 128 MiB holds the hot code.
        a += ["-accel", accelerator == .tcg ? "tcg,tb-size=128" : accelerator.rawValue]
        a += ["-m", "\(memoryMiB)", "-smp", "\(cpus)"]
        a += ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
        a += ["-kernel", paths.images.kernel.path, "-initrd", paths.images.initramfs.path]
        a += ["-append", kernelCommandLine(accelerator: accelerator)]
        a += ["-serial", "file:\(paths.consoleLog)"]
        a += [
            "-drive", "if=none,id=root,file=\(paths.images.rootfs.path),format=raw,readonly=on",
            "-device", "virtio-blk-device,drive=root,serial=vmexec-root",
        ]
        // Shards arrive later as SCSI disks on this controller: virtio-mmio devices
        // cannot be hot-plugged, but LUNs on a virtio-scsi bus can.
        a += ["-device", "virtio-scsi-device,id=\(Self.shardBus)"]
        a += [
            "-device", "virtio-serial-device",
            "-chardev", "socket,id=ctl,path=\(paths.controlSocket),server=on,wait=off",
            "-device", "virtserialport,chardev=ctl,name=org.vmexec.ctl",
        ]
        a += ["-qmp", "unix:\(paths.monitorSocket),server=on,wait=off"]
        if network { a += ["-device", "virtio-net-device,netdev=\(Self.networkID),mac=52:54:00:12:34:56"] }
        if !paths.folderSockets.isEmpty {
            a += ["-object", "memory-backend-memfd,id=\(Self.memoryID),size=\(memoryMiB)M,share=on"]
            // virtiofsd (libvhost-user) serves only modern virtio; virtio-mmio is legacy unless told.
            a += ["-global", "virtio-mmio.force-legacy=false"]
        }
        for (i, folder) in paths.folderSockets.enumerated() {
            a += [
                "-chardev", "socket,id=vxfs\(i),path=\(folder.socket)",
                "-device", "vhost-user-fs-device,chardev=vxfs\(i),tag=\(folder.tag)",
            ]
        }
        return a
    }

    /// The id of the guest RAM's memory backend when the machine shares folders.
    static let memoryID = "vxmem"

    /// virtiofsd maps the guest's RAM to move file data in and out of it, so a
    /// machine with host folders has its RAM in a shared memfd.
    func memoryBackend(_ paths: Paths) -> String {
        paths.folderSockets.isEmpty ? "" : ",memory-backend=\(Self.memoryID)"
    }
}
