#!/bin/bash
# deadline.sh SECONDS COMMAND...: runs a test command with line-buffered
# output and a deadline. A hung test must fail the run, not hold CI, and say
# where it hung: past the deadline this prints the command's process tree and
# every thread's stack (gdb when installed, else the kernel's view), then kills
# the whole process group (SIGKILL: the test runner survives SIGTERM) and
# exits 124, as timeout(1) does.
set -u
limit=$1
shift
# stdbuf: output reaches the log line by line, so a killed run shows the last
# test that started rather than whatever a pipe buffer held.
setsid stdbuf -oL -eL "$@" &
pid=$!
# Interrupted (Ctrl-C at make): the command is in a session of its own, so end it here.
trap 'kill -KILL -- "-$pid" 2>/dev/null; exit 130' INT TERM
waited=0
while kill -0 "$pid" 2>/dev/null; do
  if [ "$waited" -ge "$limit" ]; then
    echo "deadline.sh: '$*' still running after ${limit}s; its processes and threads:" >&2
    ps -o pid,ppid,stat,etime,wchan:24,args --forest -g "$pid" >&2 || true
    for p in $(pgrep -g "$pid"); do
      echo "--- process $p: $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-200)" >&2
      if command -v gdb >/dev/null; then
        timeout 120 gdb -p "$p" -batch -nx -ex 'set pagination off' -ex 'thread apply all bt 30' 2>/dev/null \
          | grep -E '^(Thread|#)' >&2 || true
      else
        for t in /proc/"$p"/task/*; do
          echo "thread ${t##*/} $(cat "$t/comm" 2>/dev/null) in $(cat "$t/wchan" 2>/dev/null)" >&2
          sed 's/^/    /' "$t/stack" >&2 2>/dev/null || true
        done
      fi
    done
    kill -KILL -- "-$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    exit 124
  fi
  sleep 1
  waited=$((waited + 1))
done
wait "$pid"
