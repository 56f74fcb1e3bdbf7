"""vmexec's Python runner, shipped in the SDK shard: runs code as a job.

    python3 -m vmexec_runner run [--filename NAME] [--control JSON] < CODE
    python3 -m vmexec_runner call < {"function", "args", "kwargs", "source"+"filename" | "target", "control"}
    python3 -m vmexec_runner worker < one JSON line naming the code, then one per call

`run` reads the code whole from stdin and runs it as interactive Python
runs a cell (cell.py); `call` calls a function with JSON arguments in this
process; `worker` keeps the code loaded and answers calls until stdin ends
(calls.py). `--control` (or a request's "control") asks for time and loop
limits, throttling, step events, an error policy or restricted mode
(control.py).

Everything goes to the runner's own stdout as JSON lines, one record each:

    {"type": "stdout", "data": BASE64}       output of the code, as it came
    {"type": "stderr", "data": BASE64}
    {"type": "step", "line": N, "vars": {NAME: VALUE}}       with --control trace
    {"type": "ignored", "line": N, "error": ERROR}           under on_error continue/stop
    {"type": "loop_limit", "line": N, "limit": N}            under on_loop_limit break
    {"type": "ready", "error": ERROR|null}                   a worker loaded its code
    {"type": "result", "value": VALUE|null, "error": ERROR|null,
     "watched": {NAME: VALUE}, "dropped": {KIND: N}, "id": ID, "usage": {...}}   last (per call)

    VALUE = {"repr": "repr() of the value", "json": "the value as JSON text, if it serialises"}
    ERROR = {"type": "ValueError", "message": "...", "traceback": "..."}

The traceback holds the code's frames and those it called, never the
runner's. The exit status is 0, or 1 when the code raised.
"""

import argparse
import json
import os
import sys

from . import calls, cell
from .control import Control
from .records import Capture, Records


def main(argv):
    parser = argparse.ArgumentParser(prog="python3 -m vmexec_runner")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run code read from stdin")
    run_parser.add_argument("--filename", default="<code>", help="the name tracebacks give the code")
    run_parser.add_argument("--control", default="{}", help="execution control, a JSON object (control.py)")
    sub.add_parser(
        "call",
        help="call a function: stdin is JSON {function, args, kwargs, control, and source (+ filename) or target}",
    )
    sub.add_parser("worker", help="keep code loaded and answer calls: JSON lines on stdin (calls.py)")
    args = parser.parse_args(argv)

    records = Records(os.dup(1))
    if args.command == "worker":
        # Requests keep coming on the original stdin; the code's stdin is /dev/null.
        requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    else:
        given = sys.stdin.buffer.read().decode("utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, "r", closefd=False)

    capture = Capture(records)
    if args.command == "worker":
        status = calls.worker(requests, records, capture)
        capture.end()
        return status
    if args.command == "run":
        try:
            control = Control(json.loads(args.control))
        except ValueError as exc:
            result = {"value": None, "error": {"type": "ValueError", "message": str(exc), "traceback": ""}}
        else:
            result = cell.run(given, args.filename, control, records)
    else:
        try:
            request = json.loads(given)
        except ValueError as exc:
            result = {"value": None, "error": {"type": "ValueError", "message": f"the call is not JSON: {exc}", "traceback": ""}}
        else:
            result = calls.call(request, records)
    capture.end()
    records.send(dict(result, type="result"))
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
