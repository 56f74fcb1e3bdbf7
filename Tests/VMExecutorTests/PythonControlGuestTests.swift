import Foundation
import Testing
import VMExecutor

extension RealGuests {
    /// Execution control (the runner rewriting the code's AST), in a real guest.
    @Suite("Python execution control in a real guest", .serialized, .timeLimit(.minutes(10)))
    struct PythonControlGuestTests {
        static let nested = """
            total = 0
            for i in range(4):
                for j in range(100):
                    total += 1
            total
            """

        @Test("loop limits: outermost and nested loops apart; raise, or break out, report and go on")
        func loopLimits() async throws {
            let python = try await SharedGuest.shared.get().python
            let broken = try await python.run(
                PythonCode(Self.nested, control: PythonControl(maxInnerLoopIterations: 5, onLoopLimit: .break)))
            #expect(broken.value?.json == "20", "each run of the inner loop stops at 5: \(String(describing: broken.exception))")
            #expect(broken.loopLimits == Array(repeating: PythonLoopLimit(line: 3, limit: 5), count: 4))

            let raised = try await python.run(PythonCode(Self.nested, control: PythonControl(maxOuterLoopIterations: 2)))
            let e = try #require(raised.exception)
            #expect(e.type == "LoopLimitExceeded" && e.message.contains("line 2") && e.message.contains("limit of 2"), "\(e)")
            #expect(e.traceback.contains("line 2, in <module>\n    for i in range(4):"), "\(e.traceback)")
            #expect(raised.termination == .exited(1))

            // The code's own `except Exception` does not swallow the limit; a function's loop is outermost in it.
            let guarded = try await python.run(
                PythonCode(
                    "def spin():\n    while True:\n        try:\n            pass\n        except Exception:\n            pass\nspin()\n",
                    control: PythonControl(maxOuterLoopIterations: 1000)))
            #expect(guarded.exception?.type == "LoopLimitExceeded" && guarded.exception?.message.contains("line 2") == true)

            let within = try await python.run(
                PythonCode(Self.nested, control: PythonControl(maxOuterLoopIterations: 4, maxInnerLoopIterations: 100)))
            #expect(within.value?.json == "400" && within.loopLimits.isEmpty)
        }

        @Test("a time limit raises TimeLimitExceeded in the code; the job is not killed")
        func timeLimit() async throws {
            let python = try await SharedGuest.shared.get().python
            let r = try await python.run(
                PythonCode(
                    "import time\nprint('before', flush=True)\ntime.sleep(60)\n",
                    control: PythonControl(timeLimit: .seconds(1))))
            #expect(r.exception?.type == "TimeLimitExceeded", "\(String(describing: r.exception))")
            #expect(r.exception?.traceback.contains("line 3") == true)
            #expect(r.termination == .exited(1) && r.stdoutText == "before\n")
            // Code that ignores the signal is killed once the grace has passed.
            let deaf = try await python.run(
                PythonCode(
                    "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\ntime.sleep(120)\n",
                    control: PythonControl(timeLimit: .seconds(1))))
            #expect(deaf.termination == .timedOut(9), "\(deaf.termination)")
        }

        @Test("loops throttled to a frequency start no faster than it")
        func throttle() async throws {
            let python = try await SharedGuest.shared.get().python
            let r = try await python.run(
                PythonCode(
                    "import time\nstart = time.monotonic()\nn = 0\nwhile n < 11:\n    n += 1\ntime.monotonic() - start\n",
                    control: PythonControl(loopFrequency: 20)))
            let elapsed = try #require(Double(r.value?.json ?? ""), "\(String(describing: r.exception))")
            // 11 iterations at 20 Hz: the 11th starts 10 periods (0.5 s) after the first, never sooner.
            #expect(elapsed >= 0.49, "\(elapsed) s")
            let free = try await python.run(
                PythonCode("import time\nstart = time.monotonic()\nn = 0\nwhile n < 11:\n    n += 1\ntime.monotonic() - start\n"))
            #expect((Double(free.value?.json ?? "") ?? 1) < 0.49, "the same loop unthrottled is not held back")
        }

        @Test("steps report each statement's line and the watched variables; the result their final values")
        func steps() async throws {
            let python = try await SharedGuest.shared.get().python
            var streamed: [PythonStep] = []
            var result: PythonResult?
            for try await event in try await python.stream(
                PythonCode(
                    "x = 1\nfor k in range(2):\n    x += k\nx * 10\n",
                    control: PythonControl(trace: true, watch: ["x", "absent"])))
            {
                if case .step(let s) = event { streamed.append(s) }
                if case .result(let r) = event { result = r }
            }
            #expect(streamed.map(\.line) == [1, 2, 3, 3, 4], "\(streamed)")
            #expect(streamed.first?.variables.isEmpty == true, "x does not exist before line 1 ran")
            #expect(streamed.last?.variables["x"]?.json == "2")
            let r = try #require(result)
            #expect(r.steps == streamed && r.value?.json == "20" && r.watched["x"]?.json == "2" && r.watched["absent"] == nil)

            let capped = try await python.run(
                PythonCode("for i in range(50):\n    pass\n", control: PythonControl(trace: true, traceLimit: 10)))
            #expect(capped.steps.count == 10 && capped.dropped["step"] == 41, "\(capped.dropped)")
        }

        @Test("the error policy: raise, wrap with the line, continue past, or stop quietly; ignored errors reported")
        func errorPolicy() async throws {
            let python = try await SharedGuest.shared.get().python
            let code = "a = 1\nb = 1 / 0\nc = a + 1\nc\n"
            let raised = try await python.run(PythonCode(code))
            #expect(raised.exception?.type == "ZeroDivisionError")

            let wrapped = try await python.run(PythonCode(code, control: PythonControl(onError: .wrap)))
            #expect(wrapped.exception?.type == "StatementError" && wrapped.exception?.message.contains("line 2") == true)
            #expect(wrapped.exception?.traceback.contains("ZeroDivisionError") == true, "the cause is in the traceback")

            let continued = try await python.run(PythonCode(code, control: PythonControl(onError: .continue)))
            #expect(continued.value?.json == "2" && continued.exception == nil)
            #expect(
                continued.ignoredErrors.map(\.line) == [2] && continued.ignoredErrors.first?.error.type == "ZeroDivisionError")

            let stopped = try await python.run(PythonCode(code, control: PythonControl(onError: .stop)))
            #expect(stopped.value == nil && stopped.exception == nil && stopped.termination == .exited(0))
            #expect(stopped.ignoredErrors.map(\.line) == [2])

            // Inside a function, exceptions are the code's own: the policy is for the script's statements.
            let inner = try await python.run(
                PythonCode(
                    "def f():\n    try:\n        1 / 0\n    except ZeroDivisionError:\n        return 'handled'\nf()\n",
                    control: PythonControl(onError: .continue)))
            #expect(inner.value?.json == "\"handled\"" && inner.ignoredErrors.isEmpty)
            // A control loop skips a failing statement and goes on with the next.
            let loop = try await python.run(
                PythonCode(
                    "ok = 0\nfor i in range(4):\n    v = 10 // (i % 2)\n    ok += 1\nok\n",
                    control: PythonControl(onError: .continue)))
            #expect(loop.value?.json == "4" && loop.ignoredErrors.map(\.line) == [3, 3])
        }

        @Test("restricted mode: safe builtins and allowed modules only; internals out of reach; refusals say why")
        func restricted() async throws {
            let python = try await SharedGuest.shared.get().python
            let on = PythonControl(restricted: true)
            let math = try await python.run(PythonCode("import math, json\njson.dumps(math.floor(2.5))", control: on))
            #expect(math.value?.json == "\"2\"", "\(String(describing: math.exception))")
            let os = try await python.run(PythonCode("import os\nos.system('id')", control: on))
            #expect(os.exception?.type == "ImportError" && os.exception?.message.contains("not allowed") == true)
            let dunder = try await python.run(PythonCode("().__class__.__bases__[0].__subclasses__()", control: on))
            #expect(
                dunder.exception?.type == "RestrictedCodeError" && dunder.exception?.message.contains("is not allowed") == true)
            let open = try await python.run(PythonCode("open('/etc/passwd').read()", control: on))
            #expect(open.exception?.type == "NameError")
            let leak = try await python.run(PythonCode("import datetime\ndatetime.sys.modules", control: on))
            #expect(
                leak.exception?.type == "AttributeError",
                "a module's other modules stay out of reach: \(String(describing: leak.value))")
            let format = try await python.run(PythonCode("'{0.__class__}'.format(1)", control: on))
            #expect(format.exception?.type == "RestrictedCodeError")
            let allowed = try await python.run(
                PythonCode(
                    "import shlex\nshlex.split('a b')", control: PythonControl(restricted: true, allowedModules: ["shlex"])))
            #expect(allowed.value?.json == #"["a", "b"]"#, "\(String(describing: allowed.exception))")
            let classes = try await python.run(
                PythonCode("class P:\n    def __init__(self, v):\n        self.v = v\nP(3).v", control: on))
            #expect(classes.exception?.type == "RestrictedCodeError", "dunder methods are refused too")
            let off = try await python.run(PythonCode("import os\nos.getpid() > 0"))
            #expect(off.value?.json == "true", "off by default")
        }

        @Test("bad control is refused before the guest runs anything; calls take the same controls")
        func refusals() async throws {
            let python = try await SharedGuest.shared.get().python
            for bad in [
                PythonControl(timeLimit: .zero), PythonControl(maxOuterLoopIterations: -1), PythonControl(loopFrequency: 0),
                PythonControl(watch: ["not a name"]), PythonControl(restricted: true, allowedModules: ["os;"]),
            ] {
                await #expect(throws: VMExecError.self) { _ = try await python.run(PythonCode("1", control: bad)) }
            }
            let unknownBuiltin = try await python.run(
                PythonCode("1", control: PythonControl(restricted: true, allowedBuiltins: ["nosuchbuiltin"])))
            #expect(unknownBuiltin.exception?.message.contains("not a builtin") == true)

            let call = try await python.call(
                PythonCall(
                    "spin",
                    in: PythonModule(
                        source: "def spin(n):\n    while True:\n        n += 1\n",
                        control: PythonControl(maxOuterLoopIterations: 10)),
                    arguments: "[0]"))
            #expect(call.exception?.type == "LoopLimitExceeded")
            let byName = try await python.call(
                PythonCall("dumps", in: PythonModule(target: "json", control: PythonControl(trace: true)), arguments: "[1]"))
            #expect(byName.exception?.message.contains("give the call's source or a .py path") == true)
        }
    }
}
