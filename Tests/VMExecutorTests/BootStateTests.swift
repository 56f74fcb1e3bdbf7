import Foundation
import Testing
import VMExecutor

extension RealGuests {
    /// Starting from a saved boot state instead of booting.
    @Suite("Saved boot states", .serialized, .timeLimit(.minutes(5)))
    struct BootStateTests {
        /// A configuration with its own state directory, so these tests neither
        /// see nor disturb the states other tests use.
        static func configuration(_ dir: URL) -> SandboxConfiguration {
            var c = SharedGuest.configuration()
            c.bootStateDirectory = dir
            c.reuseWarmState = false  // the boot state alone (WarmStateTests has the other)
            return c
        }

        static func freshDirectory() throws -> URL {
            // A quote in the name: paths reach QEMU through a shell.
            let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-state's-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            return dir
        }

        static func guestSeconds(_ s: Sandbox) async throws -> Double {
            Double(try await s.exec(Command(["date", "+%s.%N"])).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }

        @Test("after one cold boot, starts restore; restored guests keep the host's time and draw their own random numbers")
        func restore() async throws {
            let dir = try Self.freshDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            let first = Sandbox(configuration: Self.configuration(dir), logger: SharedGuest.logger())
            try await first.start()
            #expect(await first.restoredFromSavedState == false)
            let states = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".state") }
            #expect(states.count == 1, "a cold boot saves one state")
            // The guest that was saved goes on working.
            #expect(try await first.exec(Command(["echo", "after save"])).stdoutText == "after save\n")
            await first.shutdown()

            try await Task.sleep(for: .seconds(2))  // restored guests must not wake in the past
            var randoms: [String] = []
            for _ in 0..<2 {
                let s = Sandbox(configuration: Self.configuration(dir), logger: SharedGuest.logger())
                try await s.start()
                #expect(await s.restoredFromSavedState)
                let guestNow = try await Self.guestSeconds(s)
                #expect(
                    abs(guestNow - Date().timeIntervalSince1970) < 2,
                    "guest clock is off by \(guestNow - Date().timeIntervalSince1970) s")
                randoms.append(try await s.exec(Command(["sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"])).stdoutText)
                #expect(try await s.exec(Command(["python3", "-c", "print(6 * 7)"])).stdoutText == "42\n")
                await s.shutdown()
            }
            #expect(randoms[0] != randoms[1], "two guests restored from one state drew the same random bytes")
        }

        @Test("a corrupt saved state is discarded: the start boots afresh and saves a good one")
        func corruptState() async throws {
            let dir = try Self.freshDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            let first = Sandbox(configuration: Self.configuration(dir), logger: SharedGuest.logger())
            try await first.start()
            await first.shutdown()
            let name = try #require(
                try FileManager.default.contentsOfDirectory(atPath: dir.path).first { $0.hasSuffix(".state") })
            let file = dir.appendingPathComponent(name)
            let size = try #require(try FileManager.default.attributesOfItem(atPath: file.path)[.size] as? NSNumber).intValue
            try Data((0..<size / 2).map { UInt8(truncatingIfNeeded: $0 &* 31) }).write(to: file)

            let second = Sandbox(configuration: Self.configuration(dir), logger: SharedGuest.logger())
            try await second.start()
            #expect(await second.restoredFromSavedState == false)
            #expect(try await second.exec(Command(["true"])).termination == .exited(0))
            await second.shutdown()
            let third = Sandbox(configuration: Self.configuration(dir), logger: SharedGuest.logger())
            try await third.start()
            #expect(await third.restoredFromSavedState, "the cold boot after the corrupt state saved a good one")
            await third.shutdown()
        }

        @Test("with reuseBootState off, every start boots and nothing is saved")
        func optOut() async throws {
            let dir = try Self.freshDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            var c = Self.configuration(dir)
            c.reuseBootState = false
            let s = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await s.start()
            #expect(await s.restoredFromSavedState == false)
            await s.shutdown()
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
        }
    }
}
