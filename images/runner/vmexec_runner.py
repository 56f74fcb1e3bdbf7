"""vmexec's Python runner, shipped in the SDK shard: runs code as a job.

    python3 -m vmexec_runner run [--filename NAME] < CODE
    python3 -m vmexec_runner call < {"function", "args", "kwargs", "source"+"filename" | "target"}

The code is read whole from stdin, then run as interactive Python runs a
cell: every statement in order, and if the last one is an expression, its
value is kept. What the code (and anything it starts) writes to its stdout
and stderr is captured at the file-descriptor level, so prints, C
extensions and child processes are all caught, and passed on as it comes.

Everything goes to the runner's own stdout as JSON lines, one record each:

    {"type": "stdout", "data": BASE64}       output of the code, as it came
    {"type": "stderr", "data": BASE64}
    {"type": "result", "value": VALUE|null, "error": ERROR|null}   last

    VALUE = {"repr": "repr() of the value", "json": "the value as JSON text, if it serialises"}
    ERROR = {"type": "ValueError", "message": "...", "traceback": "..."}

The traceback holds the code's frames and those it called, never the
runner's. The exit status is 0, or 1 when the code raised.

`call` runs a function with JSON arguments: from `source` (code run as a
module first), a `.py` file by path, or a module by name. Its return
value must serialise to JSON; the result record carries it as `json`.
"""

import argparse
import ast
import base64
import io
import json
import linecache
import os
import sys
import threading
import traceback

RUNNER_FILE = os.path.abspath(__file__)


class Records:
    """The record channel: the runner's original stdout, written whole lines at a time."""

    def __init__(self, fd):
        self.out = os.fdopen(fd, "wb", buffering=0)
        self.lock = threading.Lock()

    def send(self, record):
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self.lock:
            self.out.write(line)


def pump(fd, name, records):
    """Passes one captured descriptor's bytes on as records until every writer closed it."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        records.send({"type": name, "data": base64.b64encode(chunk).decode()})
    os.close(fd)


def capture(records):
    """Points fds 1 and 2 at pipes read by threads; returns the threads."""
    threads = []
    for target, name in ((1, "stdout"), (2, "stderr")):
        read_end, write_end = os.pipe()
        os.dup2(write_end, target)
        os.close(write_end)
        t = threading.Thread(target=pump, args=(read_end, name, records), daemon=True)
        t.start()
        threads.append(t)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), encoding="utf-8", line_buffering=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), encoding="utf-8", line_buffering=True)
    return threads


def release(threads):
    """Flushes the code's output and waits until the pumps have passed it all on."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    for t in threads:
        # A background child still holding the pipe must not hold the result back for long.
        t.join(timeout=2.0)


def split_last_expression(tree):
    """The module without its last statement, and that statement as an expression (or None)."""
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(body=tree.body[-1].value)
        tree.body = tree.body[:-1]
        return tree, last
    return tree, None


def user_traceback(exc):
    """The traceback without the runner's own frames (a syntax error: only where it is)."""
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) != RUNNER_FILE]
    text = "Traceback (most recent call last):\n" if frames else ""
    text += "".join(traceback.format_list(frames))
    text += "".join(traceback.format_exception_only(type(exc), exc))
    return text


def describe_value(value):
    if value is None:
        return None
    described = {"repr": repr(value)}
    try:
        described["json"] = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        pass
    return described


def run(code, filename):
    """Runs the code; returns (value, error) as records describe them."""
    namespace = {"__name__": "__main__", "__file__": filename, "__builtins__": __builtins__}
    # Tracebacks and inspect show the code's lines, as they do for a file.
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        tree = ast.parse(code, filename=filename, mode="exec")
        body, last = split_last_expression(tree)
        exec(compile(body, filename, "exec"), namespace)
        value = eval(compile(last, filename, "eval"), namespace) if last is not None else None
        return describe_value(value), None
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are the code's too
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            return None, None
        return None, {"type": type(exc).__name__, "message": str(exc), "traceback": user_traceback(exc)}


def load_target(request):
    """The namespace a call's function is looked up in: the request's source run as a
    module, a .py file by path, or a module by name (the working directory first on sys.path)."""
    if request.get("source") is not None:
        filename = request.get("filename") or "<code>"
        namespace = {"__name__": "__vmexec_call__", "__file__": filename, "__builtins__": __builtins__}
        source = request["source"]
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), namespace)
        return namespace
    target = request.get("target") or ""
    if target.endswith(".py"):
        import importlib.util

        spec = importlib.util.spec_from_file_location("__vmexec_call__", target)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {target}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return vars(module)
    import importlib

    sys.path.insert(0, os.getcwd())
    return vars(importlib.import_module(target))


def call(request):
    """Calls request["function"] with its JSON args and kwargs; (value, error) as for run().
    A return value that does not serialise to JSON is an error: a call's answer is JSON."""
    try:
        namespace = load_target(request)
        name = request["function"]
        function = namespace.get(name)
        if not callable(function):
            raise AttributeError(f"{request.get('target') or request.get('filename') or 'the code'} has no function {name!r}")
        result = function(*request.get("args", []), **request.get("kwargs", {}))
        value = describe_value(result) or {"repr": "None", "json": "null"}
        if "json" not in value:
            raise TypeError(f"{name} returned {type(result).__name__}, which is not JSON: {value['repr'][:200]}")
        return value, None
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            return {"repr": "None", "json": "null"}, None
        return None, {"type": type(exc).__name__, "message": str(exc), "traceback": user_traceback(exc)}


def main(argv):
    parser = argparse.ArgumentParser(prog="python3 -m vmexec_runner")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run code read from stdin")
    run_parser.add_argument("--filename", default="<code>", help="the name tracebacks give the code")
    sub.add_parser(
        "call",
        help="call a function: stdin is JSON {function, args, kwargs, and source (+ filename) or target}",
    )
    args = parser.parse_args(argv)

    given = sys.stdin.buffer.read().decode("utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, "r", closefd=False)

    records = Records(os.dup(1))
    threads = capture(records)
    if args.command == "run":
        value, error = run(given, args.filename)
    else:
        try:
            request = json.loads(given)
            if not isinstance(request, dict) or not isinstance(request.get("function"), str):
                raise ValueError("the call needs a JSON object with a function name")
            if not isinstance(request.get("args", []), list) or not isinstance(request.get("kwargs", {}), dict):
                raise ValueError("args must be a JSON array and kwargs a JSON object")
        except ValueError as exc:
            value, error = None, {"type": "ValueError", "message": str(exc), "traceback": ""}
        else:
            value, error = call(request)
    release(threads)
    records.send({"type": "result", "value": value, "error": error})
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
