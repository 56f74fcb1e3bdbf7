import Foundation
import SquashMounts
import Testing
import VMExecTestSupport
import VMExecutor

extension RealGuests {
    /// Warm states: the machine saved once its shards are attached and its warm Python
    /// interpreter listens, restored by later starts with the same shards.
    @Suite("Warm states per shard set", .serialized, .timeLimit(.minutes(6)))
    struct WarmStateGuestTests {
        static func configuration(_ dir: URL, numpy: Bool = true) throws -> SandboxConfiguration {
            var c = SharedGuest.configuration()
            c.bootStateDirectory = dir
            if numpy { c.shards.append(try Shard.open(try #require(TestImages.libsShardPath("numpy")))) }
            return c
        }

        static func probe() -> PythonCode {
            PythonCode(
                """
                import os, sys, numpy
                [int(numpy.random.randint(0, 2**62)), os.urandom(8).hex(), sorted(os.listdir("/opt/libs"))]
                """)
        }

        @Test(
            "the first start saves a warm state; later ones restore it: shards attached, the zygote running, fresh time and randomness"
        )
        func restoreWarm() async throws {
            let dir = try BootStateTests.freshDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            let first = Sandbox(configuration: try Self.configuration(dir), logger: SharedGuest.logger())
            try await first.start()
            #expect(await first.restoredFromWarmState == false)
            let saved = try FileManager.default.contentsOfDirectory(atPath: dir.path)
            #expect(saved.filter { $0.hasSuffix(".state") }.count == 2, "the boot state and the warm state: \(saved)")
            #expect(saved.filter { $0.hasSuffix(".state.json") }.count == 1, "the warm state's note of its zygote: \(saved)")
            let before = try await first.python.run(Self.probe())
            #expect(before.warmStart, "the zygote started for the warm state serves this guest's jobs")
            await first.shutdown()

            try await Task.sleep(for: .seconds(2))  // restored guests must not wake in the past
            var draws: [String] = []
            for _ in 0..<2 {
                let s = Sandbox(configuration: try Self.configuration(dir), logger: SharedGuest.logger())
                try await s.start()
                #expect(await s.restoredFromWarmState)
                #expect(await s.shards.count == 2)
                let guestNow = try await BootStateTests.guestSeconds(s)
                #expect(
                    abs(guestNow - Date().timeIntervalSince1970) < 2,
                    "guest clock off by \(guestNow - Date().timeIntervalSince1970) s")
                let r = try await s.python.run(Self.probe())
                #expect(r.warmStart, "the first job forks from the restored zygote")
                #expect(r.exception == nil, "\(String(describing: r.exception))")
                let json = try #require(r.value?.json)
                #expect(json.hasSuffix(", [\"numpy\"]]"), "the numpy shard is mounted: \(json)")
                draws.append(json)
                // The restored machine goes on as any: a shard detached stops the zygote, which the next job restarts.
                try await s.detach("numpy")
                let after = try await s.python.run(PythonCode("import sys\n'numpy' in sys.modules"))
                #expect(after.value?.repr == "False" && after.termination == .exited(0))
                await s.shutdown()
            }
            #expect(draws[0] != draws[1], "two restores of one warm state drew the same random numbers: \(draws)")
        }

        @Test("another shard set, or warm states off: no warm state is used")
        func keyedBySet() async throws {
            let dir = try BootStateTests.freshDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            let sdkOnly = Sandbox(configuration: try Self.configuration(dir, numpy: false), logger: SharedGuest.logger())
            try await sdkOnly.start()
            await sdkOnly.shutdown()
            let withNumpy = Sandbox(configuration: try Self.configuration(dir), logger: SharedGuest.logger())
            try await withNumpy.start()
            #expect(await withNumpy.restoredFromWarmState == false, "the SDK shard's warm state is not numpy's")
            await withNumpy.shutdown()

            var off = try Self.configuration(dir)
            off.reuseWarmState = false
            let plain = Sandbox(configuration: off, logger: SharedGuest.logger())
            try await plain.start()
            #expect(await plain.restoredFromWarmState == false)
            #expect(await plain.restoredFromSavedState)
            #expect(try await plain.python.run(PythonCode("1 + 1")).value?.repr == "2")
            await plain.shutdown()
        }
    }
}
