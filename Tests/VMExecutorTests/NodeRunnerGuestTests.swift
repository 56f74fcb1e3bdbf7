import Foundation
import SquashMounts
import Testing
import VMExecTestSupport
import VMExecutor

extension RealGuests {
    /// JavaScript through the Node.js SDK shard's runner (`sandbox.node`), in a real guest.
    @Suite("Node.js runner in a real guest", .serialized, .timeLimit(.minutes(10)))
    struct NodeRunnerGuestTests {
        @Test("output, the completion value (a promise awaited, timers drained), exceptions with the code's frames, exits")
        func run() async throws {
            let guest = try await SharedGuest.started()
            defer { Task { await guest.shutdown() } }
            let shard = try #require(TestImages.nodeShardPath, "make images builds sdk-node.shard")
            try await guest.attach(try Shard.open(shard))

            let r = try await guest.node.run(
                NodeCode(
                    """
                    const { execSync } = require('child_process');
                    console.log('hello');
                    console.error('warn');
                    process.stdout.write(execSync('echo from a child').toString());
                    setTimeout(() => console.log('later'), 50);
                    ({ sum: [1, 2, 3].reduce((a, b) => a + b), ok: true })
                    """))
            #expect(r.exception == nil, "\(String(describing: r.exception))")
            #expect(r.stdoutText == "hello\nfrom a child\nlater\n" && r.stderrText == "warn\n", "\(r.stdoutText)")
            #expect(r.value?.repr == "{ sum: 6, ok: true }" && r.value?.json == #"{"sum":6,"ok":true}"#)
            #expect(r.termination == .exited(0))

            let promised = try await guest.node.run(NodeCode("new Promise((ok) => setTimeout(() => ok(42), 20))"))
            #expect(promised.value?.json == "42")

            let thrown = try await guest.node.run(
                NodeCode("function inner() { throw new RangeError('too far') }\ninner()\n", filename: "job.js"))
            let e = try #require(thrown.exception)
            #expect(e.type == "RangeError" && e.message == "too far")
            #expect(e.traceback.contains("at inner (job.js:1:") && !e.traceback.contains("vmexec_node_runner"), "\(e.traceback)")
            #expect(thrown.termination == .exited(1))

            let exited = try await guest.node.run(NodeCode("console.log('bye'); process.exit(3)"))
            #expect(exited.termination == .exited(3) && exited.stdoutText == "bye\n" && exited.exception?.type == "Exit")

            let syntax = try await guest.node.run(NodeCode("let x = ("))
            #expect(syntax.exception?.type == "SyntaxError")

            let nothing = try await guest.node.run(NodeCode("let y = 1"))
            #expect(nothing.value == nil && nothing.exception == nil)
        }

        @Test("without the Node.js shard, the error says which shard to attach")
        func missing() async throws {
            let guest = try await SharedGuest.shared.get()
            await #expect(throws: VMExecError.self) { _ = try await guest.node.run(NodeCode("1")) }
        }
    }
}
