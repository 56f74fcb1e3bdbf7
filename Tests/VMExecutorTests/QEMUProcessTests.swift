import Foundation
import Testing
@testable import VMExecutor

/// The process wrapper on its own, with a stand-in program instead of QEMU.
@Suite("QEMUProcess", .timeLimit(.minutes(1)))
struct QEMUProcessTests {
    static func start(_ args: [String]) throws -> QEMUProcess {
        let log = NSTemporaryDirectory() + "/vmexec-qemuprocess-test-\(UUID().uuidString).log"
        return try QEMUProcess(binary: "sleep", arguments: args, logPath: log) { _ in }
    }

    @Test("a short wait timing out does not cut a longer wait short")
    func independentTimeouts() async throws {
        let p = try Self.start(["1"])
        async let short = p.waitForExit(timeout: .milliseconds(100))
        async let long = p.waitForExit(timeout: .seconds(20))
        #expect(await short == nil, "the short wait ended before the process")
        let ending = await long
        #expect(ending?.description == "QEMU exited with status 0", "the long wait must see the exit, not a timeout")
    }

    @Test("a wait whose timeout is already past returns at once, and a kill is reported as such")
    func killReported() async throws {
        let p = try Self.start(["30"])
        #expect(await p.waitForExit(timeout: .zero) == nil)
        p.kill()
        let ending = await p.waitForExit(timeout: .seconds(10))
        #expect(ending?.description == "QEMU was killed by signal 9 (SIGKILL)")
    }
}
