import Foundation
import Testing

extension CLISuites {
    /// `vmexec node`: JavaScript through the Node.js SDK shard's runner in a fresh guest.
    @Suite("vmexec node", .timeLimit(.minutes(5)))
    struct NodeCLITests {
        @Test("output, then the completion value; a throw's stack and status 1; process.exit(N); --json")
        func node() async throws {
            let r = try await CLITests.vmexec(["node", "--accel", "tcg", "-c", "console.log('hello'); [1, 2].length * 21"])
            #expect(r.status == 0 && r.stdout == "hello\n42\n", "\(r)")
            let thrown = try await CLITests.vmexec(
                ["node", "--accel", "tcg", "-"], stdin: "function f() { throw new TypeError('bad') }\nf()\n")
            #expect(thrown.status == 1 && thrown.stderr.contains("TypeError: bad") && thrown.stderr.contains("at f (<stdin>:1:"))
            let exited = try await CLITests.vmexec(["node", "--accel", "tcg", "-c", "process.exit(4)"])
            #expect(exited.status == 4, "\(exited)")
            let json = try await CLITests.vmexec(["node", "--accel", "tcg", "--json", "-c", "({ok: true})"])
            let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
            #expect((object?["value"] as? [String: Any])?["json"] as? String == #"{"ok":true}"#, "\(json.stdout)")
        }
    }
}
