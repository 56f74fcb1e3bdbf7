import Foundation
import SquashMounts
import Testing
import VMExecTestSupport
import VMExecutor

extension RealGuests {
    /// Python jobs forked from the sandbox's warm interpreter (its zygote), in a real guest
    /// with the SDK and numpy shards: each job with exactly a command's isolation.
    @Suite("Python zygote in a real guest", .serialized, .timeLimit(.minutes(10)))
    struct PythonZygoteGuestTests {
        static let guest = WarmGuest()

        actor WarmGuest {
            private var sandbox: Sandbox?

            /// A guest with numpy attached and its zygote listening.
            func get() async throws -> Sandbox {
                if let sandbox, await sandbox.isRunning {
                    _ = try await sandbox.warmPython()
                    return sandbox
                }
                var c = SharedGuest.configuration()
                let numpy = try #require(TestImages.libsShardPath("numpy"))
                c.shards.append(try Shard.open(numpy))
                let s = Sandbox(configuration: c, logger: SharedGuest.logger())
                try await s.start()
                sandbox = s
                let warmth = try await s.warmPython()
                #expect(warmth.preloaded == ["numpy"], "the numpy shard's manifest asks to preload numpy")
                #expect(warmth.failed.isEmpty, "\(warmth.failed)")
                return s
            }
        }

        @Test("a job forks from the warm interpreter: numpy already imported, its own random numbers, the result as cold")
        func warmJob() async throws {
            let guest = try await Self.guest.get()
            let code = PythonCode(
                """
                import sys
                preloaded = "numpy" in sys.modules
                import numpy as np
                [preloaded, int(np.random.randint(0, 2**62)), sys.argv[1:], sys.path[0]]
                """, workingDirectory: "/tmp")
            let first = try await guest.python.run(code)
            let second = try await guest.python.run(code)
            for r in [first, second] {
                #expect(r.exception == nil, "\(String(describing: r.exception))")
                #expect(r.warmStart, "forked from the zygote")
                #expect(r.termination == .exited(0))
            }
            let a = try #require(first.value?.json), b = try #require(second.value?.json)
            #expect(a.hasPrefix("[true, ") && a.hasSuffix(", [\"run\"], \"/tmp\"]"), "\(a)")
            #expect(a != b, "each child reseeds numpy's generator: \(a) vs \(b)")

            let exits = try await guest.python.run(PythonCode("import sys\nsys.exit(7)"))
            #expect(exits.warmStart && exits.termination == .exited(7), "\(exits.termination)")
            let call = try await guest.python.call(
                PythonCall("f", in: PythonModule(source: "def f(x):\n    return x * 2"), arguments: "[21]"))
            #expect(call.warmStart && call.value?.json == "42", "\(String(describing: call.value))")
        }

        @Test("nothing of one job reaches the next: globals, /tmp, environment, descriptors")
        func nothingLeaks() async throws {
            let guest = try await Self.guest.get()
            let leave = try await guest.python.run(
                PythonCode(
                    """
                    import os, numpy
                    secret_global = "g"
                    numpy.secret_attribute = "m"
                    os.environ["SECRET_VAR"] = "e"
                    open("/tmp/secret-file", "w").write("f")
                    keep = open("/etc/hostname")
                    os.set_inheritable(keep.fileno(), True)
                    sorted(os.listdir("/tmp"))
                    """, environment: ["GIVEN_VAR": "given"]))
            #expect(leave.warmStart && leave.exception == nil, "\(String(describing: leave.exception))")
            #expect(leave.value?.json == "[\"secret-file\"]")
            let look = try await guest.python.run(
                PythonCode(
                    """
                    import os, numpy
                    fds = {}
                    for fd in os.listdir("/proc/self/fd"):
                        try:
                            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
                        except OSError:
                            pass  # the listing's own descriptor
                    {
                        "global": "secret_global" in globals(),
                        "module": hasattr(numpy, "secret_attribute"),
                        "env": sorted(k for k in os.environ if k in ("SECRET_VAR", "GIVEN_VAR")),
                        "tmp": os.listdir("/tmp"),
                        "hostname": [t for t in fds.values() if t == "/etc/hostname"],
                        "sockets": [t for t in fds.values() if t.startswith("socket:")],
                    }
                    """))
            #expect(look.warmStart && look.exception == nil, "\(String(describing: look.exception))")
            let seen = try #require(look.value?.json)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(seen.utf8)) as? [String: Any])
            #expect(object["global"] as? Bool == false, "\(seen)")
            #expect(object["module"] as? Bool == false, "\(seen)")
            #expect((object["env"] as? [String]) == [], "\(seen)")
            #expect((object["tmp"] as? [String]) == [], "\(seen)")
            #expect((object["hostname"] as? [String]) == [], "\(seen)")
            #expect((object["sockets"] as? [String]) == [], "no zygote socket reaches the job: \(seen)")
        }

        @Test("a child has a command's isolation: its user, cgroup and limits, private /tmp, umask, no privileges")
        func isolation() async throws {
            let guest = try await Self.guest.get()
            let probe = """
                import os, resource
                cgroup = open("/proc/self/cgroup").read().split("::")[1].strip()
                status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
                {
                    "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()],
                    "cgroup": cgroup,
                    "memory_max": open(f"/sys/fs/cgroup{cgroup}/memory.max").read().strip(),
                    "procs": sorted(open(f"/sys/fs/cgroup{cgroup}/cgroup.procs").read().split()),
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                    "umask": status["Umask"],
                    "no_new_privs": status["NoNewPrivs"],
                    "cap_eff": status["CapEff"],
                    "mounts": [l.split()[1:3] for l in open("/proc/self/mounts")],
                    "sid_is_self": os.getsid(0) == os.getpid(),
                    "cwd": os.getcwd(),
                }
                """
            let limits = Limits(memoryBytes: 96 << 20, processes: 50, openFiles: 300)
            let warm = try await guest.python.run(PythonCode(probe, workingDirectory: "/home/vmexec", limits: limits))
            #expect(warm.warmStart && warm.exception == nil, "\(String(describing: warm.exception))")
            let warmJSON = try #require(warm.value?.json)
            let w = try #require(try JSONSerialization.jsonObject(with: Data(warmJSON.utf8)) as? [String: Any])
            #expect((w["ids"] as? [Any])?.description == "[1000, 1000, 1000, []]", "\(w)")
            #expect((w["cgroup"] as? String)?.hasPrefix("/jobs/") == true, "\(w)")
            #expect(w["memory_max"] as? String == "\(96 << 20)", "\(w)")
            #expect((w["procs"] as? [String])?.count == 2, "the client and the child, in the job's cgroup: \(w)")
            #expect(w["nofile"] as? Int == 300, "\(w)")
            #expect(w["umask"] as? String == "0022" && w["no_new_privs"] as? String == "1", "\(w)")
            #expect(w["cap_eff"] as? String == "0000000000000000", "\(w)")
            let coldMounts = try await guest.exec(Command(["cat", "/proc/self/mounts"])).stdoutText
                .split(separator: "\n").map { $0.split(separator: " ").dropFirst().prefix(2).map(String.init) }
            #expect((w["mounts"] as? [[String]]) == coldMounts, "the mounts a command sees, its own /tmp among them")
            #expect(w["sid_is_self"] as? Bool == true && w["cwd"] as? String == "/home/vmexec", "\(w)")

            let root = try await guest.python.run(PythonCode("import os\nos.getuid()", user: .root))
            #expect(root.warmStart && root.value?.repr == "0")
        }

        @Test("a memory bomb and a fork bomb from a child are contained as from any command; the zygote lives on")
        func bombs() async throws {
            let guest = try await Self.guest.get()
            let hog = try await guest.python.run(
                PythonCode(
                    "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))",
                    limits: Limits(memoryBytes: 96 << 20, processes: 64)))
            #expect(hog.warmStart || hog.termination != .exited(0))
            #expect(hog.exception?.type == "MemoryError" || hog.termination == .outOfMemory(9), "\(hog.termination)")

            let forks = try await guest.python.run(
                PythonCode(
                    """
                    import os, time
                    made = 0
                    try:
                        while True:
                            if os.fork() == 0:
                                time.sleep(30)
                                os._exit(0)
                            made += 1
                    except OSError as e:
                        refused = type(e).__name__
                    [made, refused]
                    """, timeout: .seconds(60), limits: Limits(memoryBytes: 256 << 20, processes: 20)))
            // 20 tasks: the client, the child and its output thread, and the forks until refused.
            let made = try #require(forks.value?.json)
            #expect(forks.warmStart && made.hasSuffix(", \"BlockingIOError\"]"), "\(made)")
            #expect(made.hasPrefix("[17, ") || made.hasPrefix("[16, "), "\(made)")
            // The zygote and its spare child waiting for the next job carry the zygote's command line.
            let left = try await guest.processes().filter {
                $0.arguments.first?.hasPrefix("python3") == true && !$0.arguments.contains("vmexec_runner.zygote")
            }
            #expect(left.isEmpty, "nothing is left of any job: \(left.map(\.arguments))")
            let after = try await guest.python.run(PythonCode("1 + 1"))
            #expect(after.warmStart && after.value?.repr == "2", "the zygote still serves")
        }

        @Test("a timeout kills a child and everything it started; a signal reaches the code")
        func timeoutAndSignal() async throws {
            let guest = try await Self.guest.get()
            let slow = try await guest.python.run(
                PythonCode("import subprocess, time\nsubprocess.Popen(['sleep', '300'])\ntime.sleep(300)", timeout: .seconds(2)))
            #expect(slow.termination == .timedOut(9), "\(slow.termination)")
            let left = try await guest.processes().filter { $0.arguments.first == "sleep" }
            #expect(left.isEmpty, "nothing it started is left: \(left)")

            let run = try await guest.python.start(
                PythonCode("import time\nprint('waiting', flush=True)\ntime.sleep(60)", timeout: .seconds(60)))
            var interrupted: PythonResult?
            for try await event in run.events {
                switch event {
                case .stdout: try await run.signal(SIGINT)
                case .result(let r): interrupted = r
                default: break
                }
            }
            #expect(interrupted?.warmStart == true)
            #expect(interrupted?.exception?.type == "KeyboardInterrupt", "\(String(describing: interrupted?.exception))")
        }

        /// The zygote, not its spare child (both carry the zygote's command line).
        static func zygotes(_ guest: Sandbox) async throws -> [UInt32] {
            let all = try await guest.processes().filter { $0.arguments.contains("vmexec_runner.zygote") }
            let pids = Set(all.map(\.pid))
            return all.filter { !pids.contains($0.parentPID) }.map(\.pid)
        }

        @Test("a zygote that dies is started again; after a reconnect it is adopted again; a stray one is taken over")
        func restartAndTakeOver() async throws {
            let guest = try await Self.guest.get()
            let first = try #require(try await Self.zygotes(guest).first)
            try await guest.signal(pid: first, SIGKILL)
            try await Task.sleep(for: .milliseconds(500))
            let cold = try await guest.python.run(PythonCode("1 + 1"))
            #expect(!cold.warmStart && cold.value?.repr == "2", "with the zygote gone, a job starts cold and starts it")
            _ = try await guest.warmPython()
            #expect(try await guest.python.run(PythonCode("1 + 1")).warmStart)
            let second = try #require(try await Self.zygotes(guest).first)
            #expect(second != first)

            // A new session (the host reconnecting) keeps the zygote, a service command, and the
            // host adopts it again: the next job forks from it at once.
            try await guest.reconnect()
            #expect(try await Self.zygotes(guest) == [second], "the zygote outlived its session")
            #expect(try await guest.python.run(PythonCode("1 + 1")).warmStart, "adopted again after the reconnect")

            // A zygote the host does not know of (a stray one) is taken over by the next: it is
            // asked to stop and ends; the host's own, taken over by the stray, is restarted.
            let stray = try await guest.stream(
                Command(["python3", "-m", "vmexec_runner.zygote", "/run/vmexec/python.sock"], user: .root, privateTmp: false))
            let watching = Task { () async throws -> Termination? in
                for try await event in stray { if case .exit(let t, _) = event { return t } }
                return nil
            }
            var left: [UInt32] = []
            for _ in 0..<100 {
                left = try await Self.zygotes(guest)
                if left == [stray.pid] { break }  // the host's ended on the stray's request
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(left == [stray.pid], "the stray took over: \(left)")
            try await Task.sleep(for: .milliseconds(300))  // the host hears its zygote's end
            _ = try await guest.python.run(PythonCode("1 + 1"))
            _ = try await guest.warmPython()
            let strayEnded = try await watching.value
            #expect(strayEnded == .exited(0), "the stray ended when the host's new zygote took over")
            #expect(try await Self.zygotes(guest).count == 1)
            #expect(try await guest.python.run(PythonCode("1 + 1")).warmStart)
        }

        @Test("the Python shards carry bytecode: a read-only shard's imports compile nothing")
        func bytecodeInShards() throws {
            let numpy = try Shard.open(try #require(TestImages.libsShardPath("numpy"))).inspect(hashes: false)
            #expect(numpy.entries.contains { $0.path == "/numpy/__pycache__/__init__.cpython-311.pyc" })
            let sdk = try Shard.open(try #require(SharedGuest.sdkShardPath)).inspect(hashes: false)
            #expect(sdk.entries.contains { $0.path.hasSuffix("vmexec_runner/__pycache__/zygote.cpython-311.pyc") })
            #expect(sdk.entries.contains { $0.path == "/usr/lib/vmexec/zygote-client" })
        }

        @Test("detaching a preloaded shard stops the zygote first; the next job starts it with the new set")
        func shardChange() async throws {
            let guest = try await Self.guest.get()
            try await guest.detach("numpy")
            let cold = try await guest.python.run(PythonCode("import sys\n'numpy' in sys.modules"))
            #expect(!cold.warmStart && cold.value?.repr == "False", "the first job after a change starts cold")
            let warmth = try await guest.warmPython()
            #expect(warmth.preloaded.isEmpty)
            let warm = try await guest.python.run(PythonCode("import sys\n'numpy' in sys.modules"))
            #expect(warm.warmStart && warm.value?.repr == "False")
            await guest.shutdown()
        }
    }
}
