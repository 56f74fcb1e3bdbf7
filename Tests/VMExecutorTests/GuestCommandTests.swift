import Foundation
import SerialChannel
import Testing
import VMExecutor

extension RealGuests {
    /// Commands in one real guest under QEMU.
    @Suite("Commands in a real guest", .serialized, .timeLimit(.minutes(10)))
    struct GuestCommandTests {
        @Test("200 commands in sequence, each a few frames")
        func manyInSequence() async throws {
            let guest = try await SharedGuest.shared.get()
            for i in 0..<200 {
                let r = try await guest.exec(Command(["/usr/lib/vmexec/noop"]))
                #expect(r.termination == .exited(0), "command \(i)")
            }
            let last = try await guest.exec(Command(["sh", "-c", "echo done"]))
            #expect(last.stdoutText == "done\n")
        }

        @Test("20 commands at once, each with its own output")
        func manyAtOnce() async throws {
            let guest = try await SharedGuest.shared.get()
            let results = try await withThrowingTaskGroup(of: (Int, ExecResult).self) { group in
                for i in 0..<20 {
                    group.addTask {
                        (
                            i,
                            try await guest.exec(
                                Command(
                                    ["sh", "-c", "sleep 0.2; echo out-$N; echo err-$N >&2; exit $N"],
                                    environment: ["N": "\(i)"]))
                        )
                    }
                }
                return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
            }
            #expect(results.count == 20)
            for (i, r) in results {
                #expect(r.stdoutText == "out-\(i)\n")
                #expect(r.stderrText == "err-\(i)\n")
                #expect(r.termination == .exited(Int32(i)))
            }
        }

        @Test("50 MiB out of one command while another takes 1 MiB in: no deadlock, checksums match")
        func bulkBothWays() async throws {
            let guest = try await SharedGuest.shared.get()
            let size = 50 << 20
            // Deterministic bytes in the guest: a repeated 251-byte pattern.
            let producer = Task {
                let stream = try await guest.stream(
                    Command([
                        "python3", "-c",
                        """
                        import sys
                        pat = bytes(range(251)) * 4177
                        out = sys.stdout.buffer
                        n = \(size)
                        while n > 0:
                            k = min(n, len(pat)); out.write(pat[:k]); n -= k
                        """,
                    ]))
                var count = 0
                var sum = (a: UInt64(0), b: UInt64(0))
                var status: Termination?
                var offset = 0
                var matches = true
                for try await event in stream {
                    switch event {
                    case .stdout(let bytes):
                        for x in bytes {
                            if x != UInt8(offset % 251) { matches = false }
                            offset += 1
                            sum.a = (sum.a + UInt64(x)) % 65521
                            sum.b = (sum.b + sum.a) % 65521
                        }
                        count += bytes.count
                    case .stderr(let bytes): Issue.record("stderr: \(String(decoding: bytes, as: UTF8.self))")
                    case .exit(let t, _): status = t
                    }
                }
                return (count, matches, status)
            }
            var input = [UInt8](repeating: 0, count: 1 << 20)
            for i in input.indices { input[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
            let consumer = try await guest.exec(Command(["sha256sum"], stdin: .bytes(input)))
            let host = try await guest.exec(
                Command(
                    ["sh", "-c", "cat > /tmp/in.bin; sha256sum < /tmp/in.bin; wc -c < /tmp/in.bin"],
                    stdin: .bytes(input)))
            let (count, matches, status) = try await producer.value
            #expect(count == size)
            #expect(matches, "stdout bytes arrived out of order or altered")
            #expect(status == .exited(0))
            #expect(consumer.termination == .exited(0))
            let lines = host.stdoutText.split(separator: "\n")
            #expect(lines.count == 2)
            #expect(consumer.stdoutText.prefix(64) == lines.first?.prefix(64))
            #expect(lines.last == "\(1 << 20)")
        }

        @Test("exit codes and signal deaths are reported as they happened")
        func terminations() async throws {
            let guest = try await SharedGuest.shared.get()
            #expect(try await guest.exec(Command(["true"])).termination == .exited(0))
            #expect(try await guest.exec(Command(["false"])).termination == .exited(1))
            #expect(try await guest.exec(Command(["sh", "-c", "exit 255"])).termination == .exited(255))
            #expect(try await guest.exec(Command(["sh", "-c", "kill -TERM $$"])).termination == .signaled(SIGTERM))
            #expect(try await guest.exec(Command(["sh", "-c", "kill -KILL $$"])).termination == .signaled(SIGKILL))
            let segv = try await guest.exec(
                Command(["python3", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]))
            #expect(segv.termination == .signaled(SIGSEGV))
            #expect(segv.exitCode == 128 + SIGSEGV)
        }

        @Test("a missing executable fails at once with a clear error")
        func missingExecutable() async throws {
            let guest = try await SharedGuest.shared.get()
            let clock = ContinuousClock()
            let start = clock.now
            let error = await #expect(throws: VMExecError.self) { try await guest.exec(Command(["no-such-program-here"])) }
            #expect(error?.code == .commandNotFound)
            #expect(error?.message.contains("no-such-program-here") == true)
            #expect(clock.now - start < .seconds(5), "a missing program must not wait for anything")
            let notExec = await #expect(throws: VMExecError.self) { try await guest.exec(Command(["/etc/hostname"])) }
            #expect(notExec?.code == .notExecutable)
            let badDir = await #expect(throws: VMExecError.self) {
                try await guest.exec(Command(["true"], workingDirectory: "/does/not/exist"))
            }
            #expect(badDir?.code == .invalidRequest)
            // The guest still serves after the refusals.
            #expect(try await guest.exec(Command(["true"])).termination == .exited(0))
        }

        @Test("a command past its timeout is killed together with its children")
        func timeoutKillsGroup() async throws {
            let guest = try await SharedGuest.shared.get()
            let r = try await guest.exec(
                Command(
                    ["sh", "-c", "sleep 300 & echo $! > /tmp/child.pid; trap '' TERM; sleep 300"], timeout: .seconds(1),
                    privateTmp: false))
            guard case .timedOut = r.termination else {
                Issue.record("expected a timeout, got \(r.termination)")
                return
            }
            #expect(r.exitCode == 124)
            let check = try await guest.exec(
                Command(
                    ["sh", "-c", "kill -0 $(cat /tmp/child.pid) 2>/dev/null && echo alive || echo gone"],
                    user: .root, privateTmp: false))
            #expect(check.stdoutText == "gone\n" && check.stderrText.isEmpty, "\(check.stderrText)")
        }

        @Test("a slow consumer of output stalls only its own command")
        func slowConsumerStallsOnlyItself() async throws {
            let guest = try await SharedGuest.shared.get()
            // A producer of endless output whose stream nobody reads.
            let stalled = try await guest.stream(Command(["sh", "-c", "yes vmexec-flood"]))
            // Meanwhile the guest keeps serving others, output and all.
            for i in 0..<20 {
                let r = try await guest.exec(Command(["sh", "-c", "head -c 100000 /dev/zero | wc -c; echo \(i)"]))
                #expect(r.stdoutText == "100000\n\(i)\n")
            }
            // The flood is held back by flow control, not buffered without bound:
            // reading it now yields only what its credit allowed, then more on demand.
            var got = 0
            for try await event in stalled {
                if case .stdout(let b) = event { got += b.count }
                if got > 4 << 20 { break }
            }
            #expect(got > 4 << 20, "the stalled command resumes once it is read")
            try await stalled.signal(SIGKILL)
        }

        @Test("streamed output arrives before the exit, in order")
        func streamOrder() async throws {
            let guest = try await SharedGuest.shared.get()
            let stream = try await guest.stream(
                Command(["sh", "-c", "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three; exit 4"]))
            var events: [ExecEvent] = []
            for try await e in stream { events.append(e) }
            let text = events.compactMap { e -> String? in
                switch e {
                case .stdout(let b): "out:" + String(decoding: b, as: UTF8.self)
                case .stderr(let b): "err:" + String(decoding: b, as: UTF8.self)
                case .exit: nil
                }
            }
            #expect(text == ["out:one\n", "err:two\n", "out:three\n"])
            guard case .exit(let t, let usage)? = events.last else {
                Issue.record("last event is not the exit")
                return
            }
            #expect(t == .exited(4))
            #expect(usage.wallNanoseconds > 500_000_000)
        }

        @Test("stdin from a stream, environment and working directory reach the process")
        func stdinEnvCwd() async throws {
            let guest = try await SharedGuest.shared.get()
            let (chunks, feed) = AsyncStream.makeStream(of: [UInt8].self)
            Task {
                for i in 0..<100 { feed.yield(Array("line \(i)\n".utf8)) }
                feed.finish()
            }
            let r = try await guest.exec(
                Command(
                    ["sh", "-c", "wc -l; echo $GREETING; pwd"], environment: ["GREETING": "hi there"],
                    workingDirectory: "/usr/lib", stdin: .stream(chunks)))
            #expect(r.stdoutText == "100\nhi there\n/usr/lib\n")
        }
    }
}
