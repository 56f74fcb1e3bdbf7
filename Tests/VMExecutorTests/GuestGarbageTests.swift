import Foundation
import Testing

@testable import SerialChannel
@testable import VMExecutor

extension RealGuests {
    /// The real init fed garbage by the host: every frame gets an answer, the
    /// init never crashes (a crash would panic the kernel and end QEMU), and
    /// after an unrecoverable header the host reconnects to the same guest.
    @Suite("Garbage into the real init", .timeLimit(.minutes(5)))
    struct GuestGarbageTests {
        @Test("refused frames are answered and the guest keeps serving; a fatal header costs only the connection")
        func garbage() async throws {
            let sandbox = try await SharedGuest.started()
            let qemu = try #require(await sandbox.qemuProcessID)
            let channel = try #require(await sandbox.channelForTesting)

            // Well-framed but wrong: unknown type, control frame on a stream, malformed
            // EXEC, DATA/WINDOW/SIGNAL for no process, guest-only types from the host.
            // Streams far above the ones the host allocates (from 1 up), so that the
            // guest's ERROR replies cannot land on the test's own commands.
            let far: UInt32 = 0x7000_0000
            var badExec: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  // argc 0
            badExec += [1, 0, 0x2f]
            let frames: [Frame] = [
                Frame(type: 0x7e, stream: far + 1, payload: [1, 2, 3]),
                Frame(.ping, stream: far + 9),
                Frame(.exec, stream: far + 77, payload: badExec),
                Frame(.data, sub: 0, stream: far + 5, payload: [1]),
                Frame(.window, sub: 1, stream: far + 5, payload: [0, 1, 0, 0]),
                Frame(.signal, stream: far + 5, payload: [9, 0, 0, 0]),
                Frame(.exit, stream: far + 3, payload: ExitStatus(termination: .exited(0)).encoded()),
                Frame(.started, stream: far + 3, payload: [1, 0, 0, 0]),
            ]
            for f in frames { try await channel.sendRaw(f.encoded()) }
            for _ in 0..<200 {
                let junk = (0..<Int.random(in: 1...64)).map { _ in UInt8.random(in: 0...255) }
                try await channel.sendRaw(
                    Frame(type: UInt8.random(in: 0x20...0xff), stream: far + UInt32.random(in: 0...9), payload: junk).encoded())
            }
            // The same connection still runs commands.
            #expect(try await sandbox.exec(Command(["echo", "still here"])).stdoutText == "still here\n")

            // A header claiming 1 GiB: the init refuses it, drops the session and
            // waits for the next HELLO; the host reconnects to the same guest.
            try await channel.sendRaw([0, 0, 0, 0x40, 0x12, 1, 0, 0, 1, 0, 0, 0] + [UInt8](repeating: 0xaa, count: 100))
            try await sandbox.reconnect()
            #expect(try await sandbox.exec(Command(["echo", "after resync"])).stdoutText == "after resync\n")
            #expect(await sandbox.qemuProcessID == qemu, "the guest must be the same one, not a restart")
            #expect(kill(qemu, 0) == 0)
            await sandbox.shutdown()
        }
    }
}
