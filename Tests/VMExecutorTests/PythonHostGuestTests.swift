import Foundation
import Synchronization
import Testing
import VMExecutor

extension RealGuests {
    /// Shared values and host functions (Swift closures the code calls by name), in a real guest.
    @Suite("Python shared values and host functions in a real guest", .serialized, .timeLimit(.minutes(10)))
    struct PythonHostGuestTests {
        @Test("shared values go in as globals and come back with their final state; host functions answer the code")
        func sharedAndCallbacks() async throws {
            let python = try await SharedGuest.shared.get().python
            let calls = Mutex<[PythonHostCall]>([])
            let functions: [String: PythonHostFunction] = [
                "read_sensor": { call in
                    calls.withLock { $0.append(call) }
                    return #"{"value": 21.5, "unit": "C"}"#
                },
                "refuse": { _ in throw VMExecError(.invalidRequest, "the valve is locked") },
            ]
            let code = """
                print("before")
                reading = read_sensor("t1", retries=2)
                config["last"] = reading["value"]
                log.append("read")
                try:
                    refuse()
                except CallbackError as e:
                    log.append(str(e))
                print("after")
                reading["unit"]
                """
            let r = try await python.run(
                PythonCode(code, shared: ["config": #"{"limit": 30}"#, "log": "[]"], hostFunctions: functions))
            #expect(r.exception == nil, "\(String(describing: r.exception))")
            #expect(r.value?.json == "\"C\"" && r.stdoutText == "before\nafter\n")
            #expect(r.shared["config"]?.json == #"{"limit": 30, "last": 21.5}"#, "\(r.shared)")
            #expect(r.shared["log"]?.json == #"["read", "refuse: the valve is locked"]"#, "\(r.shared)")
            let made = calls.withLock { $0 }
            #expect(made.count == 1 && made.first?.name == "read_sensor")
            #expect(made.first?.arguments == #"["t1"]"# && made.first?.keywordArguments == #"{"retries":2}"#)

            // Only the exposed names exist; what is not JSON never leaves the guest.
            let unexposed = try await python.run(PythonCode("open_door()", hostFunctions: functions))
            #expect(unexposed.exception?.type == "NameError")
            let notJSON = try await python.run(PythonCode("read_sensor(object())", hostFunctions: functions))
            #expect(notJSON.exception?.type == "TypeError" && notJSON.exception?.message.contains("must be JSON") == true)
            await #expect(throws: VMExecError.self) {
                _ = try await python.run(PythonCode("1", shared: ["__builtins__": "{}"]))
            }
            await #expect(throws: VMExecError.self) { _ = try await python.run(PythonCode("1", shared: ["x": "{nope"])) }
        }

        @Test("a worker's module keeps shared values between calls and calls host functions during them")
        func worker() async throws {
            let python = try await SharedGuest.shared.get().python
            let counter = Mutex(0)
            let worker = try await python.worker(
                PythonModule(
                    source: "def tick():\n    state['ticks'] += 1\n    return next_id()\n", shared: ["state": #"{"ticks": 0}"#],
                    hostFunctions: [
                        "next_id": { _ in
                            counter.withLock {
                                $0 += 1
                                return "\($0)"
                            }
                        }
                    ]))
            let first = try await worker.call("tick")
            let second = try await worker.call("tick")
            #expect(first.value?.json == "1" && second.value?.json == "2")
            #expect(second.shared["state"]?.json == #"{"ticks": 2}"#, "\(second.shared)")
            try await worker.close()
        }
    }
}
