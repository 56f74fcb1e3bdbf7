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
import selectors
import signal
import socket
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 2, 4, 8, 32, 4096
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
    listener = _listen(path)
    print(json.dumps({"type": "ready", "pid": os.getpid(), "failed": failed}), flush=True)
    _serve(listener, path)
    return 0


def _listen(path):
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
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


def _serve(listener, path):
    """Forks a child per connection and reports its end, until SIGTERM: then it stops
    listening at once, and returns once its running children have ended."""
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    children = {}
    while not (stopping and not children):
        if stopping and listener is not None:
            selector.unregister(listener)
            listener.close()
            listener = None
            try:
                os.unlink(path)
            except OSError:
                pass
        for key, _ in selector.select():
            if key.fileobj is listener and listener is not None:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                pid = os.fork()
                if pid == 0:
                    _child(conn)  # never returns
                _tell(conn, b"S", pid)
                children[pid] = conn
            else:
                try:
                    while os.read(wake_read, 256):
                        pass
                except BlockingIOError:
                    pass
                _reap(children)


def _tell(conn, kind, value):
    try:
        conn.sendall(kind + struct.pack("=i", value))
    except OSError:
        pass  # the client is gone: its cgroup, and the child in it, go too


def _reap(children):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            _tell(conn, b"E", status)
            conn.close()


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
            os.write(_job_stderr, f"vmexec zygote: {exc}\n".encode())
            os._exit(127)
        if tuple(args[1:3]) != RUNNER:
            # Not the runner: executed, as the init would have (now in the job's isolation).
            try:
                os.execvpe(program, args, env)
            except OSError as exc:
                os.write(2, f"vmexec zygote: cannot execute {program}: {exc.strerror}\n".encode())
                os._exit(127)
        status = _run_runner(args[3:], env)
    except BaseException:
        # A fault of the zygote's own, not the job's: said where the job's errors go.
        import traceback

        os.write(_job_stderr, f"vmexec zygote: {traceback.format_exc()}".encode(errors="replace"))
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
        with open(f"{proc}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        self.umask = int(status["Umask"], 8)
        self.groups = [int(g) for g in status["Groups"].split()]
        if int(status["Uid"].split()[1]) != uid or int(status["Gid"].split()[1]) != gid:
            raise ValueError("its process changed identity")
        with open(f"{proc}/cgroup") as f:
            self.cgroup = next(line.split("::", 1)[1].strip() for line in f if line.startswith("0::"))
        self.limits = {r: resource.prlimit(pid, r) for r in _rlimits()}
        # A readable pidfd means the process ended: then the pid may name another.
        import select

        if select.select([self.pidfd], [], [], 0)[0]:
            raise ValueError("it ended")

    def enter_cgroup(self):
        # The zygote sees the hierarchy read-only, as every command does: a
        # mount namespace of the child's own, left for the job's next, makes it writable.
        if "/.." in self.cgroup or not self.cgroup.startswith("/"):
            raise ValueError(f"odd cgroup {self.cgroup}")
        _check(libc.unshare(CLONE_NEWNS), "unshare")
        flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC
        _check(libc.mount(None, CGROUP.encode(), None, flags, None), "remount")
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
        for r, limit in self.limits.items():
            resource.setrlimit(r, limit)
        os.umask(self.umask)

    def become_user(self):
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        os.setgroups(self.groups)
        os.setgid(self.gid)
        os.setuid(self.uid)


def _rlimits():
    return [getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")]


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
    # Each child draws its own random numbers (Python's random reseeds itself at fork).
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()
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
