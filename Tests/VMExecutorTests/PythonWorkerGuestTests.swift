import Foundation
import Testing
import VMExecutor

extension RealGuests {
    /// Persistent Python workers (`sandbox.python.worker`), in a real guest.
    @Suite("Python workers in a real guest", .serialized, .timeLimit(.minutes(10)))
    struct PythonWorkerGuestTests {
        static let counter = """
            import os, signal, time
            count = 0
            def bump(n=1):
                global count
                count += n
                print("count", count)
                return {"count": count, "pid": os.getpid()}
            def fail():
                raise ValueError("bad input")
            def die():
                os._exit(3)
            def deaf():
                signal.signal(signal.SIGALRM, signal.SIG_IGN)
                time.sleep(120)
            """

        @Test("a worker keeps its state between calls, each with its own output, usage and errors")
        func state() async throws {
            let python = try await SharedGuest.shared.get().python
            let worker = try await python.worker(PythonModule(source: Self.counter, filename: "counter.py"))
            let first = try await worker.call("bump")
            let second = try await worker.call("bump", keywordArguments: #"{"n": 5}"#)
            #expect(first.stdoutText == "count 1\n" && second.stdoutText == "count 6\n", "each call's output is its own")
            let a = try JSONSerialization.jsonObject(with: Data((first.value?.json ?? "").utf8)) as? [String: Int]
            let b = try JSONSerialization.jsonObject(with: Data((second.value?.json ?? "").utf8)) as? [String: Int]
            #expect(a?["count"] == 1 && b?["count"] == 6)
            #expect(a?["pid"] != nil && a?["pid"] == b?["pid"], "one process answers both")
            // The call's own usage, measured in the worker (absent, it would be all zeros). Its wall
            // time alone is not asserted: a sub-millisecond call has read 0 ns on a loaded machine.
            let used = second.usage
            #expect(second.termination == .exited(0) && used.maxRSSKiB > 0, "\(used)")
            #expect(used.wallNanoseconds + used.userMicroseconds + used.systemMicroseconds > 0, "\(used)")

            let failed = try await worker.call("fail")
            #expect(failed.exception?.type == "ValueError" && failed.termination == .exited(1))
            #expect(failed.exception?.traceback.contains("counter.py\", line 9, in fail") == true)
            let missing = try await worker.call("absent")
            #expect(missing.exception?.type == "AttributeError")
            await #expect(throws: VMExecError.self) { _ = try await worker.call("bump", arguments: "{}") }
            let after = try await worker.call("bump")
            #expect(
                after.value?.json?.contains("\"count\": 7") == true, "errors leave the state: \(String(describing: after.value))")
            #expect(try await worker.close() == .exited(0))
            await #expect(throws: VMExecError.self) { _ = try await worker.call("bump") }
        }

        @Test("a worker dropped without close does not stay in the guest")
        func dropped() async throws {
            let guest = try await SharedGuest.shared.get()
            var pid: Int?
            do {
                let worker = try await guest.python.worker(PythonModule(source: Self.counter))
                let r = try await worker.call("bump")
                pid = (try JSONSerialization.jsonObject(with: Data((r.value?.json ?? "").utf8)) as? [String: Int])?["pid"]
            }
            let gone = try #require(pid)
            var left = true
            for _ in 0..<100 where left {
                left = try await guest.processes().contains { $0.pid == UInt32(gone) }
                if left { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(!left, "the worker's process \(gone) ended with the worker")
        }

        @Test("calls from many tasks run one at a time, none lost")
        func concurrentCalls() async throws {
            let python = try await SharedGuest.shared.get().python
            let worker = try await python.worker(PythonModule(source: Self.counter))
            let values = try await withThrowingTaskGroup(of: String.self) { group in
                for _ in 0..<8 { group.addTask { try await worker.call("bump").stdoutText } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(Set(values) == Set((1...8).map { "count \($0)\n" }), "\(values)")
            try await worker.close()
        }

        @Test("a worker that dies fails its call and every later one; one past its time limit is killed")
        func endings() async throws {
            let python = try await SharedGuest.shared.get().python
            let worker = try await python.worker(PythonModule(source: Self.counter))
            let died = await #expect(throws: VMExecError.self) { _ = try await worker.call("die") }
            #expect(died?.message.contains("start a new worker") == true, "\(String(describing: died))")
            await #expect(throws: VMExecError.self) { _ = try await worker.call("bump") }

            let limited = try await python.worker(
                PythonModule(source: Self.counter, control: PythonControl(timeLimit: .seconds(1))))
            let killed = await #expect(throws: VMExecError.self) { _ = try await limited.call("deaf") }
            #expect(
                killed?.message.contains("killed") == true || killed?.message.contains("signal") == true,
                "\(String(describing: killed))")

            let broken = await #expect(throws: VMExecError.self) {
                _ = try await python.worker(PythonModule(source: "def f(:\n", filename: "broken.py"))
            }
            #expect(broken?.message.contains("SyntaxError") == true && broken?.message.contains("broken.py") == true)
        }
    }
}
