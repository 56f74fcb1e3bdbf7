import Foundation
import Testing
import VMExecutor

extension RealGuests {
    /// What happens when the guest dies under a waiting call.
    @Suite("Guest failures", .timeLimit(.minutes(5)))
    struct GuestFailureTests {
        @Test("QEMU killed with SIGKILL mid-command: the call fails within a second, and a fresh start works")
        func qemuKilled() async throws {
            let sandbox = try await SharedGuest.started()
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
            let sandbox = try await SharedGuest.started()
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

    @Suite("Host side coming and going", .timeLimit(.minutes(5)))
    struct HostLifecycleTests {
        @Test("the init survives the host disconnecting and reconnecting, and ends the old session's processes")
        func reconnect() async throws {
            let sandbox = try await SharedGuest.started()
            let old = Task { try await sandbox.exec(Command(["sleep", "300"])) }
            try await Task.sleep(for: .milliseconds(300))
            try await sandbox.reconnect()
            await #expect(throws: VMExecError.self) { try await old.value }
            // The same guest serves the new connection, and the old sleep is gone.
            let r = try await sandbox.exec(Command(["sh", "-c", "sleep 0.2; ps -eo comm | grep -c '^sleep$' || true"]))
            #expect(r.stdoutText == "0\n")
            for _ in 0..<3 {
                try await sandbox.reconnect()
                #expect(try await sandbox.exec(Command(["echo", "again"])).stdoutText == "again\n")
            }
            await sandbox.shutdown()
        }

        @Test("QEMU does not outlive a host process that is killed with SIGKILL")
        func noOrphanedGuests() async throws {
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized
            let cli = root.appendingPathComponent(".build/debug/vmexec").path
            try #require(FileManager.default.isExecutableFile(atPath: cli), "build the CLI first (make test does)")
            let host = Process()
            host.executableURL = URL(fileURLWithPath: cli)
            host.arguments = ["run", "--accel", "tcg", "--", "sleep", "300"]
            host.standardInput = FileHandle.nullDevice
            try host.run()
            // Wait for its QEMU to appear, then kill the host outright.
            var qemu: Int32?
            for _ in 0..<300 where qemu == nil {
                qemu = Self.children(of: host.processIdentifier).first
                try await Task.sleep(for: .milliseconds(50))
            }
            let pid = try #require(qemu, "the CLI did not start QEMU")
            let tmp = NSTemporaryDirectory()
            let runDirectory = try FileManager.default.contentsOfDirectory(atPath: tmp).filter { $0.hasPrefix("vmexec-") }
                .map { URL(fileURLWithPath: tmp).appendingPathComponent($0) }
                .first {
                    (try? String(contentsOf: $0.appendingPathComponent("host"), encoding: .utf8))?
                        .hasPrefix("\(host.processIdentifier) ") == true
                }
            kill(host.processIdentifier, SIGKILL)
            host.waitUntilExit()
            var gone = false
            for _ in 0..<200 where !gone {
                gone = kill(pid, 0) != 0 && errno == ESRCH
                if !gone { try await Task.sleep(for: .milliseconds(50)) }
            }
            #expect(gone, "QEMU \(pid) still runs 10 s after its host was killed")
            // The next start sweeps the dead host's run directory away.
            let dir = try #require(runDirectory, "the killed host's run directory was not found")
            let next = try await SharedGuest.started()
            await next.shutdown()
            #expect(!FileManager.default.fileExists(atPath: dir.path), "\(dir.path) outlived its host")
        }

        static func children(of parent: Int32) -> [Int32] {
            let procs = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return procs.compactMap(Int32.init).filter { pid in
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                    let close = stat.lastIndex(of: ")")
                else { return false }
                let fields = stat[stat.index(after: close)...].split(separator: " ")
                return fields.count > 2 && Int32(fields[1]) == parent && stat.contains("(qemu-system")
            }
        }
    }
}
