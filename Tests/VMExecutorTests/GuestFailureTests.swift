import Foundation
import Testing
import VMExecutor

/// What happens when the guest dies under a waiting call.
@Suite("Guest failures", .timeLimit(.minutes(5)))
struct GuestFailureTests {
    @Test("QEMU killed with SIGKILL mid-command: the call fails within a second, and a fresh start works")
    func qemuKilled() async throws {
        let sandbox = Sandbox(configuration: SharedGuest.configuration(), logger: SharedGuest.logger())
        try await sandbox.start()
        let pid = try #require(await sandbox.qemuProcessID)
        let running = Task { try await sandbox.exec(Command(["sleep", "60"])) }
        // Make sure the command is running in the guest before the kill.
        try await Task.sleep(for: .milliseconds(500))
        let clock = ContinuousClock()
        let killedAt = clock.now
        kill(pid, SIGKILL)
        let error = await #expect(throws: VMExecError.self) { try await running.value }
        let took = clock.now - killedAt
        #expect(took < .seconds(1), "the waiting call took \(took) to fail")
        #expect(error?.code == .guestStopped)
        #expect(error?.message.contains("SIGKILL") == true, "message: \(error?.message ?? "")")
        #expect(await sandbox.isRunning == false)
        // Later calls fail clearly too, until start() boots a fresh guest.
        await #expect(throws: VMExecError.self) { try await sandbox.exec(Command(["true"])) }
        try await sandbox.start()
        #expect(try await sandbox.exec(Command(["echo", "again"])).stdoutText == "again\n")
        await sandbox.shutdown()
    }

    @Test("shutdown powers the guest off cleanly and a call afterwards says the sandbox is not running")
    func shutdownThenCall() async throws {
        let sandbox = Sandbox(configuration: SharedGuest.configuration(), logger: SharedGuest.logger())
        try await sandbox.start()
        #expect(try await sandbox.exec(Command(["true"])).termination == .exited(0))
        await sandbox.shutdown()
        let error = await #expect(throws: VMExecError.self) { try await sandbox.exec(Command(["true"])) }
        #expect(error?.code == .notRunning)
    }

    @Test("images that are not there: a clear error naming make images")
    func missingImages() throws {
        let error = #expect(throws: VMExecError.self) {
            try GuestImages.locate(explicit: "/nonexistent/vmexec-images")
        }
        #expect(error?.code == .imagesNotFound)
        #expect(error?.message.contains("make images") == true)
    }
}
