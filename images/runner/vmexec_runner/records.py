"""The record channel to the host, and the capture of the code's output.

Everything the runner tells the host is a JSON line on its original stdout.
What the code (and anything it starts) writes to fds 1 and 2 is captured at
the descriptor level, so prints, C extensions and child processes are all
caught, and passed on as records as it comes.
"""

import _thread
import base64
import fcntl
import io
import json
import os
import select
import struct
import sys
import termios
import threading
import traceback

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# "cold": this interpreter started for the job; "warm": forked from the zygote (zygote.py).
START = "cold"


class Records:
    """The record channel: the runner's original stdout, written whole lines at a time."""

    def __init__(self, fd):
        self.out = os.fdopen(fd, "wb", buffering=0)
        self.lock = threading.Lock()

    def send(self, record):
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self.lock:
            self.out.write(line)


class Capture:
    """Points fds 1 and 2 at pipes that one thread passes on as records.

    `flush()` returns once everything written so far has been passed on, and
    capture goes on (a worker's calls, one after another): it wakes the thread
    through a pipe of its own, and the thread drains both pipes before it
    answers. Bytes a finished write() put in a pipe are there to drain, so
    nothing written before the flush can come after the result. `end()` stops."""

    def __init__(self, records):
        self.records = records
        self.pipes = {}
        for target, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            os.dup2(write_end, target)
            os.close(write_end)
            os.set_blocking(read_end, False)
            self.pipes[read_end] = name
        self.ended = False
        self.wake_read, self.wake_write = os.pipe()
        self.drained = threading.Semaphore(0)
        # A bare thread, as a daemon thread: threading.Thread.start() also waits for the new
        # thread to say it started, a round of context switches a job's start need not pay.
        _thread.start_new_thread(self._pump, ())
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), encoding="utf-8", line_buffering=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), encoding="utf-8", line_buffering=True)

    def _drain(self, fd, limit=None):
        """Passes on what the pipe holds (at most `limit` bytes); False once every writer closed it."""
        while limit is None or limit > 0:
            try:
                chunk = os.read(fd, 65536 if limit is None else min(limit, 65536))
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            if not chunk:
                return False
            if limit is not None:
                limit -= len(chunk)
            if self.ended:
                continue  # after the result: a background child's output goes nowhere
            self.records.send({"type": self.pipes[fd], "data": base64.b64encode(chunk).decode()})
        return True

    def _pump(self):
        poller = select.poll()
        for fd in list(self.pipes) + [self.wake_read]:
            poller.register(fd, select.POLLIN)
        open_pipes = set(self.pipes)
        while True:
            for fd, _ in poller.poll():
                if fd == self.wake_read:
                    os.read(fd, 1)
                    for pipe in list(open_pipes):
                        # What the pipe held when asked: a child writing without end cannot hold a flush.
                        held = struct.unpack("i", fcntl.ioctl(pipe, termios.FIONREAD, b"\0\0\0\0"))[0]
                        if not self._drain(pipe, held):
                            open_pipes.discard(pipe)
                            poller.unregister(pipe)
                    self.drained.release()
                elif fd in open_pipes and not self._drain(fd):
                    open_pipes.discard(fd)
                    poller.unregister(fd)

    def _flush_streams(self):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass

    def flush(self):
        """All output so far passed on; capture goes on."""
        self._flush_streams()
        os.write(self.wake_write, b"!")
        self.drained.acquire()

    def end(self):
        """All output so far passed on; later output (a background child's) goes nowhere."""
        self.flush()
        self.ended = True
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)


def describe_value(value):
    """A value as records carry it: its repr, and its JSON text when it serialises."""
    if value is None:
        return None
    try:
        described = {"repr": repr(value)}
    except Exception as exc:  # a broken __repr__ must not lose the result
        described = {"repr": f"<{type(value).__name__} whose repr raised {type(exc).__name__}>"}
    try:
        described["json"] = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        pass
    return described


def describe_error(exc):
    """An exception as records carry it: type, message, the code's frames only."""
    try:
        message = str(exc)
    except Exception:
        message = "<the exception's str() raised>"
    return {"type": type(exc).__name__, "message": message, "traceback": user_traceback(exc)}


def user_traceback(exc):
    """The traceback without the runner's own frames (a syntax error: only where it is)."""
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc))
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if os.path.dirname(os.path.abspath(f.filename)) != PACKAGE_DIR
    ]
    text = "Traceback (most recent call last):\n" if frames else ""
    text += "".join(traceback.format_list(frames))
    text += "".join(traceback.format_exception_only(type(exc), exc))
    cause = exc.__cause__
    if cause is not None:
        text = user_traceback(cause) + "\nThe above exception was the direct cause of the following exception:\n\n" + text
    return text
