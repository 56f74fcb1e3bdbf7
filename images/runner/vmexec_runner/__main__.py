"""vmexec's Python runner, shipped in the SDK shard: runs code as a job.

    python3 -m vmexec_runner run     < {"source", "filename", "control", "shared", "callbacks"}
    python3 -m vmexec_runner call    < {"function", "args", "kwargs", "source"+"filename" | "target", ...}
    python3 -m vmexec_runner worker  < one JSON line naming the code, then one per call

Requests are JSON lines on stdin; the code's own stdin is /dev/null. `run`
runs code as interactive Python runs a cell (cell.py); `call` calls a
function with JSON arguments in this process; `worker` keeps the code loaded
and answers calls until stdin ends (calls.py). A request's "control" asks for
time and loop limits, throttling, step events, an error policy or restricted
mode (control.py); matplotlib figures and values that draw themselves come
back as outputs (outputs.py); "shared" puts JSON values among the code's globals and
"callbacks" names host functions it may call, whose answers come as further
lines on stdin (host.py).

Everything goes to the runner's own stdout as JSON lines, one record each:

    {"type": "stdout", "data": BASE64}       output of the code, as it came
    {"type": "stderr", "data": BASE64}
    {"type": "step", "line": N, "vars": {NAME: VALUE}}       under control trace
    {"type": "ignored", "line": N, "error": ERROR}           under on_error continue/stop
    {"type": "loop_limit", "line": N, "limit": N}            under on_loop_limit break
    {"type": "callback", "id": N, "name", "args", "kwargs"}  a host function called
    {"type": "output", "mime": "image/png", "data": BASE64}  a figure, a value that draws itself
    {"type": "ready", "error": ERROR|null}                   a worker loaded its code
    {"type": "result", "value": VALUE|null, "error": ERROR|null, "watched": {NAME: VALUE},
     "shared": {NAME: VALUE}, "dropped": {KIND: N}, "id": ID, "usage": {...},
     "start": "cold"|"warm"}   last (per call); "warm": forked from the zygote (zygote.py)

    VALUE = {"repr": "repr() of the value", "json": "the value as JSON text, if it serialises"}
    ERROR = {"type": "ValueError", "message": "...", "traceback": "..."}

The traceback holds the code's frames and those it called, never the
runner's. The exit status is 0, 1 when the code raised, or N after sys.exit(N).
"""

import json
import os
import sys

from . import cell, outputs
from .host import HostLink
from . import records as record_channel
from .records import Capture, Records


USAGE = "usage: python3 -m vmexec_runner {run|call|worker} < JSON lines (see the module's doc)"


def main(argv):
    # No argparse: it and what it imports cost a fresh interpreter tens of milliseconds under TCG.
    if len(argv) != 1 or argv[0] not in ("run", "call", "worker"):
        print(USAGE, file=sys.stderr)
        return 2
    command = argv[0]

    # Figures are drawn off screen and shown as outputs, unless the caller chose a backend.
    os.environ.setdefault("MPLBACKEND", "module://vmexec_runner.mpl_backend")
    records = Records(os.dup(1))
    # Requests (and the host's answers to callbacks) come on the original stdin.
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, "r", closefd=False)

    capture = Capture(records)
    link = HostLink(requests, records, capture)
    outputs.sink, sent = outputs.record_sink(records, capture, limit=100)
    if command == "worker":
        from . import calls

        status = calls.worker(requests, records, capture, link, sent)
        capture.end()
        return status
    try:
        request = json.loads(requests.readline() or "null")
        if not isinstance(request, dict):
            raise ValueError("the request is not a JSON object")
    except ValueError as exc:
        result = {"value": None, "error": {"type": "ValueError", "message": f"a bad request: {exc}", "traceback": ""}}
    else:
        if command == "run":
            result = cell.run(request, records, link)
        else:
            from . import calls

            result = calls.call(request, records, link)
        outputs.send_open_figures()
        if sent["dropped"]:
            result.setdefault("dropped", {})["output"] = sent["dropped"]
    capture.end()
    status = result.pop("exit_status", 1 if result["error"] else 0)
    records.send(dict(result, type="result", start=record_channel.START))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
