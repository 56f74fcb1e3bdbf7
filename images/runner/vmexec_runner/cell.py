"""Code run as interactive Python runs a cell: every statement in order, and
the value of the last one kept when it is an expression."""

import ast
import linecache

from . import outputs
from .control import Control, Runtime, Stop, check, namespace_builtins, rewrite, time_limit
from .host import shared_state, sharing
from .records import describe_error, describe_value


def split_last_expression(tree):
    """The module without its last statement, and that statement as an expression (or None)."""
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(body=tree.body[-1].value)
        tree.body = tree.body[:-1]
        return tree, last
    return tree, None


def run(request, records, link):
    """Runs the request's code ({"source", "filename", "control", "shared", "callbacks"});
    returns the result record's fields."""
    try:
        source = request.get("source")
        if not isinstance(source, str):
            raise ValueError("the request has no source text")
        filename = request.get("filename") or "<code>"
        control = Control(request.get("control"))
        given, shared = sharing(request, link)
    except ValueError as exc:
        return {"value": None, "error": {"type": "ValueError", "message": str(exc), "traceback": ""}}
    runtime = Runtime(control, records)
    namespace = {
        "__name__": "__main__",
        "__file__": filename,
        "__builtins__": namespace_builtins(control),
        "__vmexec__": runtime,
    }
    namespace.update(given)
    # Tracebacks and inspect show the code's lines, as they do for a file.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    value = error = exit_code = None
    try:
        with time_limit(control.timeout):
            tree = ast.parse(source, filename=filename, mode="exec")
            check(tree, filename, source, control)
            body, last = split_last_expression(tree)
            exec(compile(rewrite(body, control), filename, "exec"), namespace)
            if last is not None:
                line = last.body.lineno
                if control.trace:
                    runtime.step(line, namespace)
                try:
                    raw = eval(compile(last, filename, "eval"), namespace)
                    value = describe_value(raw)
                    outputs.send_value(raw)
                except Exception as exc:
                    if control.on_error == "raise":
                        raise
                    runtime.failed(line, exc)
    except Stop:
        pass
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are the code's too
        if not (isinstance(exc, SystemExit) and exc.code in (None, 0)):
            error = describe_error(exc)
            exit_code = exc.code if isinstance(exc, SystemExit) else None
    result = {"value": value, "error": error}
    if error and error["type"] == "SystemExit":
        # sys.exit(N) ends the runner with N, as it would end `python3 script.py`.
        result["exit_status"] = exit_code if isinstance(exit_code, int) and 0 < exit_code < 256 else 1
    if control.watch:
        result["watched"] = runtime.watched(namespace)
    if shared:
        result["shared"] = shared_state(namespace, shared)
    if any(runtime.dropped.values()):
        result["dropped"] = runtime.dropped
    return result
