import Crypto
import Foundation
import PersistOverlay
import SquashMounts
import Testing
import VMExecTestSupport

@testable import VMExecutor

/// The test's own local libvirt host and one connection to it, made on first use.
actor LocalLibvirt {
    static let shared = LocalLibvirt()
    private var made: (LibvirtTestHost, LibvirtConnection)?

    func get() async throws -> (host: LibvirtTestHost, hypervisor: LibvirtHypervisor) {
        if let (host, connection) = made, connection.lost == nil { return (host, LibvirtHypervisor(connection: connection)) }
        let host = try LibvirtTestHost.start("local-\(getpid())")
        let connection = try await LibvirtConnection.open(host.uri)
        made = (host, connection)
        return (host, LibvirtHypervisor(connection: connection))
    }

    /// The shared guest configuration (images, the SDK shard) on the libvirt machine.
    func configuration() async throws -> SandboxConfiguration {
        var c = SharedGuest.configuration()
        c.hypervisor = try await get().hypervisor
        return c
    }
}

/// libvirt hosts can be started here (root, libvirtd installed): else the suite below is off, and this fails.
@Test("libvirt test hosts can be started (root, libvirtd from make deps)")
func libvirtHostsAvailable() {
    #expect(LibvirtTestHost.unavailable == nil, "\(LibvirtTestHost.unavailable ?? "")")
}

extension RealGuests {
    /// The core of the guest suite on the second machine behind the seam: a libvirt domain
    /// (q35) on a real libvirtd, its control port reached through virDomainOpenChannel.
    @Suite("The libvirt machine", .timeLimit(.minutes(10)), .enabled(if: LibvirtTestHost.unavailable == nil))
    struct LibvirtGuestTests {
        func started() async throws -> Sandbox {
            let sandbox = Sandbox(configuration: try await LocalLibvirt.shared.configuration(), logger: SharedGuest.logger())
            try await sandbox.start()
            return sandbox
        }

        @Test("a domain boots (q35 or virt, devices on PCI); commands run with exit codes, stdin and stdout via libvirt")
        func commands() async throws {
            // A cold boot (savedStates restores): q35's firmware delays the guest's reading of the
            // host's first HELLO by seconds; the fresh HELLO that follows sets its clock right.
            var c = try await LocalLibvirt.shared.configuration()
            c.reuseBootState = false
            let s = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await s.start()
            let guestNow = try await BootStateTests.guestSeconds(s)
            #expect(
                abs(guestNow - Date().timeIntervalSince1970) < 1,
                "guest clock off by \(guestNow - Date().timeIntervalSince1970) s")
            // libvirt's machine puts the control port on PCI; the QEMU machine's is on virtio-mmio.
            let port = try await s.exec(Command(["sh", "-c", "readlink -f /sys/class/virtio-ports/vport*p1/device"])).stdoutText
            #expect(port.contains("/pci"), "the control port's device: \(port)")
            #expect(try await s.exec(Command(["true"])).termination == .exited(0))
            #expect(try await s.exec(Command(["sh", "-c", "exit 7"])).termination == .exited(7))
            #expect(try await s.exec(Command(["python3", "-c", "print(6 * 7)"])).stdoutText == "42\n")
            // 4 MiB each way: the bridge's back pressure in both directions.
            let input = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
            let digest = SHA256.hash(data: input).map { String(format: "%02x", $0) }.joined()
            let hashed = try await s.exec(Command(["sha256sum"], stdin: .bytes(input)))
            #expect(hashed.stdoutText.hasPrefix(digest))
            let big = try await s.exec(Command(["head", "-c", "\(4 << 20)", "/dev/zero"]))
            #expect(big.stdout.count == 4 << 20)
            // Commands at once share the one stream.
            let outputs = try await withThrowingTaskGroup(of: String.self) { group in
                for i in 0..<8 { group.addTask { try await s.exec(Command(["sh", "-c", "sleep 0.2; echo \(i)"])).stdoutText } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(Set(outputs) == Set((0..<8).map { "\($0)\n" }))
            await s.shutdown()
        }

        @Test("shards attach and detach as SCSI disks through libvirt")
        func shards() async throws {
            let workshop = try ShardWorkshop()
            let s = try await started()
            try await s.attach(try workshop.libs(version: "2.5"))
            let read = try await s.exec(Command(["python3", "-c", "import vxlib; print(vxlib.VERSION)"]))
            #expect(read.stdoutText == "2.5\n", "\(read.stderrText)")
            try await s.detach("vxlib")
            #expect(try await s.exec(Command(["python3", "-c", "import vxlib"])).termination != .exited(0))
            try await s.attach(try workshop.libs(version: "2.6"))
            #expect(try await s.exec(Command(["python3", "-c", "import vxlib; print(vxlib.VERSION)"])).stdoutText == "2.6\n")
            await s.shutdown()
        }

        @Test("files go in and out; a store keeps the guest's changes across starts")
        func filesAndStore() async throws {
            let scratch = try ScratchStore()
            var c = try await LocalLibvirt.shared.configuration()
            c.store = scratch.store
            let first = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await first.start()
            let bytes = (0..<(1 << 20) + 17).map { UInt8(truncatingIfNeeded: $0 * 7) }
            try await first.writeFile("/home/vmexec/kept.bin", contents: bytes)
            #expect(try await first.readFile("/home/vmexec/kept.bin") == bytes)
            await first.shutdown()
            let second = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await second.start()
            #expect(try await second.readFile("/home/vmexec/kept.bin") == bytes, "the store kept the file")
            await second.shutdown()
        }

        @Test("a cold boot saves a state through libvirt; two domains restore it at once and each runs on its own")
        func savedStates() async throws {
            let dir = try BootStateTests.freshDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            var c = try await LocalLibvirt.shared.configuration()
            c.bootStateDirectory = dir
            let first = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await first.start()
            #expect(await first.restoredFromSavedState == false)
            // The boot state (before the SDK shard) and the warm state (after it) are saved.
            let states = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".state") }
            #expect(states.count == 2, "\(states)")
            #expect(try await first.exec(Command(["echo", "after save"])).stdoutText == "after save\n")
            await first.shutdown()
            try await Task.sleep(for: .seconds(1))  // restored guests must not wake in the past
            let configuration = c
            let restored = try await withThrowingTaskGroup(of: (Bool, String, Double).self) { group in
                for _ in 0..<2 {
                    group.addTask {
                        let s = Sandbox(configuration: configuration, logger: SharedGuest.logger())
                        try await s.start()
                        let warm = await s.restoredFromWarmState
                        let random = try await s.exec(Command(["sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"])).stdoutText
                        // The guest's clock against the host's while it is read (not after the
                        // rest: a shutdown under load takes seconds).
                        let before = Date().timeIntervalSince1970
                        let now = try await BootStateTests.guestSeconds(s)
                        let offset = now - (before + Date().timeIntervalSince1970) / 2
                        let python = try await s.exec(Command(["python3", "-c", "print(6 * 7)"])).stdoutText
                        await s.shutdown()
                        return (warm && python == "42\n", random, offset)
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(restored.allSatisfy { $0.0 }, "both restored the warm state and ran Python")
            #expect(restored[0].1 != restored[1].1, "two guests restored from one state drew the same random bytes")
            #expect(restored.allSatisfy { abs($0.2) < 3 }, "guest clocks: \(restored.map(\.2))")
        }

        @Test("QEMU killed under libvirt mid-command: the call fails within a second, and a fresh start works")
        func killedGuest() async throws {
            let (host, _) = try await LocalLibvirt.shared.get()
            let s = try await started()
            let running = Task { try await s.exec(Command(["sleep", "60"])) }
            try await Task.sleep(for: .milliseconds(500))
            let pids = host.qemuProcessIDs
            #expect(pids.count == 1, "one guest on the test host: \(pids)")
            let clock = ContinuousClock()
            let killedAt = clock.now
            for pid in pids { kill(pid, SIGKILL) }
            let error = await #expect(throws: VMExecError.self) { try await running.value }
            let took = clock.now - killedAt
            #expect(took < .seconds(1), "the waiting call took \(took) to fail")
            #expect(error?.code == .guestStopped, "\(String(describing: error))")
            #expect(await s.isRunning == false)
            try await s.start()
            #expect(try await s.exec(Command(["echo", "again"])).stdoutText == "again\n")
            await s.shutdown()
        }
    }
}

/// The test's "remote" libvirt host: a libvirtd in a network namespace of the test's own,
/// reached over qemu+tcp on a veth pair (10.237.1.0/24); nothing leaves the namespace.
actor RemoteLibvirt {
    static let shared = RemoteLibvirt()
    private var host: LibvirtTestHost?
    private var connection: LibvirtConnection?

    func get() async throws -> (host: LibvirtTestHost, hypervisor: LibvirtHypervisor) {
        let host = try self.host ?? LibvirtTestHost.start("remote-\(getpid())", network: 1)
        self.host = host
        if let connection, connection.lost == nil { return (host, LibvirtHypervisor(connection: connection)) }
        let connection = try await LibvirtConnection.open(host.uri)
        self.connection = connection
        return (host, LibvirtHypervisor(connection: connection))
    }

    /// Forgets the connection (the next get() opens a new one, which checks every volume again).
    func reconnect() { connection = nil }
}

extension RealGuests.LibvirtGuestTests {
    func startedRemotely() async throws -> (LibvirtTestHost, Sandbox) {
        let (host, hypervisor) = try await RemoteLibvirt.shared.get()
        var c = SharedGuest.configuration()
        c.hypervisor = hypervisor
        let sandbox = Sandbox(configuration: c, logger: SharedGuest.logger())
        try await sandbox.start()
        return (host, sandbox)
    }

    @Test("a remote host over qemu+tcp: files reach it as volumes checked by hash, once; a damaged one is replaced")
    func remoteHost() async throws {
        let (host, s) = try await startedRemotely()
        #expect(host.uri.hasPrefix("qemu+tcp://10.237.1.2/"))
        #expect(try await s.exec(Command(["python3", "-c", "print(6 * 7)"])).stdoutText == "42\n")
        let workshop = try ShardWorkshop()
        try await s.attach(try workshop.libs(version: "3.1"))
        #expect(try await s.exec(Command(["python3", "-c", "import vxlib; print(vxlib.VERSION)"])).stdoutText == "3.1\n")
        await s.shutdown()
        // The pool holds each file once, under its content's hash.
        let pool = host.directory.appendingPathComponent("lib/vmexec")
        let volumes = try FileManager.default.contentsOfDirectory(atPath: pool.path).sorted()
        #expect(volumes.count == 5, "kernel, initramfs, root, SDK shard, vxlib shard: \(volumes)")
        let images = try #require(SharedGuest.configuration().images)
        let rootVolume = try #require(volumes.first { $0.hasSuffix("-rootfs.sqfs") })
        let local = try Data(contentsOf: images.rootfs)
        #expect(try Data(contentsOf: pool.appendingPathComponent(rootVolume)) == local)
        // A second guest uploads nothing new.
        let (_, again) = try await startedRemotely()
        await again.shutdown()
        #expect(try FileManager.default.contentsOfDirectory(atPath: pool.path).sorted() == volumes)
        // Someone damages a volume on the host: a new connection checks it, replaces it, and boots.
        let handle = try FileHandle(forWritingTo: pool.appendingPathComponent(rootVolume))
        try handle.seek(toOffset: 4096)
        try handle.write(contentsOf: Data([0xFF, 0x00, 0xFF]))
        try handle.close()
        await RemoteLibvirt.shared.reconnect()
        let (_, mended) = try await startedRemotely()
        #expect(try await mended.exec(Command(["echo", "mended"])).stdoutText == "mended\n")
        await mended.shutdown()
        #expect(try Data(contentsOf: pool.appendingPathComponent(rootVolume)) == local, "the damaged volume was uploaded again")
    }

    @Test(
        "the remote host's daemon killed mid-command: the call fails within a few seconds naming the host; it is used again once restarted"
    )
    func remoteDaemonKilled() async throws {
        let (host, s) = try await startedRemotely()
        // A connection of its own, to see that a lost one is freed once nobody holds it.
        var extra: LibvirtConnection? = try await LibvirtConnection.open(host.uri)
        weak let freed = extra
        let running = Task { try await s.exec(Command(["sleep", "60"])) }
        try await Task.sleep(for: .milliseconds(500))
        let clock = ContinuousClock()
        let killedAt = clock.now
        try host.killDaemon()
        let error = await #expect(throws: VMExecError.self) { try await running.value }
        let took = clock.now - killedAt
        #expect(took < .seconds(5), "the waiting call took \(took) to fail")
        #expect(error?.code == .guestStopped)
        #expect(error?.message.contains("10.237.1.2") == true, "the message names the host: \(error?.message ?? "")")
        #expect(await s.isRunning == false)
        let lostBy = clock.now + .seconds(10)
        while extra?.lost == nil && clock.now < lostBy { try await Task.sleep(for: .milliseconds(50)) }
        #expect(extra?.lost != nil, "the extra connection is lost too")
        extra = nil
        let freedBy = clock.now + .seconds(5)
        while freed != nil && clock.now < freedBy { try await Task.sleep(for: .milliseconds(50)) }
        #expect(freed == nil, "libvirt's callbacks let a lost connection go")
        try host.restartDaemon()
        let (_, again) = try await startedRemotely()
        #expect(try await again.exec(Command(["echo", "back"])).stdoutText == "back\n")
        await again.shutdown()
        // The guest the dead daemon left behind is the host's to end (vmexec lost track of it).
        for pid in host.qemuProcessIDs { kill(pid, SIGKILL) }
    }
}
