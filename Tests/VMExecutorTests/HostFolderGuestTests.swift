import Crypto
import Foundation
import Testing
import VMExecutor

extension RealGuests {
    /// Host folders seen in a real guest over virtiofs: read-only, read-write, overlaid;
    /// what the guest cannot reach; a folder that goes away under it.
    @Suite("Host folders", .serialized, .timeLimit(.minutes(5)))
    struct HostFolderGuestTests {
        /// A folder of the test's own under the system's temporary folder, with a file, a
        /// subfolder, and a secret beside it (outside it) that no guest may read.
        struct Fixture {
            let root: URL
            var folder: String { root.appendingPathComponent("shared").path }
            var outside: String { root.appendingPathComponent("outside").path }
            static let secret = "host secret outside the folder\n"

            init() throws {
                root = FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-folder-\(UUID())")
                let fm = FileManager.default
                try fm.createDirectory(atPath: root.appendingPathComponent("shared/sub").path, withIntermediateDirectories: true)
                try fm.createDirectory(atPath: root.appendingPathComponent("outside").path, withIntermediateDirectories: true)
                try "hello from the host\n".write(toFile: folder + "/hello.txt", atomically: true, encoding: .utf8)
                try "deep\n".write(toFile: folder + "/sub/deep.txt", atomically: true, encoding: .utf8)
                try Self.secret.write(toFile: outside + "/secret", atomically: true, encoding: .utf8)
                // Links the host user made, pointing out of the folder.
                try fm.createSymbolicLink(atPath: folder + "/host-abs", withDestinationPath: outside + "/secret")
                try fm.createSymbolicLink(atPath: folder + "/host-rel", withDestinationPath: "../outside/secret")
            }

            func remove() { try? FileManager.default.removeItem(at: root) }

            /// Every entry of the folder: path, type, mode, owner, size, content hash or link target.
            func digest() throws -> String {
                let fm = FileManager.default
                var lines: [String] = []
                for relative in (fm.enumerator(atPath: folder)?.allObjects as? [String] ?? []).sorted() {
                    let path = folder + "/" + relative
                    let a = try fm.attributesOfItem(atPath: path)
                    var line = "\(relative) \(a[.type] ?? "") \(a[.posixPermissions] ?? "") \(a[.ownerAccountID] ?? "")"
                    if (a[.type] as? FileAttributeType) == .typeSymbolicLink {
                        line += " -> " + (try fm.destinationOfSymbolicLink(atPath: path))
                    } else if (a[.type] as? FileAttributeType) == .typeRegular {
                        line +=
                            " "
                            + SHA256.hash(data: try Data(contentsOf: URL(fileURLWithPath: path)))
                            .map { String(format: "%02x", $0) }.joined()
                    }
                    lines.append(line)
                }
                return lines.joined(separator: "\n")
            }
        }

        static func started(_ folders: [HostFolder]) async throws -> Sandbox {
            var c = SharedGuest.configuration()
            c.folders = folders
            let s = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await s.start()
            return s
        }

        @Test(
            "read-only refuses writes; read-write writes land on the host, owned by the host user; their files are the guest user's"
        )
        func readOnlyAndReadWrite() async throws {
            let f = try Fixture()
            defer { f.remove() }
            let s = try await Self.started([
                HostFolder(hostPath: f.folder, guestPath: "/data/in", mode: .readOnly),
                HostFolder(hostPath: f.folder + "/sub", guestPath: "/out", mode: .readWrite),
            ])
            defer { Task { await s.shutdown() } }
            let read = try await s.exec(Command(["sh", "-c", "cat /data/in/hello.txt; stat -c '%u:%g %a' /data/in/hello.txt"]))
            #expect(read.stdoutText == "hello from the host\n1000:1000 644\n", "\(read.stdoutText)\(read.stderrText)")
            let refused = try await s.exec(Command(["sh", "-c", "echo x > /data/in/new.txt"]))
            #expect(refused.exitCode != 0 && refused.stderrText.contains("Read-only file system"), "\(refused.stderrText)")
            #expect(!FileManager.default.fileExists(atPath: f.folder + "/new.txt"))

            let wrote = try await s.exec(
                Command(["sh", "-c", "echo made in the guest > /out/made.txt && mkdir /out/dir && chmod 600 /out/made.txt"]))
            #expect(wrote.exitCode == 0, "\(wrote.stderrText)")
            let made = try FileManager.default.attributesOfItem(atPath: f.folder + "/sub/made.txt")
            #expect(try String(contentsOfFile: f.folder + "/sub/made.txt", encoding: .utf8) == "made in the guest\n")
            #expect((made[.ownerAccountID] as? NSNumber)?.uint32Value == getuid(), "owned by the host user running vmexec")
            #expect((made[.groupOwnerAccountID] as? NSNumber)?.uint32Value == getgid())
            #expect((made[.posixPermissions] as? NSNumber)?.intValue == 0o600)
            let dir = try FileManager.default.attributesOfItem(atPath: f.folder + "/sub/dir")
            #expect((dir[.ownerAccountID] as? NSNumber)?.uint32Value == getuid())
            // The host's own changes show in the guest.
            try "from the host, later\n".write(toFile: f.folder + "/sub/later.txt", atomically: true, encoding: .utf8)
            #expect(try await s.exec(Command(["cat", "/out/later.txt"])).stdoutText == "from the host, later\n")
            // The guest's root may not create files there: the host user stands for the guest's user only.
            var asRoot = Command(["sh", "-c", "echo x > /out/by-root"])
            asRoot.user = .root
            #expect(try await s.exec(asRoot).exitCode != 0)
            #expect(!FileManager.default.fileExists(atPath: f.folder + "/sub/by-root"))
        }

        @Test("overlay: the guest sees the folder and changes it; the host's folder stays byte-for-byte as it was")
        func overlay() async throws {
            let f = try Fixture()
            defer { f.remove() }
            let before = try f.digest()
            let s = try await Self.started([HostFolder(hostPath: f.folder, guestPath: "/work/src", mode: .overlay)])
            defer { Task { await s.shutdown() } }
            let changed = try await s.exec(
                Command([
                    "sh", "-c",
                    """
                    set -e
                    cat /work/src/hello.txt
                    echo changed > /work/src/hello.txt
                    rm -r /work/src/sub
                    mkdir /work/src/new && echo n > /work/src/new/file
                    chmod 700 /work/src
                    ln -s /etc/hostname /work/src/link
                    cat /work/src/hello.txt; ls /work/src | tr '\\n' ' '
                    """,
                ]))
            #expect(
                changed.stdoutText == "hello from the host\nchanged\nhello.txt host-abs host-rel link new ",
                "\(changed.stdoutText)\(changed.stderrText)")
            var root = Command(["sh", "-c", "echo r > /work/src/by-root && cat /work/src/by-root"])
            root.user = .root
            #expect(try await s.exec(root).stdoutText == "r\n", "the guest's root may change an overlay")
            #expect(try f.digest() == before, "the host's folder did not change")
        }

        @Test(
            "escapes: .., links the guest or the host planted, absolute or relative, and links swapped during access stay inside")
        func escapes() async throws {
            let f = try Fixture()
            defer { f.remove() }
            let s = try await Self.started([HostFolder(hostPath: f.folder, guestPath: "/rw", mode: .readWrite)])
            defer { Task { await s.shutdown() } }
            let outside = f.outside
            let tries = try await s.exec(
                Command([
                    "sh", "-c",
                    """
                    cat /rw/host-abs /rw/host-rel /rw/../outside/secret /rw/../../\(outside)/secret 2>/dev/null
                    ln -s \(outside)/secret /rw/g-abs; ln -s ../outside/secret /rw/g-rel
                    ln -s ../../../../../../.. /rw/g-up; ln -s / /rw/g-root
                    cat /rw/g-abs /rw/g-rel /rw/g-up\(outside)/secret /rw/g-root\(outside)/secret 2>/dev/null
                    ln /rw/hello.txt /rw/hard 2>/dev/null; cat /rw/hard
                    # A link swapped with a folder while another process walks through it.
                    mkdir -p /rw/swap; echo inside > /rw/swap/secret
                    ( i=0; while [ $i -lt 100 ]; do
                        mv /rw/swap /rw/swap.d && ln -s \(outside) /rw/swap && rm /rw/swap && mv /rw/swap.d /rw/swap
                        i=$((i+1)); done ) &
                    j=0; while [ $j -lt 200 ]; do cat /rw/swap/secret 2>/dev/null; j=$((j+1)); done | sort | uniq -c
                    wait
                    """,
                ]))
            #expect(!tries.stdoutText.contains("host secret"), "\(tries.stdoutText)")
            #expect(tries.stdoutText.contains("hello from the host"), "a hard link inside works: \(tries.stdoutText)")
            #expect(tries.stdoutText.contains("inside"), "\(tries.stdoutText)\(tries.stderrText)")
            // On the host, the guest's links are links, not files copied from outside.
            let link = try FileManager.default.destinationOfSymbolicLink(atPath: f.folder + "/g-abs")
            #expect(link == outside + "/secret")
            #expect(try String(contentsOfFile: outside + "/secret", encoding: .utf8) == Fixture.secret)
        }

        @Test("a folder removed on the host while mounted: the guest's accesses fail, the guest answers")
        func removedUnderTheGuest() async throws {
            let f = try Fixture()
            defer { f.remove() }
            let s = try await Self.started([HostFolder(hostPath: f.folder, guestPath: "/rw", mode: .readWrite)])
            defer { Task { await s.shutdown() } }
            #expect(try await s.exec(Command(["cat", "/rw/hello.txt"])).exitCode == 0)
            try FileManager.default.removeItem(atPath: f.folder)
            let started = ContinuousClock.now
            let after = try await s.exec(
                Command(["sh", "-c", "cat /rw/hello.txt; echo x > /rw/new; ls /rw; mkdir /rw/d; echo done"]))
            #expect(after.stdoutText.hasSuffix("done\n"), "\(after.stdoutText)\(after.stderrText)")
            #expect(after.stderrText.contains("No such file") || after.stderrText.contains("Stale"), "\(after.stderrText)")
            #expect(ContinuousClock.now - started < .seconds(20))
            #expect(try await s.exec(Command(["echo", "alive"])).stdoutText == "alive\n")
        }

        @Test("refused before boot: a missing host folder, a file, a guest path outside the rules, twice the same")
        func refused() async throws {
            let f = try Fixture()
            defer { f.remove() }
            let cases: [([HostFolder], String)] = [
                ([HostFolder(hostPath: f.root.path + "/none", guestPath: "/x")], "does not exist"),
                ([HostFolder(hostPath: f.folder + "/hello.txt", guestPath: "/x")], "not a directory"),
                ([HostFolder(hostPath: f.folder, guestPath: "x")], "absolute guest path"),
                ([HostFolder(hostPath: f.folder, guestPath: "/proc/x")], "outside /proc"),
                ([HostFolder(hostPath: f.folder, guestPath: "/a/../b")], "'..'"),
                (
                    [HostFolder(hostPath: f.folder, guestPath: "/a"), HostFolder(hostPath: f.folder, guestPath: "/a")],
                    "two host folders"
                ),
            ]
            for (folders, reason) in cases {
                var c = SharedGuest.configuration()
                c.folders = folders
                let s = Sandbox(configuration: c, logger: SharedGuest.logger())
                let error = try await #require(throws: VMExecError.self) { try await s.start() }
                #expect(error.message.contains(reason), "\(error.message)")
                #expect(await s.qemuProcessID == nil)
            }
            #expect(throws: VMExecError.self) { try HostFolder(parsing: "only-one-part") }
            #expect(try HostFolder(parsing: "/a:/b:overlay") == HostFolder(hostPath: "/a", guestPath: "/b", mode: .overlay))
            #expect(try HostFolder(parsing: "/a:/b") == HostFolder(hostPath: "/a", guestPath: "/b", mode: .readOnly))
        }
    }
}
