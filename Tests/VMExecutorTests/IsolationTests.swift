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

        @Test(
            "commands run as an unprivileged user without capabilities and with no_new_privs; root only when asked; the result says so"
        )
        func unprivileged() async throws {
            let s = try await SharedGuest.shared.get()
            let me = try await s.exec(
                Command(["sh", "-c", "id -u; id -g; echo $HOME; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status"]))
            #expect(me.stdoutText == "1000\n1000\n/home/vmexec\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n", "\(me.stdoutText)")
            #expect(me.user == .unprivileged)
            #expect(me.limits.processes == 512 && me.limits.memoryBytes != nil)
            // Born in a cgroup of its own (clone3 into it, or moved there before it executes).
            var cgroups: [String] = []
            for _ in 0..<2 { cgroups.append(try await s.exec(Command(["cat", "/proc/self/cgroup"])).stdoutText) }
            #expect(cgroups.allSatisfy { $0.hasPrefix("0::/jobs/") } && cgroups[0] != cgroups[1], "\(cgroups)")
            // Started on the init's CPU, it may run on every CPU once it executes.
            let cpus = try await s.exec(Command(["sh", "-c", "echo $(nproc) $(grep -c ^processor /proc/cpuinfo)"]))
            let counts = cpus.stdoutText.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            #expect(counts.count == 2 && counts[0] == counts[1], "a command may use every CPU: \(cpus.stdoutText)")
            let root = try await s.exec(Command(["id", "-u"], user: .root))
            #expect(root.stdoutText == "0\n")
            #expect(root.user == .root)
            let pid1 = try await s.exec(Command(["sh", "-c", "kill -9 1; echo $?"]))
            #expect(
                pid1.stdoutText.hasSuffix("1\n"),
                "an unprivileged command cannot signal the init: \(pid1.stdoutText)\(pid1.stderrText)")
            let sysrq = try await s.exec(Command(["sh", "-c", "echo b > /proc/sysrq-trigger"]))
            #expect(sysrq.exitCode != 0)
            let mount = try await s.exec(Command(["mount", "-t", "tmpfs", "x", "/tmp"]))
            #expect(mount.exitCode != 0)
            #expect(try await answers(s))
        }

        @Test("stdin past its limit is cut, the command sees end of file, and the result says so")
        func stdinLimit() async throws {
            let s = try await SharedGuest.shared.get()
            let cut = try await s.exec(
                Command(
                    ["wc", "-c"], stdin: .bytes([UInt8](repeating: 7, count: 100_000)),
                    limits: Limits(stdinBytes: 4096)))
            #expect(cut.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "4096" && cut.stdinTruncated)
            #expect(cut.limits.stdinBytes == 4096)
            let whole = try await s.exec(
                Command(
                    ["wc", "-c"], stdin: .bytes([UInt8](repeating: 7, count: 4096)),
                    limits: Limits(stdinBytes: 4096)))
            #expect(whole.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "4096" && !whole.stdinTruncated)
        }

        @Test("each command has a /tmp of its own that ends with it; a shared /tmp only when asked, which the files API sees")
        func privateTmp() async throws {
            let s = try await SharedGuest.shared.get()
            // A command keeps a file in its /tmp while others look.
            let (input, go) = AsyncStream<[UInt8]>.makeStream()
            let keeper = try await s.stream(
                Command(
                    ["sh", "-c", "echo secret > /tmp/mine && echo ready && read x && cat /tmp/mine"],
                    stdin: .stream(input)))
            var events = keeper.makeAsyncIterator()
            var said: [UInt8] = []
            while !said.elementsEqual("ready\n".utf8), let e = try await events.next() {
                if case .stdout(let b) = e { said += b }
            }
            let other = try await s.exec(Command(["ls", "-A", "/tmp"]))
            #expect(other.exitCode == 0 && other.stdoutText == "", "another command sees an empty /tmp: \(other.stdoutText)")
            #expect(other.privateTmp)
            let asRoot = try await s.exec(Command(["ls", "-A", "/tmp"], user: .root))
            #expect(asRoot.stdoutText == "", "root's command too: \(asRoot.stdoutText)")

            // The guest's shared /tmp: the files API and commands that ask for it.
            try await s.writeFile("/tmp/shared-note", contents: [UInt8]("handed over\n".utf8))
            let shared = try await s.exec(Command(["cat", "/tmp/shared-note"], privateTmp: false))
            #expect(shared.stdoutText == "handed over\n" && !shared.privateTmp)
            let isolated = try await s.exec(Command(["ls", "-A", "/tmp"]))
            #expect(isolated.stdoutText == "")
            let leftBy = try await s.exec(Command(["sh", "-c", "echo from-a-command > /tmp/from-command"], privateTmp: false))
            #expect(leftBy.exitCode == 0)
            #expect(try await s.readFile("/tmp/from-command") == [UInt8]("from-a-command\n".utf8))

            // The keeper still has its file, and it is gone when the keeper ends.
            go.yield([UInt8]("go\n".utf8))
            go.finish()
            var rest: [UInt8] = []
            var ended: Termination?
            while let e = try await events.next() {
                if case .stdout(let b) = e { rest += b }
                if case .exit(let t, _) = e { ended = t }
            }
            #expect(String(decoding: rest, as: UTF8.self) == "secret\n" && ended == .exited(0))
            let after = try await s.exec(Command(["ls", "-A", "/tmp"], privateTmp: false))
            #expect(!after.stdoutText.contains("mine"), "\(after.stdoutText)")
            try await s.remove("/tmp/shared-note")
            try await s.remove("/tmp/from-command")
            #expect(try await answers(s))
        }

        @Test(
            "each command has a /dev/shm and message queues of its own: another command, root's and the next one see none of them"
        )
        func privateSharedMemory() async throws {
            let s = try await SharedGuest.shared.get()
            let (input, go) = AsyncStream<[UInt8]>.makeStream()
            let keeper = try await s.stream(
                Command(
                    [
                        "python3", "-c",
                        """
                        import ctypes, sys
                        from multiprocessing import shared_memory
                        m = shared_memory.SharedMemory(name="vmexec-secret", create=True, size=4096)
                        m.buf[:6] = b"secret"
                        libc = ctypes.CDLL(None, use_errno=True)
                        assert libc.mq_open(b"/vmexec-queue", 0o100 | 0o2, 0o600, None) >= 0
                        assert libc.shmget(0x766d78, 4096, 0o1000 | 0o600) >= 0  # System V, IPC_CREAT
                        print("ready", flush=True)
                        sys.stdin.readline()
                        print(sorted(__import__("os").listdir("/dev/shm")), sorted(__import__("os").listdir("/dev/mqueue")))
                        """,
                    ], stdin: .stream(input)))
            var events = keeper.makeAsyncIterator()
            var said: [UInt8] = []
            while !said.elementsEqual("ready\n".utf8), let e = try await events.next() {
                if case .stdout(let b) = e { said += b }
                if case .exit(let t, _) = e { Issue.record("the keeper ended early: \(t)"); return }
            }
            let look = ["sh", "-c", "ls -A /dev/shm /dev/mqueue; ipcs -m 2>/dev/null | grep -c '^0x' || true"]
            for user in [GuestUser.unprivileged, .root] {
                let other = try await s.exec(Command(look, user: user))
                #expect(other.stdoutText == "/dev/mqueue:\n\n/dev/shm:\n0\n", "\(user) sees none of it: \(other.stdoutText)")
            }
            go.yield([UInt8]("go\n".utf8))
            go.finish()
            var rest: [UInt8] = []
            while let e = try await events.next() {
                if case .stdout(let b) = e { rest += b }
            }
            #expect(String(decoding: rest, as: UTF8.self) == "['vmexec-secret'] ['vmexec-queue']\n", "the keeper saw its own")
            let next = try await s.exec(Command(look))
            #expect(next.stdoutText == "/dev/mqueue:\n\n/dev/shm:\n0\n", "the next command sees none: \(next.stdoutText)")
            // Commands that share the guest's /tmp share its /dev/shm too.
            let left = try await s.exec(Command(["sh", "-c", "echo shared > /dev/shm/vmexec-shared"], privateTmp: false))
            let seen = try await s.exec(
                Command(["sh", "-c", "cat /dev/shm/vmexec-shared; rm /dev/shm/vmexec-shared"], privateTmp: false))
            #expect(left.exitCode == 0 && seen.stdoutText == "shared\n")
            #expect(try await answers(s))
        }

        @Test("a /dev/shm flood is stopped by the command's memory limit and leaves nothing behind")
        func sharedMemoryFlood() async throws {
            let s = try await SharedGuest.shared.get()
            let limit: UInt64 = 64 << 20
            let flood = try await s.exec(
                Command(
                    ["dd", "if=/dev/zero", "of=/dev/shm/flood", "bs=1M", "count=512"],
                    timeout: .seconds(120), limits: Limits(memoryBytes: limit, processes: 64)))
            #expect(flood.exitCode != 0, "the flood did not fit: \(flood.termination) \(flood.stderrText)")
            #expect(flood.usage.maxRSSKiB * 1024 <= limit, "its memory stayed within the limit: \(flood.usage.maxRSSKiB) KiB")
            let after = try await s.exec(
                Command(["sh", "-c", "ls -A /dev/shm; awk '/^MemAvailable/ {print int($2 / 1024)}' /proc/meminfo"]))
            let lines = after.stdoutText.split(separator: "\n")
            #expect(lines.count == 1, "the next command's /dev/shm is empty: \(after.stdoutText)")
            #expect((Int(lines.last ?? "") ?? 0) > 128, "its memory came back: \(after.stdoutText) MiB available")
            #expect(try await answers(s))
        }

        @Test("the kernel log is for root only: an unprivileged command reads neither /dev/kmsg nor dmesg")
        func kernelLog() async throws {
            let s = try await SharedGuest.shared.get()
            let kmsg = try await s.exec(Command(["head", "-c", "1", "/dev/kmsg"]))
            #expect(kmsg.exitCode != 0 && kmsg.stdout.isEmpty, "\(kmsg.stdoutText)")
            let dmesg = try await s.exec(Command(["dmesg"]))
            #expect(dmesg.exitCode != 0 && dmesg.stdout.isEmpty, "\(dmesg.stdoutText)")
            let pointers = try await s.exec(Command(["sh", "-c", "grep -m1 ' T ' /proc/kallsyms | cut -c1-16"]))
            #expect(pointers.stdoutText == "0000000000000000\n", "kernel addresses are hidden: \(pointers.stdoutText)")
            // The log is there: root reads it.
            let root = try await s.exec(Command(["dmesg"], user: .root))
            #expect(root.exitCode == 0 && !root.stdout.isEmpty, "\(root.stderrText)")
        }

        @Test("a command is a candidate for the OOM killer: oom_score_adj 0")
        func oomCandidate() async throws {
            let s = try await SharedGuest.shared.get()
            for user in [GuestUser.unprivileged, .root] {
                let r = try await s.exec(Command(["cat", "/proc/self/oom_score_adj"], user: user))
                #expect(r.stdoutText == "0\n", "\(user): \(r.stdoutText)")
            }
        }

        @Test("the cgroups of ended commands are removed: after 20 commands only the asker's and the spares remain")
        func cgroupsRemoved() async throws {
            // A guest of its own: in the shared one other tests' commands hold cgroups too; and no
            // warm state, whose warm Python interpreter holds one.
            var c = SharedGuest.configuration()
            c.reuseWarmState = false
            let s = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await s.start()
            defer { Task { await s.shutdown() } }
            for _ in 0..<20 { _ = try await s.exec(Command(["true"])) }
            // The init removes them in idle moments, a piece at a time.
            var seen = ""
            for _ in 0..<50 {
                try await Task.sleep(for: .milliseconds(100))
                let r = try await s.exec(Command(["sh", "-c", "ls /sys/fs/cgroup/jobs | grep -c '^[0-9]' || true"]))
                seen = r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
                if let n = Int(seen), n <= 3 { break }
            }
            let left = Int(seen) ?? -1
            #expect(left >= 1 && left <= 3, "cgroups under /jobs: \(seen) (this command's own and at most two made ahead)")
        }

        @Test("what a command leaves running in the background ends with it")
        func leftovers() async throws {
            let s = try await SharedGuest.shared.get()
            let t = ContinuousClock.now
            let r = try await s.exec(Command(["sh", "-c", "sleep 300 & sleep 301 & echo started"]))
            #expect(r.stdoutText == "started\n")
            #expect(ContinuousClock.now - t < .seconds(10))
            let sleeping = try await s.exec(
                Command(["sh", "-c", "cat /proc/[0-9]*/comm | grep -c '^sleep$' || true"], user: .root))
            #expect(sleeping.stdoutText == "0\n")
        }

    }
}
