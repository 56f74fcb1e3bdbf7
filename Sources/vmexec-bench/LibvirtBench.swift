import Foundation
import Logging
import PersistOverlay
import VMExecutor

/// The libvirt machine beside the QEMU process machine, in the same run:
/// starts (cold, and restoring a saved state) and a no-op command's round
/// trip. libvirt runs q35 (it has no microvm), whose firmware costs every
/// cold boot; a restored state skips the firmware and the kernel.
/// The libvirt host is one of the tests' own (Tests/libvirt-host.sh).
enum LibvirtBench {
    static let startRuns = 3
    static let noopRuns = 300

    static func run(images: GuestImages, logger: Logger) async throws {
        let script = ProcessInfo.processInfo.environment["VMEXEC_LIBVIRT_HOST_SCRIPT"] ?? "Tests/libvirt-host.sh"
        func host(_ name: String, network: Int? = nil) throws -> (uri: String, stop: () -> Void) {
            let dir = NSTemporaryDirectory() + "vmexec-bench-libvirt-\(name)-\(getpid())"
            let started = try HostTool.run(
                ["env", "LIBVIRT_HOST_TIMEOUT=60", "sh", script, "start", dir] + (network.map { ["\($0)"] } ?? []))
            guard started.status == 0, let uri = started.output.split(separator: "\n").last.map(String.init) else {
                throw Bench.Failure("cannot start a libvirt host for the bench: \(started.output)")
            }
            return (
                uri,
                {
                    _ = try? HostTool.run(["sh", script, "stop", dir])
                    try? FileManager.default.removeItem(atPath: dir)
                }
            )
        }
        let local = try host("local")
        defer { local.stop() }
        let connection = try await LibvirtConnection.open(local.uri)
        let libvirt = try await measure(images: images, hypervisor: LibvirtHypervisor(connection: connection), logger: logger)
        let qemu = try await measure(images: images, hypervisor: QEMUHypervisor(), logger: logger)
        // A "remote" host: its own network namespace, reached over qemu+tcp on a veth pair.
        let remote = try host("remote", network: 9)
        defer { remote.stop() }
        let remoteConnection = try await LibvirtConnection.open(remote.uri)
        let far = try await measure(
            images: images, hypervisor: LibvirtHypervisor(connection: remoteConnection), logger: logger, starts: false)
        let peer = "QEMU process machine"
        Bench.emit(
            "libvirt_boot_hello_s", libvirt.restored, "s", peer: qemu.restored, peerName: peer,
            note: "a start restoring the saved boot state (libvirt: an external memory snapshot read by virDomainRestore)")
        Bench.emit(
            "libvirt_cold_boot_hello_s", libvirt.cold, "s", peer: qemu.cold, peerName: peer,
            note: "a start that boots: q35 with its firmware under libvirt, microvm for the QEMU machine")
        Bench.emit(
            "libvirt_exec_noop_p50_ms", libvirt.noop, "ms", peer: qemu.noop, peerName: peer,
            note: "the control port through virDomainOpenChannel's stream (local libvirtd) vs QEMU's Unix socket")
        Bench.emit(
            "remote_exec_noop_p50_ms", far.noop, "ms", peer: qemu.noop, peerName: peer,
            note: "a host in a network namespace over qemu+tcp: the port's bytes cross libvirt's RPC both ways")
    }

    struct Figures {
        var cold: Double
        var restored: Double
        var noop: Double
    }

    static func measure(images: GuestImages, hypervisor: any GuestHypervisor, logger: Logger, starts measured: Bool = true)
        async throws -> Figures
    {
        let states = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-bench-lvstates-\(getpid())")
        defer { try? FileManager.default.removeItem(at: states) }
        func configuration(reuse: Bool) -> SandboxConfiguration {
            var c = SandboxConfiguration()
            c.images = images
            c.accelerator = .tcg
            c.hypervisor = hypervisor
            c.reuseBootState = reuse
            c.bootStateDirectory = states
            return c
        }
        func starts(reuse: Bool, runs: Int) async throws -> [Double] {
            var times: [Double] = []
            for _ in 0..<runs {
                let s = Sandbox(configuration: configuration(reuse: reuse), logger: logger)
                let t = ContinuousClock.now
                try await s.start()
                times.append(Bench.seconds(ContinuousClock.now - t))
                await s.shutdown()
            }
            return times
        }
        let cold = measured ? try await starts(reuse: false, runs: startRuns) : [0]
        _ = try await starts(reuse: true, runs: 1)  // boots and saves the state
        let restored = measured ? try await starts(reuse: true, runs: startRuns) : [0]
        let guest = Sandbox(configuration: configuration(reuse: true), logger: logger)
        try await guest.start()
        let command = Command(["/usr/lib/vmexec/noop"], limits: Limits(), privateTmp: false)
        for _ in 0..<20 { _ = try await guest.exec(command) }
        var rounds: [Double] = []
        for _ in 0..<noopRuns {
            let t = ContinuousClock.now
            _ = try await guest.exec(command)
            rounds.append(Bench.millis(ContinuousClock.now - t))
        }
        await guest.shutdown()
        return Figures(cold: Bench.median(cold), restored: Bench.median(restored), noop: Bench.percentile(rounds, 50))
    }
}
