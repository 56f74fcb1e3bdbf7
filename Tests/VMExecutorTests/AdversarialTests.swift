import Foundation
import SerialChannel
import Synchronization
import Testing
import VMExecTestSupport

@testable import VMExecutor

/// Samples the resident memory of this process and of QEMU every 50 ms and keeps the peaks.
final class MemoryWatch: Sendable {
    private let peaks = Mutex((host: 0, qemu: 0))
    private let running = Mutex(true)

    init(qemu: Int32) {
        Thread.detachNewThread { [self] in
            while running.withLock({ $0 }) {
                let h = residentKiB(of: getpid()), q = residentKiB(of: qemu)
                peaks.withLock { $0 = (max($0.host, h), max($0.qemu, q)) }
                usleep(50_000)
            }
        }
    }

    func stop() -> (host: Int, qemu: Int) {
        running.withLock { $0 = false }
        return peaks.withLock { $0 }
    }
}

extension RealGuests {
    /// The must-show of issue 5: one guest (SDK, a mount shard, a 96 MiB store) takes every attack in
    /// turn; after each, `true` must answer within a second, and the host's memory stays bounded.
    @Suite("Adversarial jobs", .timeLimit(.minutes(15)))
    struct AdversarialTests {
        @Test(
            "fork bomb, memory bomb, SIGTERM-proof busy loop, 1 GiB of output, full disk, shard write, network, raw disk, kill -9 -1, PID 1, sysrq, mount, planted setuid: each hurts only itself"
        )
        func everyAttack() async throws {
            let workshop = try ShardWorkshop()
            let libs = try workshop.libs(version: "1.0")
            let scratch = try ScratchStore(size: 96 << 20, shards: SharedGuest.configuration().shards + [libs])
            var c = SharedGuest.configuration()
            c.store = scratch.store
            c.shards.append(libs)
            c.outputLimit = 1 << 20
            let s = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await s.start()
            defer { Task { await s.shutdown() } }
            let qemu = try #require(await s.qemuProcessID)
            let hostBefore = residentKiB(of: getpid())
            let watch = MemoryWatch(qemu: qemu)

            func answers(after attack: String) async throws {
                let t = ContinuousClock.now
                let r = try await s.exec(Command(["true"]))
                let took = ContinuousClock.now - t
                #expect(r.exitCode == 0 && took < .seconds(1), "after \(attack), true took \(took)")
            }

            // A fork bomb stops at the process limit and ends with its command.
            let bomb = try await s.exec(
                Command(
                    ["sh", "-c", "b() { b | b & }; b; sleep 3; echo bombed"], timeout: .seconds(60),
                    limits: Limits(processes: 64)))
            #expect(bomb.stdoutText == "bombed\n" && bomb.limits.processes == 64, "\(bomb.termination)")
            let shells = try await s.processes().filter { $0.arguments.first == "sh" }
            #expect(shells.isEmpty, "the bomb's shells ended with it: \(shells.count)")
            try await answers(after: "a fork bomb")

            // A memory bomb is killed for memory and says so, with its peak near its limit.
            let hog = try await s.exec(
                Command(
                    ["python3", "-c", "b = b'a' * (400 << 20)"], timeout: .seconds(120),
                    limits: Limits(memoryBytes: 64 << 20, processes: 64)))
            #expect(hog.termination == .outOfMemory(SIGKILL) && hog.exitCode == 137, "\(hog.termination)")
            #expect(hog.usage.maxRSSKiB >= 32 << 10 && hog.usage.maxRSSKiB <= 68 << 10, "peak \(hog.usage.maxRSSKiB) KiB")
            try await answers(after: "a memory bomb")

            // A busy loop whose children ignore SIGTERM: killed whole at its timeout.
            let loop = try await s.exec(
                Command(
                    ["sh", "-c", "trap '' TERM; (trap '' TERM; while :; do :; done) & while :; do :; done"],
                    timeout: .seconds(2)))
            #expect(loop.termination == .timedOut(SIGKILL) && loop.exitCode == 124, "\(loop.termination)")
            #expect(loop.usage.wallNanoseconds >= 2_000_000_000)
            // The group's SIGKILL is delivered, but a killed process can still be on its way out
            // (state R, its memory and arguments gone) when the command is reported ended.
            var left = try await s.processes()
            for _ in 0..<20 where !left.isEmpty {
                try await Task.sleep(for: .milliseconds(100))
                left = try await s.processes()
            }
            #expect(left.isEmpty, "nothing of the loop is left: \(left)")
            try await answers(after: "a SIGTERM-proof busy loop")

            // 1 GiB of output against a 1 MiB cap: cut, and the result says so.
            let flood = try await s.exec(Command(["sh", "-c", "head -c 1G /dev/zero; echo done >&2"], timeout: .seconds(600)))
            #expect(flood.stdout.count == 1 << 20 && flood.stdoutTruncated && !flood.stderrTruncated)
            #expect(flood.stderrText == "done\n" && flood.exitCode == 0, "it ran to its end")
            try await answers(after: "1 GiB of output")

            // Filling the disk: ENOSPC reaches the job, deleting frees the space.
            let fill = try await s.exec(
                Command(["sh", "-c", "dd if=/dev/zero of=/home/vmexec/fill bs=1M 2>&1; sync"], timeout: .seconds(120)))
            #expect(fill.stdoutText.contains("No space left on device"), "\(fill.stdoutText)")
            let full = await #expect(throws: VMExecError.self) {
                try await s.writeFile("/home/vmexec/more", contents: [UInt8](repeating: 1, count: 8 << 20))
            }
            #expect(full?.code == .fileRefused && full?.message.contains("No space left") == true, "\(String(describing: full))")
            try await answers(after: "filling the disk")
            #expect(try await s.exec(Command(["rm", "/home/vmexec/fill"])).exitCode == 0)

            // Writing into a shard: read-only.
            let shard = try await s.exec(Command(["sh", "-c", "echo x > /opt/libs/vxlib/vxlib/evil.py"]))
            #expect(shard.exitCode != 0 && shard.stderrText.contains("Read-only file system"), "\(shard.stderrText)")
            try await answers(after: "writing into a shard")

            // Looking for a network: only loopback, and a listener on the host's loopback is out of reach.
            let listener = try LoopbackListener(greeting: "must not be reached\n")
            defer { listener.close() }
            let links = try await s.exec(Command(["ls", "/sys/class/net"]))
            #expect(links.stdoutText == "lo\n")
            let reach = try await s.exec(
                Command([
                    "python3", "-c",
                    """
                    import socket
                    for host in ("10.0.2.2", "127.0.0.1"):
                        try:
                            socket.create_connection((host, \(listener.port)), timeout=3); print(host, "reached")
                        except OSError:
                            print(host, "unreachable")
                    """,
                ]))
            #expect(reach.stdoutText == "10.0.2.2 unreachable\n127.0.0.1 unreachable\n", "\(reach.stdoutText)\(reach.stderrText)")
            try await answers(after: "looking for a network")

            // Reading a raw block device.
            let raw = try await s.exec(Command(["sh", "-c", "head -c 512 /dev/vda | wc -c; head -c 512 /dev/sda | wc -c"]))
            #expect(
                raw.stdoutText == "0\n0\n" && raw.stderrText.contains("Permission denied"), "\(raw.stdoutText)\(raw.stderrText)")
            try await answers(after: "reading a raw block device")

            // kill -9 -1 as the job's user: only the user's own processes; the init and the channel live on.
            let all = try await s.exec(Command(["sh", "-c", "kill -9 -1; echo survived $?"]))
            #expect(all.stdoutText.hasPrefix("survived"), "\(all.stdoutText)\(all.stderrText)")
            try await answers(after: "kill -9 -1")

            // Signalling PID 1, writing /proc/sysrq-trigger, mounting something: refused.
            let pid1 = try await s.exec(Command(["sh", "-c", "kill -TERM 1; echo $?; kill -KILL 1; echo $?"]))
            #expect(pid1.stdoutText == "1\n1\n", "\(pid1.stdoutText)")
            let sysrq = try await s.exec(Command(["sh", "-c", "echo c > /proc/sysrq-trigger"]))
            #expect(sysrq.exitCode != 0)
            let mount = try await s.exec(Command(["mount", "-t", "tmpfs", "x", "/home/vmexec"]))
            #expect(mount.exitCode != 0)
            try await answers(after: "PID 1, sysrq and mount")

            // A setuid-root binary planted in the store by root gives the unprivileged job nothing.
            #expect(
                try await s.exec(
                    Command(
                        ["sh", "-c", "cp /usr/bin/id /home/vmexec/suid-id && chmod 4755 /home/vmexec/suid-id"],
                        user: .root)
                ).exitCode == 0)
            let suid = try await s.exec(Command(["/home/vmexec/suid-id", "-u"]))
            #expect(suid.stdoutText == "1000\n", "euid stays 1000: \(suid.stdoutText)")
            try await answers(after: "a planted setuid binary")

            // The bound: QEMU within its guest's 512 MiB plus 256 MiB of its own; this process
            // (holding at most one window per stream and the 1 MiB cap) within 256 MiB of its start.
            let peaks = watch.stop()
            print(
                "adversarial: host test process \(hostBefore >> 10) -> \(peaks.host >> 10) MiB peak, QEMU \(peaks.qemu >> 10) MiB peak"
            )
            #expect(peaks.qemu < (512 + 256) << 10, "QEMU peaked at \(peaks.qemu) KiB")
            #expect(peaks.host - hostBefore < 256 << 10, "the host process went from \(hostBefore) to \(peaks.host) KiB")
        }
    }
}
