import Foundation
import SerialChannel
import Testing
@testable import VMExecutor

/// What an untrusted command may do to its guest: each attack is followed by
/// `true`, which must answer within a second.
extension RealGuests {
    @Suite("Isolation and limits", .timeLimit(.minutes(10)))
    struct IsolationTests {
        /// `true`, timed: the guest still answers at once.
        private func answers(_ s: Sandbox) async throws -> Bool {
            let t = ContinuousClock.now
            let r = try await s.exec(Command(["true"]))
            return r.exitCode == 0 && ContinuousClock.now - t < .seconds(1)
        }

        @Test("commands run as an unprivileged user without capabilities and with no_new_privs; root only when asked; the result says so")
        func unprivileged() async throws {
            let s = try await SharedGuest.shared.get()
            let me = try await s.exec(Command(["sh", "-c", "id -u; id -g; echo $HOME; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status"]))
            #expect(me.stdoutText == "1000\n1000\n/home/vmexec\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n", "\(me.stdoutText)")
            #expect(me.user == .unprivileged)
            #expect(me.limits.processes == 512 && me.limits.memoryBytes != nil)
            let root = try await s.exec(Command(["id", "-u"], user: .root))
            #expect(root.stdoutText == "0\n")
            #expect(root.user == .root)
            let pid1 = try await s.exec(Command(["sh", "-c", "kill -9 1; echo $?"]))
            #expect(pid1.stdoutText.hasSuffix("1\n"), "an unprivileged command cannot signal the init: \(pid1.stdoutText)\(pid1.stderrText)")
            let sysrq = try await s.exec(Command(["sh", "-c", "echo b > /proc/sysrq-trigger"]))
            #expect(sysrq.exitCode != 0)
            let mount = try await s.exec(Command(["mount", "-t", "tmpfs", "x", "/tmp"]))
            #expect(mount.exitCode != 0)
            #expect(try await answers(s))
        }

        @Test("a memory bomb is killed for memory, reported as such, and the guest answers")
        func memoryBomb() async throws {
            let s = try await SharedGuest.shared.get()
            let bomb = try await s.exec(Command(["python3", "-c", "b = b'a' * (400 << 20)"], timeout: .seconds(120),
                                                limits: Limits(memoryBytes: 64 << 20, processes: 64)))
            #expect(bomb.termination == .outOfMemory(SIGKILL), "\(bomb.termination) \(bomb.stderrText)")
            #expect(bomb.exitCode == 137)
            #expect(bomb.usage.maxRSSKiB >= 32 << 10 && bomb.usage.maxRSSKiB <= 68 << 10, "peak \(bomb.usage.maxRSSKiB) KiB")
            #expect(try await answers(s))
        }

        @Test("a fork bomb stops at the process limit, ends with its command, and the guest answers")
        func forkBomb() async throws {
            let s = try await SharedGuest.shared.get()
            let bomb = try await s.exec(Command(["sh", "-c", "b() { b | b & }; b; sleep 3; echo bombed"], timeout: .seconds(30),
                                                limits: Limits(processes: 64)))
            #expect(bomb.stdoutText == "bombed\n", "\(bomb.termination) \(bomb.stderrText.prefix(300))")
            #expect(try await answers(s))
            let left = try await s.exec(Command(["sh", "-c", "ps -e -o comm= | grep -c '^sh$' || true"], user: .root))
            #expect((Int(left.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 99) <= 1,
                    "the bomb's processes ended with its command: \(left.stdoutText)")
        }

        @Test("what a command leaves running in the background ends with it")
        func leftovers() async throws {
            let s = try await SharedGuest.shared.get()
            let t = ContinuousClock.now
            let r = try await s.exec(Command(["sh", "-c", "sleep 300 & sleep 301 & echo started"]))
            #expect(r.stdoutText == "started\n")
            #expect(ContinuousClock.now - t < .seconds(10))
            let sleeping = try await s.exec(Command(["sh", "-c", "ps -e -o comm= | grep -c '^sleep$' || true"], user: .root))
            #expect(sleeping.stdoutText == "0\n")
        }

        @Test("no network: only loopback in the guest, and a listener on the host's loopback is out of reach")
        func noNetwork() async throws {
            // A listener of our own on the host's loopback: what user-mode networking would expose as 10.0.2.2.
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = 0
            let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            #expect(bound == 0 && listen(fd, 4) == 0)
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
            let port = UInt16(bigEndian: addr.sin_port)

            let s = try await SharedGuest.shared.get()
            let links = try await s.exec(Command(["ls", "/sys/class/net"]))
            #expect(links.stdoutText == "lo\n", "the guest has no network device: \(links.stdoutText)")
            let reach = try await s.exec(Command(["python3", "-c", """
                import socket
                for host in ("10.0.2.2", "127.0.0.1"):
                    try:
                        socket.create_connection((host, \(port)), timeout=3); print(host, "reached")
                    except OSError as e:
                        print(host, "unreachable")
                """]))
            #expect(reach.stdoutText == "10.0.2.2 unreachable\n127.0.0.1 unreachable\n", "\(reach.stdoutText)\(reach.stderrText)")
        }

        @Test("output past the cap is cut and the result says so; the guest answers")
        func outputFlood() async throws {
            var c = SharedGuest.configuration()
            c.outputLimit = 1 << 20
            let s = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await s.start()
            let flood = try await s.exec(Command(["sh", "-c", "head -c 256M /dev/zero; echo done >&2"], timeout: .seconds(300)))
            #expect(flood.stdout.count == 1 << 20)
            #expect(flood.stdoutTruncated && !flood.stderrTruncated)
            #expect(flood.stderrText == "done\n", "the command ran to its end")
            #expect(flood.exitCode == 0)
            #expect(try await answers(s))
            await s.shutdown()
        }

        @Test("a setuid-root binary planted by root gives an unprivileged command nothing")
        func plantedSetuid() async throws {
            let s = try await SharedGuest.shared.get()
            let plant = try await s.exec(Command(["sh", "-c", "cp /usr/bin/id /home/vmexec/suid-id && chmod 4755 /home/vmexec/suid-id"],
                                                 user: .root))
            #expect(plant.exitCode == 0, "\(plant.stderrText)")
            let run = try await s.exec(Command(["/home/vmexec/suid-id", "-u"]))
            #expect(run.stdoutText == "1000\n", "euid stays 1000: \(run.stdoutText)")
            _ = try await s.exec(Command(["rm", "-f", "/home/vmexec/suid-id"], user: .root))
        }
    }
}
