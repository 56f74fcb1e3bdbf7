#!/usr/bin/env python3
"""Drives a command under a pseudo-terminal, as a person at a terminal would.

usage: terminal_driver.py STEPS_JSON -- COMMAND [ARG...]

The command (the vmexec binary) runs as the session leader of a new pty of
30 rows and 100 columns, with the pty as its controlling terminal, so it
sees a real terminal: isatty, raw mode, SIGWINCH. STEPS_JSON is a list of
steps, each one of:

  {"expect": "TEXT", "timeout": SECONDS}   read until TEXT appears in the output
                                           printed since the last expect
  {"send": "TEXT"}                         type TEXT (\\r for Enter, \\u0003 for Ctrl-C)
  {"resize": [ROWS, COLS]}                 resize the terminal (the kernel sends SIGWINCH)
  {"sleep": SECONDS}

It prints one JSON object: the transcript, the step that failed (null if
none), the command's exit status, and whether the terminal was left in
the mode it started in (canonical, echoing). The Swift test asserts on it.
"""
import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import termios
import time


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def main():
    steps = json.loads(sys.argv[1])
    command = sys.argv[sys.argv.index("--") + 1:]
    master, slave = os.openpty()
    set_size(slave, 30, 100)
    before = termios.tcgetattr(slave)

    def controlling_terminal():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=controlling_terminal, close_fds=True)
    transcript = b""
    mark = 0
    failed = None

    def read_some(timeout):
        nonlocal transcript
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(master, 65536)
        except OSError:
            return False
        transcript += data
        return bool(data)

    for index, step in enumerate(steps):
        if "expect" in step:
            needle = step["expect"].encode()
            deadline = time.monotonic() + step.get("timeout", 120)
            while needle not in transcript[mark:]:
                left = deadline - time.monotonic()
                if left <= 0 or (not read_some(min(left, 1.0)) and proc.poll() is not None):
                    break
            found = transcript.find(needle, mark)
            if found < 0:
                failed = index
                break
            mark = found + len(needle)
        elif "send" in step:
            os.write(master, step["send"].encode())
        elif "resize" in step:
            rows, cols = step["resize"]
            set_size(master, rows, cols)
        elif "sleep" in step:
            end = time.monotonic() + step["sleep"]
            while time.monotonic() < end:
                read_some(max(0.0, end - time.monotonic()))

    if failed is not None:
        proc.kill()
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            read_some(0.2)
        if proc.poll() is None:
            proc.kill()
        status = proc.wait()
    finally:
        while read_some(0.2):
            pass
    after = termios.tcgetattr(slave)
    os.close(slave)
    os.close(master)
    print(json.dumps({
        "transcript": transcript.decode("utf-8", "replace"),
        "failedStep": failed,
        "status": status,
        # lflag (index 3) holds ICANON and ECHO: the command must give the terminal back as it found it.
        "restored": after[3] == before[3],
    }))


if __name__ == "__main__":
    main()
