import Foundation
import Testing
import VMExecTestSupport

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

        @Test("execution control flags: loop limits, steps with watched variables, the error policy, restricted mode")
        func control() async throws {
            let code = "total = 0\nfor i in range(3):\n    for j in range(10):\n        total += 1\nbad = 1 / 0\ntotal\n"
            let r = try await CLITests.vmexec(
                [
                    "python", "--accel", "tcg", "--max-inner-loops", "2", "--on-loop-limit", "break", "--on-error", "continue",
                    "--trace", "--watch", "total", "-",
                ], stdin: code)
            #expect(r.status == 0 && r.stdout == "6\n", "\(r)")
            #expect(r.stderr.contains("vmexec: line 3: the loop stopped at its limit of 2 iterations"), "\(r.stderr)")
            #expect(r.stderr.contains("vmexec: line 6: total=6"), "\(r.stderr)")
            #expect(r.stderr.contains("vmexec: line 5: ignored ZeroDivisionError"), "\(r.stderr)")

            let json = try await CLITests.vmexec(
                ["python", "--accel", "tcg", "--json", "--max-outer-loops", "1", "--watch", "total", "-"], stdin: code)
            #expect(json.status == 1, "\(json)")
            let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
            #expect((object?["error"] as? [String: Any])?["type"] as? String == "LoopLimitExceeded", "\(json.stdout)")
            #expect(((object?["watched"] as? [String: Any])?["total"] as? [String: Any])?["json"] as? String == "10")

            let restricted = try await CLITests.vmexec(["python", "--accel", "tcg", "--restricted", "-c", "import os"])
            #expect(restricted.status == 1 && restricted.stderr.contains("not allowed in restricted mode"), "\(restricted)")
            let refused = try await CLITests.vmexec(["python", "--accel", "tcg", "--on-error", "maybe", "-c", "1"])
            #expect(refused.status == 64 || refused.status == 125, "\(refused)")
            #expect(refused.stderr.contains("raise, wrap, continue or stop"), "\(refused.stderr)")
        }

        @Test("--outputs saves figures as files; --json carries them in base64")
        func outputs() async throws {
            let numpy = try #require(TestImages.libsShardPath("numpy"))
            let matplotlib = try #require(TestImages.libsShardPath("matplotlib"))
            let folder = FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-outputs-\(UUID())").path
            defer { try? FileManager.default.removeItem(atPath: folder) }
            let code = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\n'drawn'"
            let r = try await CLITests.vmexec([
                "python", "--accel", "tcg", "--shard", numpy, "--shard", matplotlib, "--outputs", folder, "-c", code,
            ])
            #expect(r.status == 0 && r.stdout == "'drawn'\n", "\(r)")
            #expect(r.stderr.contains("image/png saved to \(folder)/output-1.png"), "\(r.stderr)")
            let png = try #require(FileManager.default.contents(atPath: "\(folder)/output-1.png"))
            #expect(Array(png.prefix(4)) == [0x89, 0x50, 0x4E, 0x47])

            let json = try await CLITests.vmexec([
                "python", "--accel", "tcg", "--shard", numpy, "--shard", matplotlib, "--json", "-c", code,
            ])
            let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
            let outputs = object?["outputs"] as? [[String: String]]
            #expect(outputs?.first?["mimeType"] == "image/png", "\(json.stdout.prefix(300))")
            #expect(Data(base64Encoded: outputs?.first?["data"] ?? "").map { Array($0.prefix(4)) } == [0x89, 0x50, 0x4E, 0x47])
        }
    }
}
