import Foundation
import PersistOverlay
import Testing

/// Host programs run from many threads at once, as a daemon's store work does.
@Suite("Host tools")
struct HostToolTests {
    @Test("programs started from many tasks at once each get their own output, whole")
    func concurrent() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<8 {
                group.addTask {
                    for run in 0..<25 {
                        let r = try HostTool.run([
                            "sh", "-c", "echo out-\(task)-\(run); echo err-\(task)-\(run) >&2; exit \(run % 3)",
                        ])
                        #expect(r.status == Int32(run % 3))
                        #expect(r.output == "out-\(task)-\(run)\nerr-\(task)-\(run)\n", "\(r.output)")
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    @Test("endless output keeps its start and its end, the middle dropped and said so")
    func boundedOutput() throws {
        let r = try HostTool.run(["sh", "-c", "echo first; yes | head -c 20000000; echo last"])
        #expect(r.status == 0)
        #expect(r.output.utf8.count < (1 << 20) + (64 << 10) + 100)
        #expect(r.output.hasPrefix("first\n") && r.output.hasSuffix("last\n"))
        #expect(r.output.contains("bytes of output dropped"))
    }

    @Test("a program that is not there, a signal death, a working directory")
    func edges() throws {
        #expect(try HostTool.run(["vmexec-no-such-tool"]).status == 127)
        #expect(try HostTool.run(["sh", "-c", "kill -KILL $$"]).status == 128 + SIGKILL)
        #expect(try HostTool.run(["pwd"], in: "/usr").output == "/usr\n")
    }
}
