import Foundation
import Testing

extension CLISuites {
    /// `vmexec python`: code through the SDK shard's runner in a fresh guest.
    @Suite("vmexec python", .timeLimit(.minutes(5)))
    struct PythonCLITests {
        @Test("output, then the final value's repr; an exception's traceback and status 1; --json; stdin; --call")
        func python() async throws {
            let r = try await CLITests.vmexec(["python", "--accel", "tcg", "-c", "print('hello')\n6 * 7"])
            #expect(r.status == 0 && r.stdout == "hello\n42\n", "\(r)")

            let failed = try await CLITests.vmexec(["python", "--accel", "tcg", "-c", "def f():\n    1 / 0\nf()"])
            #expect(failed.status == 1, "\(failed)")
            #expect(failed.stderr.contains("line 2, in f") && failed.stderr.contains("ZeroDivisionError"), "\(failed.stderr)")

            let json = try await CLITests.vmexec(["python", "--accel", "tcg", "--json", "-"], stdin: "print('x')\n[1, 'two']\n")
            #expect(json.status == 0, "\(json.stderr)")
            let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
            let value = object?["value"] as? [String: Any]
            #expect(value?["repr"] as? String == "[1, 'two']", "\(json.stdout)")
            #expect(value?["json"] as? String == "[1, \"two\"]", "\(json.stdout)")
            #expect(object?["stdout"] as? String == "x\n")

            let called = try await CLITests.vmexec([
                "python", "--accel", "tcg", "-c", "def add(a, b=0):\n    return {'sum': a + b}", "--call", "add", "--args", "[2]",
                "--kwargs", #"{"b": 5}"#,
            ])
            #expect(called.status == 0 && called.stdout == #"{"sum": 7}"# + "\n", "\(called)")
            let module = try await CLITests.vmexec(["python", "--accel", "tcg", "--call", "json:dumps", "--args", "[[1]]"])
            #expect(module.status == 0 && module.stdout == #""[1]""# + "\n", "\(module)")
            let badArgs = try await CLITests.vmexec(["python", "--accel", "tcg", "--call", "json:dumps", "--args", "nope"])
            #expect(badArgs.status == 125 && badArgs.stderr.contains("JSON array"), "\(badArgs.stderr)")

            let usage = try await CLITests.vmexec(["python", "--accel", "tcg"])
            #expect(usage.status == 125 && usage.stderr.contains("-c CODE"), "\(usage.stderr)")
        }
    }
}
