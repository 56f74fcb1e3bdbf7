import Foundation
import Testing
import VMExecutor

/// What ordinary programs expect of a Linux system, asked of a real guest:
/// each expectation is one named check in a Python program run as the
/// default (unprivileged) user, and each is asserted by name, so a missing
/// one fails as surely as a broken one. docs/GUEST.md lists what the guest
/// offers and what it withholds.
extension RealGuests {
    @Suite("What ordinary programs expect", .timeLimit(.minutes(10)))
    struct ConformanceTests {
        /// Runs `checks`, a Python program that fills `results` (name -> "ok"
        /// or what went wrong), and returns that dictionary.
        private func run(_ checks: String, in s: Sandbox, timeout: Duration = .seconds(240)) async throws -> [String: String] {
            let program = ConformancePrelude.source + checks + "\nprint(json.dumps(results))\n"
            let r = try await s.exec(Command(["python3", "-c", program], timeout: timeout))
            #expect(r.exitCode == 0, "the checks ran to their end: \(r.stderrText)")
            let line = r.stdoutText.split(separator: "\n").last.map(String.init) ?? ""
            let decoded = try? JSONDecoder().decode([String: String].self, from: Data(line.utf8))
            #expect(decoded != nil, "the checks printed their results: \(r.stdoutText) \(r.stderrText)")
            return decoded ?? [:]
        }

        private func expectAll(_ names: [String], in results: [String: String]) {
            for name in names {
                #expect(results[name] == "ok", "\(name): \(results[name] ?? "did not run")")
            }
        }

        @Test("multiprocessing: Pool, Lock, Queue, shared_memory and a Manager")
        func multiprocessing() async throws {
            let s = try await SharedGuest.shared.get()
            let results = try await run(
                #"""
                import multiprocessing as mp
                from multiprocessing import shared_memory

                def square(x):
                    return x * x

                def fill(name):
                    m = shared_memory.SharedMemory(name=name)
                    m.buf[:5] = b"hello"
                    m.close()

                def put(q):
                    q.put("from the child")

                def store(d):
                    d["child"] = 42

                @check("pool")
                def _():
                    with mp.Pool(2) as p:
                        assert p.map(square, range(10)) == [x * x for x in range(10)]

                @check("lock")
                def _():
                    lock = mp.Lock()
                    with lock:
                        assert not lock.acquire(block=False)

                @check("semaphore")
                def _():
                    sem = mp.Semaphore(2)
                    sem.acquire(); sem.acquire()
                    assert not sem.acquire(block=False)

                @check("queue")
                def _():
                    q = mp.Queue()
                    p = mp.Process(target=put, args=(q,))
                    p.start()
                    assert q.get(timeout=60) == "from the child"
                    p.join()

                @check("shared_memory")
                def _():
                    m = shared_memory.SharedMemory(create=True, size=4096)
                    try:
                        assert os.path.exists("/dev/shm/" + m.name)
                        p = mp.Process(target=fill, args=(m.name,))
                        p.start(); p.join()
                        assert bytes(m.buf[:5]) == b"hello"
                    finally:
                        m.close(); m.unlink()

                @check("manager")
                def _():
                    with mp.Manager() as manager:
                        d = manager.dict()
                        p = mp.Process(target=store, args=(d,))
                        p.start(); p.join()
                        assert d["child"] == 42
                """#, in: s)
            expectAll(["pool", "lock", "semaphore", "queue", "shared_memory", "manager"], in: results)
        }

        @Test("loopback: TCP on 127.0.0.1, ::1 and localhost, getaddrinfo, the hostname, sendfile")
        func loopback() async throws {
            let s = try await SharedGuest.shared.get()
            let results = try await run(
                #"""
                import socket, threading

                def echo_once(family, host):
                    srv = socket.create_server((host, 0), family=family)
                    port = srv.getsockname()[1]
                    def serve():
                        c, _ = srv.accept()
                        c.sendall(c.recv(100).upper())
                        c.close()
                    t = threading.Thread(target=serve); t.start()
                    return srv, port, t

                def round_trip(family, bind, connect):
                    srv, port, t = echo_once(family, bind)
                    with socket.create_connection((connect, port), timeout=30) as c:
                        c.sendall(b"ping")
                        assert c.recv(100) == b"PING"
                    t.join(); srv.close()

                @check("tcp_ipv4")
                def _(): round_trip(socket.AF_INET, "127.0.0.1", "127.0.0.1")

                @check("tcp_ipv6")
                def _(): round_trip(socket.AF_INET6, "::1", "::1")

                @check("tcp_localhost")
                def _(): round_trip(socket.AF_INET, "localhost", "localhost")

                @check("getaddrinfo_localhost")
                def _():
                    addrs = {a[4][0] for a in socket.getaddrinfo("localhost", 80)}
                    assert "127.0.0.1" in addrs and "::1" in addrs, addrs

                @check("hostname")
                def _():
                    name = socket.gethostname()
                    assert open("/etc/hostname").read().strip() == name, name
                    assert socket.gethostbyname(name).startswith("127."), name
                    assert any(a[0] == socket.AF_INET6 for a in socket.getaddrinfo(name, 80))

                @check("sendfile")
                def _():
                    data = os.urandom(1 << 20)
                    path = "/tmp/sendfile.bin"
                    with open(path, "wb") as f: f.write(data)
                    srv = socket.create_server(("127.0.0.1", 0))
                    got = bytearray()
                    def take():
                        c, _ = srv.accept()
                        while chunk := c.recv(65536): got.extend(chunk)
                        c.close()
                    t = threading.Thread(target=take); t.start()
                    with socket.create_connection(srv.getsockname()) as c, open(path, "rb") as f:
                        sent = 0
                        while sent < len(data):
                            sent += os.sendfile(c.fileno(), f.fileno(), sent, len(data) - sent)
                    t.join(); srv.close()
                    assert bytes(got) == data
                """#, in: s)
            expectAll(["tcp_ipv4", "tcp_ipv6", "tcp_localhost", "getaddrinfo_localhost", "hostname", "sendfile"], in: results)
        }

        @Test(
            "files and devices: message queues, ptys, pipelines, temporary files, /dev/fd, /run/lock, disk usage, cgroup limits")
        func filesAndDevices() async throws {
            let s = try await SharedGuest.shared.get()
            let results = try await run(
                #"""
                import ctypes, pty, shutil, subprocess, tempfile

                @check("mqueue")
                def _():
                    libc = ctypes.CDLL(None, use_errno=True)
                    libc.mq_open.restype = ctypes.c_int
                    O_CREAT, O_RDWR = 0o100, 0o2
                    q = libc.mq_open(b"/vmexec-check", O_CREAT | O_RDWR, 0o600, None)
                    assert q >= 0, os.strerror(ctypes.get_errno())
                    try:
                        assert os.path.exists("/dev/mqueue/vmexec-check")
                        assert libc.mq_send(q, b"note", 4, 0) == 0, os.strerror(ctypes.get_errno())
                        buf = ctypes.create_string_buffer(8192)
                        n = libc.mq_receive(q, buf, 8192, None)
                        assert buf.raw[:n] == b"note", n
                    finally:
                        libc.mq_close(q); libc.mq_unlink(b"/vmexec-check")

                @check("pty")
                def _():
                    master, slave = pty.openpty()
                    os.write(slave, b"through a pty\n")
                    assert os.read(master, 100).startswith(b"through a pty")
                    assert os.ttyname(slave).startswith("/dev/pts/")

                @check("pipeline")
                def _():
                    a = subprocess.Popen(["printf", "b\\na\\nb\\n"], stdout=subprocess.PIPE)
                    b = subprocess.Popen(["sort"], stdin=a.stdout, stdout=subprocess.PIPE)
                    c = subprocess.Popen(["uniq", "-c"], stdin=b.stdout, stdout=subprocess.PIPE)
                    a.stdout.close(); b.stdout.close()
                    out = c.communicate()[0].split()
                    assert out == [b"1", b"a", b"2", b"b"], out

                for d in ["/tmp", "/var/tmp", "/dev/shm"]:
                    @check("tempfile " + d)
                    def _():
                        with tempfile.NamedTemporaryFile(dir=d) as f:
                            f.write(b"x" * 10000); f.flush()
                            assert os.stat(f.name).st_size == 10000
                        with tempfile.TemporaryDirectory(dir=d) as t:
                            open(os.path.join(t, "f"), "w").write("y")

                @check("dev_fd")
                def _():
                    r, w = os.pipe()
                    assert os.path.exists("/dev/fd/%d" % r)
                    for name, fd in [("stdin", 0), ("stdout", 1), ("stderr", 2)]:
                        assert os.path.realpath("/dev/" + name) == os.path.realpath("/proc/self/fd/%d" % fd)

                @check("run_lock")
                def _():
                    assert os.stat("/run/lock").st_mode & 0o1777 == 0o1777
                    open("/run/lock/check.lock", "w").close(); os.remove("/run/lock/check.lock")
                    assert os.path.realpath("/var/lock") == "/run/lock"

                @check("etc_mtab")
                def _():
                    assert " / " in open("/etc/mtab").read()

                @check("disk_usage")
                def _():
                    before = shutil.disk_usage("/")
                    assert before.total > 0 and before.free > 0 and before.used + before.free <= before.total, before
                    path = os.path.join(os.environ["HOME"], "usage-check")
                    with open(path, "wb") as f:
                        f.write(os.urandom(8 << 20)); f.flush(); os.fsync(f.fileno())
                    after = shutil.disk_usage("/")
                    os.remove(path)
                    assert after.used - before.used >= 4 << 20, (before, after)
                    assert before.free - after.free >= 4 << 20, (before, after)

                @check("cgroup_limits")
                def _():
                    group = open("/proc/self/cgroup").read().strip().split("::")[1]
                    limit = open("/sys/fs/cgroup" + group + "/memory.max").read().strip()
                    assert limit.isdigit() and int(limit) > 0, limit
                """#, in: s)
            expectAll(
                [
                    "mqueue", "pty", "pipeline", "tempfile /tmp", "tempfile /var/tmp", "tempfile /dev/shm",
                    "dev_fd", "run_lock", "etc_mtab",
                    "disk_usage", "cgroup_limits",
                ], in: results)
        }

        @Test("bash: process substitution and /dev/stdin")
        func bash() async throws {
            let s = try await SharedGuest.shared.get()
            let substitution = try await s.exec(Command(["bash", "-c", "cat <(echo x) <(echo y)"]))
            #expect(substitution.stdoutText == "x\ny\n" && substitution.exitCode == 0, "\(substitution.stderrText)")
            let stdin = try await s.exec(Command(["bash", "-c", "cat /dev/stdin"], stdin: .bytes([UInt8]("piped\n".utf8))))
            #expect(stdin.stdoutText == "piped\n" && stdin.exitCode == 0, "\(stdin.stderrText)")
            let out = try await s.exec(Command(["bash", "-c", "echo to-stdout > /dev/stdout; echo to-stderr > /dev/stderr"]))
            #expect(out.stdoutText == "to-stdout\n" && out.stderrText == "to-stderr\n")
        }
    }
}

/// The Python side of the checks: `@check(name)` runs a function at once and
/// records "ok" or the exception it raised.
enum ConformancePrelude {
    static let source = #"""
        import json, os, traceback
        results = {}

        def check(name):
            def run(f):
                try:
                    f()
                    results[name] = "ok"
                except BaseException as e:
                    results[name] = "%s: %s" % (type(e).__name__, e)
                return f
            return run

        """#
}
