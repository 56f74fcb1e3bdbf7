"""A warm interpreter per sandbox: forks a child per job, with the job's isolation.

    python3 -m vmexec_runner.zygote SOCKET [MODULE...]

The zygote imports MODULE... (what the attached shards ask to preload, e.g.
numpy) and the runner, then listens on SOCKET; its one line on stdout says
which imports failed, once it listens. A job is the static zygote-client
(images/zygote-client.c), which the init starts like any command, with the
runner's command line after it. For each connection the zygote forks; the
child, before it reads anything the job sent:

  - leads a session of its own, and reads who the client is from the kernel
    (SO_PEERCRED: pid, uid, gid; the pid checked through a pidfd);
  - moves into the client's cgroup (its memory and process limits, its
    accounting, the init's kill on timeout and at the end);
  - joins the client's mount, IPC, UTS, network and cgroup namespaces (its
    private /tmp), then its root and working directory, resource limits,
    umask, supplementary groups, gid and uid, with no_new_privs;
  - takes the client's stdin, stdout and stderr, arguments and environment,
    closes every other descriptor, and runs the runner (`python3 -m
    vmexec_runner CMD`) in this interpreter, or executes any other program.

The zygote itself never runs a job's code and never reads what a job sent
(its children do, after the fork): nothing of one job can reach the next,
which is forked afresh from the zygote. It reports each child's pid and,
once reaped, its wait status to the client, which ends the same way.
"""

import ctypes
import gc
import json
import os
import resource
import select
import selectors
import signal
import socket
import struct
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 2, 4, 8, 32, 4096
PR_SET_PDEATHSIG = 1
MADV_POPULATE_WRITE = 23
PR_SET_NO_NEW_PRIVS = 38
CGROUP = "/sys/fs/cgroup"
MAX_REQUEST = 1 << 20
REQUEST_SECONDS = 10
RUNNER = ("-m", "vmexec_runner")

libc = ctypes.CDLL(None, use_errno=True)


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def main(argv):
    if not argv:
        print("usage: python3 -m vmexec_runner.zygote SOCKET [MODULE...]", file=sys.stderr)
        return 2
    path, modules = argv[0], argv[1:]
    # As the runner does: figures drawn off screen, for a preloaded matplotlib too.
    os.environ.setdefault("MPLBACKEND", "module://vmexec_runner.mpl_backend")
    failed = {}
    for module in modules:
        try:
            __import__(module)
        except Exception as exc:  # a shard's library that does not import: jobs import it themselves
            failed[module] = f"{type(exc).__name__}: {exc}"
    from . import __main__ as runner, calls, cell, control, host, outputs, records  # noqa: F401

    if "matplotlib.pyplot" in sys.modules:
        from . import mpl_backend  # noqa: F401

    # Objects that exist now are never collected or touched by the collector,
    # so a child's collections do not copy the zygote's pages.
    gc.collect()
    gc.freeze()
    _take_over(path + ".pid")
    listener = _listen(path)
    print(json.dumps({"type": "ready", "pid": os.getpid(), "failed": failed}), flush=True)
    _serve(listener, path)
    return 0


def _take_over(pidfile):
    """One zygote per guest: an earlier one (left by an earlier session, or restored with a
    saved state and not adopted) is asked to stop; it finishes its running jobs."""
    try:
        with open(pidfile) as f:
            old = int(f.read().strip() or 0)
        with open(f"/proc/{old}/cmdline", "rb") as f:
            if b"vmexec_runner.zygote" in f.read() and old != os.getpid():
                os.kill(old, signal.SIGTERM)
    except (OSError, ValueError):
        pass
    os.makedirs(os.path.dirname(pidfile), mode=0o755, exist_ok=True)
    with open(pidfile + ".new", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(pidfile + ".new", pidfile)


def _listen(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    # Any job may ask: what its child gets is exactly the asker's own isolation.
    os.chmod(path, 0o666)
    listener.listen(64)
    return listener


def _say(fd, text):
    """Writes to the zygote's (or a job's) stderr; once the zygote's session has ended, nobody reads it."""
    try:
        os.write(fd, text.encode(errors="replace"))
    except OSError:
        pass


def _serve(listener, path):
    """Keeps one spare child waiting on the socket, reports each job's start and end to its
    client, until SIGTERM: then it stops listening at once, and returns once its running
    jobs have ended.

    A spare is forked ahead of its job, so a job does not wait for the fork (10 ms under TCG
    with numpy loaded): it accepts the next connection itself and hands the zygote a copy of
    it with its pid, then becomes the job. The zygote runs at the lowest priority, so forking
    the next spare does not slow the job that just started."""
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    os.setpriority(os.PRIO_PROCESS, 0, 19)
    hand, spare_hand = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    selector = selectors.DefaultSelector()
    selector.register(hand, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    jobs = {}  # pid -> the client's connection
    early = {}  # pid -> wait status of a child reaped before its hand-over was read
    spare = None
    zygote = os.getpid()
    while True:
        if stopping:
            if spare is not None:
                os.kill(spare, signal.SIGKILL)
                spare = None
            if listener is not None:
                # The path may be a successor's socket by now: only this one's own is removed.
                try:
                    if os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
                        os.unlink(path)
                except OSError:
                    pass
                listener.close()
                listener = None
            if not jobs and not _pending(hand):
                return
        elif spare is None:
            spare = os.fork()
            if spare == 0:
                _spare(listener, spare_hand, zygote)  # never returns
        for key, _ in selector.select():
            if key.fileobj is hand:
                pid, conn = _handed(hand)
                if pid == spare:
                    spare = None
                _tell(conn, b"S", pid)
                if pid in early:
                    _tell(conn, b"E", early.pop(pid))
                    conn.close()
                else:
                    jobs[pid] = conn
            else:
                try:
                    while os.read(wake_read, 256):
                        pass
                except BlockingIOError:
                    pass
                for pid, status in _reaped():
                    conn = jobs.pop(pid, None)
                    if conn is not None:
                        _tell(conn, b"E", status)
                        conn.close()
                        continue
                    if pid == spare:  # died before it took a job: not in a tight loop
                        spare = None
                        time.sleep(0.5)
                    early[pid] = status
                    while len(early) > 64:
                        early.pop(next(iter(early)))


def _pending(hand):
    return bool(select.select([hand], [], [], 0)[0])


def _handed(hand):
    """A spare's hand-over: its pid and a copy of the connection it took."""
    message, fds, _, _ = socket.recv_fds(hand, 4, 1)
    return struct.unpack("=i", message)[0], socket.socket(fileno=fds[0])


def _tell(conn, kind, value):
    try:
        conn.sendall(kind + struct.pack("=i", value))
    except OSError:
        pass  # the client is gone: its cgroup, and the child in it, go too


def _reaped():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def _spare(listener, hand, zygote):
    """A child waiting for a job: what it can do ahead is done ahead."""
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        # It never outlives the zygote, which alone reports a job's end.
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        if os.getppid() != zygote:
            os._exit(0)
        _writable_cgroups()
        _own_pages()
        _rehearse()
        # Back from the zygote's lowest priority: the job's set-up must not queue behind the
        # next spare's fork. (It takes the client's priority with the rest of its isolation.)
        os.setpriority(os.PRIO_PROCESS, 0, 0)
        conn, _ = listener.accept()
        # Random numbers drawn after the accept: a spare restored with a saved state is the
        # same in every restore until then.
        _reseed()
        listener.close()
        socket.send_fds(hand, [struct.pack("=i", os.getpid())], [conn.fileno()])
        hand.close()
    except BaseException:
        import traceback

        _say(2, f"vmexec zygote: a spare failed: {traceback.format_exc()}")
        os._exit(127)
    _child(conn)


def _reseed():
    """A spare serves one job: its random numbers are that job's own. Python's random and
    numpy's global generator get fresh state from the kernel (whose entropy the host
    refreshes on every connection)."""
    import random

    random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy = sys.modules["numpy"]
        state = numpy.frombuffer(os.urandom(624 * 4), dtype=numpy.uint32)
        numpy_random.mtrand._rand.set_state(("MT19937", state, 624))


def _rehearse():
    """Walks a job's path once on the spare's own data, so that the memory it allocates is
    faulted in before the job comes (a fresh child's first allocations fault page by page)."""
    peer = _Peer(os.getpid(), os.getuid(), os.getgid())
    for fd in (peer.pidfd, peer.root, peer.cwd):
        os.close(fd)
    from . import cell, records

    class Quiet:
        """Records and host link that keep nothing."""

        def send(self, record):
            json.dumps(record)

        def functions(self, names):
            return {}

    request = json.loads('{"source": "import sys\\nvalue = [1, 2.5, None]\\nvalue", "filename": "<rehearsal>"}')
    quiet = Quiet()
    quiet.send(dict(cell.run(request, quiet, quiet), type="result"))
    records.describe_value({"a": [1, 2]})


def _own_pages():
    """Copies the zygote's writable pages now, while the spare waits: after a fork every first
    write to one (a reference count is enough) faults and copies it, and under TCG those
    faults were most of a job's start. Linux 5.14+; without it, they come as the job runs."""
    with open("/proc/self/maps", "rb") as f:
        ranges = [line.split(None, 2)[:2] for line in f]
    for span, perms in ranges:
        if perms != b"rw-p":
            continue
        start, end = (int(x, 16) for x in span.split(b"-"))
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_POPULATE_WRITE)


def _writable_cgroups():
    # The zygote sees the hierarchy read-only, as every command does: a mount namespace of
    # the child's own, left for the job's, makes it writable there.
    _check(libc.unshare(CLONE_NEWNS), "unshare")
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC
    _check(libc.mount(None, CGROUP.encode(), None, flags, None), "remount")


# ---- the child: from here on, one job's process ----


class Refused(Exception):
    """A step of a child's set-up that failed: `stage` says which, as the init's spawn does."""

    def __init__(self, stage, error):
        super().__init__(f"cannot {stage}: {error}")


def _child(conn):
    status = 127
    try:
        try:
            program, args, env = _become_client(conn)
        except Refused as exc:
            # To the job's stderr once it came, else the zygote's (the host logs it).
            _say(_job_stderr, f"vmexec zygote: {exc}\n")
            os._exit(127)
        if tuple(args[1:3]) != RUNNER:
            # Not the runner: executed, as the init would have (now in the job's isolation).
            try:
                os.execvpe(program, args, env)
            except OSError as exc:
                _say(2, f"vmexec zygote: cannot execute {program}: {exc.strerror}\n")
                os._exit(127)
        status = _run_runner(args[3:], env)
    except BaseException:
        # A fault of the zygote's own, not the job's: said where the job's errors go.
        import traceback

        _say(_job_stderr, f"vmexec zygote: {traceback.format_exc()}")
        status = 127
    finally:
        os._exit(status)


def _step(stage, action, *args):
    try:
        return action(*args)
    except OSError as exc:
        raise Refused(stage, exc.strerror or exc) from None
    except (ValueError, IndexError, KeyError) as exc:
        raise Refused(stage, exc) from None


def _become_client(conn):
    """Takes the client's isolation, descriptors, arguments and environment."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    peer = _step("find the job's process", _Peer, pid, uid, gid)
    _step("enter the job's cgroup", peer.enter_cgroup)
    program, args, env, fds = _step("read the job", _read_request, conn)
    _step("enter the job's namespaces", peer.enter_namespaces)
    _step("become the job's user", peer.become_user)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    _close_from(3)
    return program, args, env


class _Peer:
    """The client process, read through /proc while its pidfd shows it is still the same process."""

    def __init__(self, pid, uid, gid):
        self.pid, self.uid, self.gid = pid, uid, gid
        self.pidfd = os.pidfd_open(pid)
        proc = f"/proc/{pid}"
        self.root = os.open(f"{proc}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.cwd = os.open(f"{proc}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        status = _read(f"{proc}/status")
        self.umask = int(_field(status, b"Umask"), 8)
        self.groups = [int(g) for g in _field(status, b"Groups").split()]
        if int(_field(status, b"Uid").split()[1]) != uid or int(_field(status, b"Gid").split()[1]) != gid:
            raise ValueError("its process changed identity")
        cgroup = _read(f"{proc}/cgroup")
        self.cgroup = cgroup[cgroup.index(b"0::") + 3 :].split(b"\n", 1)[0].decode()
        self.oom_score_adj = _read(f"{proc}/oom_score_adj").strip()
        self.priority = os.getpriority(os.PRIO_PROCESS, pid)
        self.limits = [(r, resource.prlimit(pid, r)) for r in RLIMITS]
        # A readable pidfd means the process ended: then the pid may name another.
        if select.select([self.pidfd], [], [], 0)[0]:
            raise ValueError("it ended")

    def enter_cgroup(self):
        if "/.." in self.cgroup or not self.cgroup.startswith("/"):
            raise ValueError(f"odd cgroup {self.cgroup}")
        fd = os.open(f"{CGROUP}{self.cgroup}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def enter_namespaces(self):
        kinds = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWCGROUP
        _check(libc.setns(self.pidfd, kinds), "setns")
        os.fchdir(self.root)
        os.chroot(".")
        os.fchdir(self.cwd)
        for r, limit in self.limits:
            resource.setrlimit(r, limit)
        os.umask(self.umask)
        os.setpriority(os.PRIO_PROCESS, 0, self.priority)
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, self.oom_score_adj)
        finally:
            os.close(fd)

    def become_user(self):
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        os.setgroups(self.groups)
        os.setgid(self.gid)
        os.setuid(self.uid)


RLIMITS = [getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")]


def _read(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _field(status, name):
    """A field of /proc/PID/status."""
    start = status.index(b"\n" + name + b":\t") + len(name) + 3
    return status[start : status.index(b"\n", start)].decode()


def _read_request(conn):
    conn.settimeout(REQUEST_SECONDS)
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    if len(head) != 8 or head[:4] != b"VXZ1" or len(fds) != 3:
        raise ValueError("not a zygote client's request")
    global _job_stderr
    _job_stderr = fds[2]
    (length,) = struct.unpack("=I", head[4:])
    if length > MAX_REQUEST:
        raise ValueError("the request is too long")
    payload = bytearray()
    while len(payload) < length:
        chunk = conn.recv(length - len(payload))
        if not chunk:
            raise ValueError("the request ended early")
        payload += chunk
    conn.close()
    args_part, _, env_part = bytes(payload).partition(b"\0\0")
    args = [os.fsdecode(a) for a in args_part.split(b"\0")]
    env = {}
    for item in env_part.rstrip(b"\0").split(b"\0") if env_part.strip(b"\0") else []:
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    if not args or not args[0]:
        raise ValueError("the request names no program")
    return args[0], args, env, fds


def _close_from(first):
    if libc.close_range(first, 0xFFFFFFFF, 0) != 0:
        os.closerange(first, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _run_runner(argv, env):
    """Runs the runner as `python3 -m vmexec_runner ARGV` would, in this process; its exit status."""
    import atexit
    import importlib
    import threading

    from . import __main__ as runner, records

    os.environ.clear()
    os.environ.update(env)
    # sys.path as a fresh `python3 -m` would make it: the working directory, then PYTHONPATH.
    base = [p for p in sys.path[1:] if p not in _zygote_pythonpath]
    extra = [p for p in env.get("PYTHONPATH", "").split(":") if p]
    sys.path[:] = [os.getcwd()] + extra + base
    sys.argv = [runner.__file__] + list(argv)
    sys.modules["__main__"] = runner
    importlib.invalidate_caches()
    if "MPLBACKEND" in env and "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use(env["MPLBACKEND"])
    records.START = "warm"
    try:
        status = runner.main(list(argv))
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException:
        import traceback

        traceback.print_exc()
        status = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    return status


def _exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


_job_stderr = 2
_zygote_pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
