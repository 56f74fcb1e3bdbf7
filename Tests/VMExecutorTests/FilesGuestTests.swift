import Foundation
import SerialChannel
import SquashMounts
import Testing
import VMExecTestSupport

@testable import VMExecutor

/// Files and processes of a running guest through the Sandbox API.
extension RealGuests {
    @Suite("Files and processes", .timeLimit(.minutes(10)))
    struct FilesGuestTests {
        @Test("a file goes in and comes out whole, with its mode and owner; list, stat, mkdir, move and delete work")
        func roundTrip() async throws {
            let s = try await SharedGuest.shared.get()
            let bytes = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7919) }
            try await s.writeFile("/home/vmexec/t/a.bin", contents: bytes, options: FileOptions(mode: 0o640, createParents: true))
            let seen = try await s.exec(Command(["stat", "-c", "%a %u %g %s", "/home/vmexec/t/a.bin", "/home/vmexec/t"]))
            #expect(
                seen.stdoutText == "640 1000 1000 300000\n755 1000 1000 4096\n"
                    || seen.stdoutText.hasPrefix("640 1000 1000 300000\n755 1000 1000"), "\(seen.stdoutText)")
            #expect(try await s.readFile("/home/vmexec/t/a.bin") == bytes)

            let info = try await s.fileInfo("/home/vmexec/t/a.bin")
            #expect(info.kind == .regular && info.permissions == 0o640 && info.uid == 1000 && info.size == 300_000)
            #expect(info.name == "a.bin")

            try await s.writeFile("/root-owned", contents: Array("r\n".utf8), options: FileOptions(mode: 0o600, owner: .root))
            let denied = try await s.exec(Command(["cat", "/root-owned"]))
            #expect(denied.exitCode != 0, "an unprivileged command cannot read a root-owned 0600 file")

            try await s.makeDirectory("/home/vmexec/t/x/y", options: FileOptions(createParents: true))
            try await s.move("/home/vmexec/t/a.bin", to: "/home/vmexec/t/x/y/b.bin")
            let names = try await s.listDirectory("/home/vmexec/t/x/y").map(\.name)
            #expect(names == ["b.bin"])
            await #expect(throws: VMExecError.self) { try await s.remove("/home/vmexec/t/x") }  // not empty
            try await s.remove("/home/vmexec/t", recursive: true)
            let gone = await #expect(throws: VMExecError.self) { try await s.fileInfo("/home/vmexec/t") }
            #expect(gone?.code == .fileRefused && gone?.message.contains("No such file") == true, "\(String(describing: gone))")
        }

        @Test("paths that climb out with .. or through a planted symlink resolve inside the guest root")
        func escapes() async throws {
            let s = try await SharedGuest.shared.get()
            // The init's own root (the initramfs) has /init; the guest root has none.
            // (In /tmp, the kernel's protected_symlinks would refuse to follow them at all.)
            let planted = try await s.exec(
                Command(
                    [
                        "sh", "-c",
                        """
                        cd /home/vmexec && ln -sfn / up && ln -sfn ../../../../../../init init-link && ln -sfn /etc/passwd passwd-link
                        echo guest > /tmp/marker
                        """,
                    ], privateTmp: false))
            #expect(planted.exitCode == 0, "\(planted.stderrText)")
            for path in ["/../../../init", "../../init", "/home/vmexec/init-link", "/home/vmexec/up/../../init"] {
                let e = await #expect(throws: VMExecError.self) { try await s.readFile(path) }
                #expect(
                    e?.code == .fileRefused && e?.message.contains("No such file") == true, "\(path): \(String(describing: e))")
            }
            #expect(try await s.readFile("/home/vmexec/up/../../tmp/marker") == Array("guest\n".utf8))
            let link = try await s.fileInfo("/home/vmexec/passwd-link", followSymlinks: false)
            #expect(link.kind == .symlink && link.linkTarget == "/etc/passwd")
            // Writing to the symlink's name replaces the link itself, never what it points to.
            let before = try await s.readFile("/etc/passwd")
            try await s.writeFile("/home/vmexec/passwd-link", contents: Array("x\n".utf8))
            #expect(try await s.readFile("/etc/passwd") == before)
            #expect(try await s.fileInfo("/home/vmexec/passwd-link", followSymlinks: false).kind == .regular)
            // A FIFO planted where a file is expected is refused, not waited on.
            _ = try await s.exec(Command(["mkfifo", "/tmp/fifo"], privateTmp: false))
            let fifo = await #expect(throws: VMExecError.self) { try await s.readFile("/tmp/fifo") }
            #expect(fifo?.code == .fileRefused)
            _ = try await s.exec(
                Command(
                    ["sh", "-c", "cd /home/vmexec && rm -f up init-link passwd-link /tmp/marker /tmp/fifo"],
                    privateTmp: false))
        }

        @Test("failures say which: missing, too large, read-only shard, replace refused; nothing is left half-written")
        func failures() async throws {
            let s = try await SharedGuest.shared.get()
            let missing = await #expect(throws: VMExecError.self) { try await s.readFile("/nope/nothing") }
            #expect(missing?.code == .fileRefused)
            try await s.writeFile("/tmp/big", contents: [UInt8](repeating: 1, count: 100_000))
            let big = await #expect(throws: VMExecError.self) { try await s.readFile("/tmp/big", maxBytes: 1000) }
            #expect(big?.code == .fileTooLarge, "\(String(describing: big))")
            let workshop = try ShardWorkshop()
            try await s.attach(try workshop.libs(version: "1.0"))
            let rofs = await #expect(throws: VMExecError.self) {
                try await s.writeFile("/opt/libs/vxlib/vxlib/evil.py", contents: Array("x".utf8))
            }
            #expect(
                rofs?.code == .fileRefused && rofs?.message.contains("Read-only file system") == true,
                "\(String(describing: rofs))")
            try await s.detach("vxlib")
            let proc = await #expect(throws: VMExecError.self) { try await s.writeFile("/proc/x", contents: [1]) }
            #expect(proc?.code == .fileRefused)
            let keep = await #expect(throws: VMExecError.self) {
                try await s.writeFile("/tmp/big", contents: [2], options: FileOptions(replace: false))
            }
            #expect(keep?.message.contains("File exists") == true)
            #expect(try await s.fileInfo("/tmp/big").size == 100_000)
            let dir = await #expect(throws: VMExecError.self) { try await s.readFile("/tmp") }
            #expect(dir?.message.contains("not a regular file") == true)
            // A listing longer than asked for is refused, not cut.
            let long = await #expect(throws: VMExecError.self) { try await s.listDirectory("/usr/bin", maxEntries: 3) }
            #expect(long?.code == .fileTooLarge && long?.message.contains("more than the 3 entries") == true)
            // An upload abandoned half-way leaves the destination as it was, and no temporary file.
            let upload = try await s.beginUpload(to: "/tmp/big", size: 1 << 20)
            try await upload.write([UInt8](repeating: 3, count: 100_000))
            await upload.cancel()
            #expect(try await s.fileInfo("/tmp/big").size == 100_000)
            let leftovers = try await s.exec(Command(["sh", "-c", "ls -a /tmp | grep -c vmexec-put || true"], user: .root))
            #expect(leftovers.stdoutText == "0\n")
            try await s.remove("/tmp/big")
        }

        @Test("processes are listed with their command's stream, and a process group is killed on request")
        func processes() async throws {
            let s = try await SharedGuest.shared.get()
            let job = try await s.stream(Command(["sh", "-c", "sleep 300 & sleep 301; echo never"]))
            var listed: [ProcessEntry] = []
            for _ in 0..<50 {
                listed = try await s.processes().filter { $0.stream == job.streamID }
                if listed.count >= 3 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            let sleeps = listed.filter { $0.arguments.first == "sleep" }
            #expect(sleeps.map(\.arguments).sorted { $0[1] < $1[1] } == [["sleep", "300"], ["sleep", "301"]], "\(listed)")
            #expect(
                listed.allSatisfy {
                    $0.uid == 1000 && $0.processGroup == job.pid && $0.startNanoseconds > 1_600_000_000_000_000_000
                })
            try await s.signal(pid: sleeps[0].pid, SIGKILL, group: true)
            var ending: Termination?
            for try await event in job { if case .exit(let t, _) = event { ending = t } }
            #expect(ending == .signaled(SIGKILL))
            let none = await #expect(throws: VMExecError.self) { try await s.signal(pid: sleeps[0].pid, SIGTERM) }
            #expect(none?.code == .processRefused)
            await #expect(throws: VMExecError.self) { try await s.signal(pid: 1, SIGKILL) }
        }
    }
}
