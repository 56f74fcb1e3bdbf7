import Foundation
import Testing
import VMExecutor

extension RealGuests {
    /// Code through the SDK shard's runner (`sandbox.python`), in a real guest.
    @Suite("Python runner in a real guest", .serialized, .timeLimit(.minutes(10)))
    struct PythonRunnerGuestTests {
        @Test("the final expression's value comes back as repr and JSON; output streams as it comes")
        func finalValue() async throws {
            let guest = try await SharedGuest.shared.get()
            let r = try await guest.python.run(
                PythonCode(
                    """
                    import os, sys
                    print("to stdout")
                    print("to stderr", file=sys.stderr)
                    os.system("echo from a child process")
                    os.write(1, b"straight to fd 1\\n")
                    {"sum": sum(range(10)), "items": [1, 2.5, None, "x"]}
                    """))
            #expect(r.exception == nil, "\(String(describing: r.exception))")
            #expect(r.termination == .exited(0))
            #expect(r.stdoutText == "to stdout\nfrom a child process\nstraight to fd 1\n", "\(r.stdoutText)")
            #expect(r.stderrText == "to stderr\n")
            #expect(r.value?.repr == "{'sum': 45, 'items': [1, 2.5, None, 'x']}")
            let json = try #require(r.value?.json)
            let decoded = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
            #expect(decoded?["sum"] as? Int == 45)

            let none = try await guest.python.run(PythonCode("x = 1"))
            #expect(none.value == nil && none.exception == nil)
            let opaque = try await guest.python.run(PythonCode("object()"))
            #expect(opaque.value?.repr.hasPrefix("<object object at") == true && opaque.value?.json == nil)

            var streamed: [String] = []
            for try await event in try await guest.python.stream(
                PythonCode("import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)\n'done'"))
            {
                switch event {
                case .stdout(let b): streamed.append(String(decoding: b, as: UTF8.self))
                case .result(let r): #expect(r.value?.repr == "'done'")
                default: break
                }
            }
            #expect(streamed.count >= 2, "output came in pieces as printed, not at the end: \(streamed)")
            #expect(streamed.joined() == "0\n1\n2\n")
        }

        @Test("an exception comes back with the code's frames only; a syntax error with where it is")
        func exceptions() async throws {
            let guest = try await SharedGuest.shared.get()
            let r = try await guest.python.run(
                PythonCode(
                    "def inner():\n    raise KeyError('missing')\n\ndef outer():\n    inner()\n\nouter()\n", filename: "job.py"))
            let e = try #require(r.exception)
            #expect(e.type == "KeyError" && e.message == "'missing'")
            #expect(e.traceback.contains("File \"job.py\", line 7, in <module>"), "\(e.traceback)")
            #expect(e.traceback.contains("File \"job.py\", line 2, in inner\n    raise KeyError('missing')"))
            #expect(!e.traceback.contains("vmexec_runner"), "no frame of the runner: \(e.traceback)")
            #expect(r.termination == .exited(1))

            let syntax = try await guest.python.run(PythonCode("x = (\n"))
            #expect(syntax.exception?.type == "SyntaxError")
            #expect(syntax.exception?.traceback.contains("Traceback") == false)

            let exit = try await guest.python.run(PythonCode("import sys\nsys.exit(0)"))
            #expect(exit.exception == nil && exit.termination == .exited(0))
        }

        @Test("a function is called with JSON arguments: from source, a module, a file; its JSON back or its error")
        func calls() async throws {
            let guest = try await SharedGuest.shared.get()
            let source =
                "def scale(values, factor=1):\n    print('scaling', len(values))\n    return [v * factor for v in values]\n"
            let r = try await guest.python.call(
                PythonCall(
                    "scale", in: PythonModule(source: source), arguments: "[[1, 2, 3]]", keywordArguments: #"{"factor": 10}"#))
            #expect(r.value?.json == "[10, 20, 30]" && r.stdoutText == "scaling 3\n", "\(r)")
            let module = try await guest.python.call(
                PythonCall("dumps", in: PythonModule(target: "json"), arguments: #"[{"a": [1]}]"#))
            #expect(module.value?.json == #""{\"a\": [1]}""#, "\(String(describing: module.value))")
            try await guest.writeFile("/home/vmexec/tools.py", contents: Array("def twice(x):\n    return 2 * x\n".utf8))
            let file = try await guest.python.call(
                PythonCall("twice", in: PythonModule(target: "/home/vmexec/tools.py"), arguments: "[21]"))
            #expect(file.value?.json == "42", "\(String(describing: file.exception))")

            let notJSON = try await guest.python.call(
                PythonCall("f", in: PythonModule(source: "def f():\n    return object()\n")))
            #expect(notJSON.exception?.type == "TypeError" && notJSON.value == nil)
            let raised = try await guest.python.call(
                PythonCall("f", in: PythonModule(source: "def f():\n    raise RuntimeError('no')\n")))
            #expect(raised.exception?.type == "RuntimeError" && raised.exception?.traceback.contains("line 2, in f") == true)
            let missing = try await guest.python.call(PythonCall("absent", in: PythonModule(source: "x = 1")))
            #expect(missing.exception?.type == "AttributeError")
            await #expect(throws: VMExecError.self) {
                _ = try await guest.python.call(PythonCall("f", in: PythonModule(source: "def f(): pass"), arguments: "{}"))
            }
        }

        @Test("code past its timeout is killed, with what it started; limits hold as for a command")
        func limits() async throws {
            let guest = try await SharedGuest.shared.get()
            let slow = try await guest.python.run(
                PythonCode("import subprocess, time\nsubprocess.Popen(['sleep', '300'])\ntime.sleep(300)", timeout: .seconds(2)))
            #expect(slow.termination == .timedOut(9), "\(slow.termination)")
            let left = try await guest.processes().filter { $0.arguments.first == "sleep" }
            #expect(left.isEmpty, "nothing it started is left: \(left)")
            let hog = try await guest.python.run(
                PythonCode("b = bytearray(512 << 20)\nlen(b)", limits: Limits(memoryBytes: 64 << 20, processes: 64)))
            #expect(hog.value == nil)
            #expect(hog.exception?.type == "MemoryError" || hog.termination != .exited(0), "\(hog.termination)")
        }
    }
}
