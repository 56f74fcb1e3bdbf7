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
        let p = try Self.start(["30"])
        let long = Task { await p.waitForExit(timeout: .seconds(60)) }
        try await Task.sleep(for: .milliseconds(300))  // the long wait is registered
        #expect(await p.waitForExit(timeout: .milliseconds(100)) == nil)
        // The process still runs; only now does it end, and the long wait must see that.
        p.kill()
        #expect(
            await long.value?.description == "QEMU was killed by signal 9 (SIGKILL)",
            "the short wait's timeout ended the long wait too")
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
