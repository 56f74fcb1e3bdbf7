import Foundation
import Testing
import VMExecutor

extension RealGuests {
    /// What a Sandbox.jl configuration carries besides shards and stores: the guest's host
    /// name, an entry point every command runs through, and the private /tmp's size.
    @Suite("Host name, entry point, /tmp size", .serialized, .timeLimit(.minutes(5)))
    struct SandboxSettingsGuestTests {
        @Test("the host name is the sandbox's, on a cold boot and on one restored from another sandbox's state")
        func hostname() async throws {
            let dir = try BootStateTests.freshDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            for (name, restored) in [("field-01", false), ("bench.lab-2", true)] {
                var c = BootStateTests.configuration(dir)
                c.hostname = name
                let s = Sandbox(configuration: c, logger: SharedGuest.logger())
                try await s.start()
                #expect(await s.restoredFromSavedState == restored)
                let seen = try await s.exec(
                    Command([
                        "sh", "-c",
                        "uname -n; hostname; python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))'",
                    ]))
                // It resolves to the loopback, as the image's own name does (glibc answers 127.0.0.1 or 127.0.1.1).
                let lines = seen.stdoutText.split(separator: "\n").map(String.init)
                #expect(lines.count == 3 && lines[0] == name && lines[1] == name, "\(seen.stdoutText)\(seen.stderrText)")
                #expect(lines.last?.hasPrefix("127.") == true, "\(seen.stdoutText)\(seen.stderrText)")
                await s.shutdown()
            }
            // Without one, a guest restored from that state is vmexec again.
            let plain = Sandbox(configuration: BootStateTests.configuration(dir), logger: SharedGuest.logger())
            try await plain.start()
            let back = try await plain.exec(
                Command(["sh", "-c", "uname -n; python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))'"]))
            #expect(back.stdoutText.hasPrefix("vmexec\n127."), "\(back.stdoutText)\(back.stderrText)")
            await plain.shutdown()
            var bad = BootStateTests.configuration(dir)
            bad.hostname = "-no"
            let refused = Sandbox(configuration: bad, logger: SharedGuest.logger())
            await #expect(throws: VMExecError.self) { try await refused.start() }
        }

        @Test("every command runs through the entry point with its arguments; vmexec's own runners do not")
        func entrypoint() async throws {
            var c = SharedGuest.configuration()
            c.entrypoint = ["/usr/bin/env", "THROUGH_ENTRYPOINT=yes"]
            let s = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await s.start()
            defer { Task { await s.shutdown() } }
            let r = try await s.exec(Command(["sh", "-c", "echo $THROUGH_ENTRYPOINT \"$0\" \"$1\"", "a", "b c"]))
            #expect(r.stdoutText == "yes a b c\n", "\(r.stdoutText)\(r.stderrText)")
            // A Python job runs the runner itself, not through the user's entry point.
            let python = try await s.python.run(PythonCode("import os\nprint(os.environ.get('THROUGH_ENTRYPOINT'))"))
            #expect(python.stdoutText == "None\n", "\(python.stdoutText)")
        }

        @Test("a private /tmp (and /dev/shm) of the size asked for: writing past it fails with ENOSPC")
        func tmpSize() async throws {
            let s = try await SharedGuest.shared.get()
            let sized = try await s.exec(
                Command(
                    [
                        "sh", "-c",
                        "df -k /tmp /dev/shm | awk 'NR>1 {print $2}'; head -c 20M /dev/zero > /tmp/big 2>/dev/null; echo $?",
                    ], limits: Limits(tmpBytes: 16 << 20)))
            #expect(sized.stdoutText == "16384\n16384\n1\n", "\(sized.stdoutText)\(sized.stderrText)")
            // Without a size, the memory limit bounds it, as before.
            let limited = try await s.exec(
                Command(["sh", "-c", "df -k /tmp | awk 'NR>1 {print $2}'"], limits: Limits(memoryBytes: 96 << 20)))
            #expect(limited.stdoutText == "\(96 << 10)\n", "\(limited.stdoutText)")
            // A size sizes a private /tmp only: with the shared one (which the files API reaches) it does nothing.
            let shared = try await s.exec(
                Command(
                    ["sh", "-c", "df -k /tmp | awk 'NR>1 {print $2}'"], limits: Limits(tmpBytes: 16 << 20), privateTmp: false))
            #expect(shared.exitCode == 0 && shared.stdoutText != "16384\n", "\(shared.stdoutText)")
        }
    }
}
