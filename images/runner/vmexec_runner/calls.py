"""Function calls with JSON arguments: one per process (`call`), or many in a
persistent worker that keeps its state between them (`worker`).

A call's code is one of: `source` (run as a module first), a `.py` file by
path, or a module by name (the working directory first on sys.path). The
controls that rewrite code apply to the first two, which the runner compiles;
a module imported by name only gets the time limit.
"""

import json
import linecache
import os
import resource
import sys
import time
import types

from . import outputs
from .control import Control, Runtime, compile_module, namespace_builtins, time_limit
from .host import shared_state, sharing
from .records import describe_error, describe_value


def load(request, control, runtime, given):
    """The namespace the functions are looked up in, with `given` (shared values, host
    functions) among its globals before its code runs."""
    if request.get("source") is not None:
        filename = request.get("filename") or "<code>"
        return _module("__vmexec_call__", filename, request["source"], control, runtime, given)
    target = request.get("target") or ""
    if target.endswith(".py"):
        path = os.path.abspath(target)
        with open(path, encoding="utf-8") as f:
            source = f.read()
        # Its folder first on sys.path, as for a script: its neighbours import.
        sys.path.insert(0, os.path.dirname(path))
        return _module(os.path.splitext(os.path.basename(path))[0], path, source, control, runtime, given)
    if control.rewrites or given:
        raise ValueError(
            "loop limits, throttling, tracing, the error policy, restricted mode, shared values and host "
            f"functions apply to code the runner loads itself: give the call's source or a .py path, not the module {target!r}"
        )
    import importlib

    sys.path.insert(0, os.getcwd())
    return vars(importlib.import_module(target))


def _module(name, filename, source, control, runtime, given):
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__builtins__ = namespace_builtins(control)
    module.__vmexec__ = runtime
    vars(module).update(given)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    # Registered, so that pickle, dataclasses and the like find the module's classes.
    sys.modules[name] = module
    exec(compile_module(source, filename, control), vars(module))
    return vars(module)


def check_request(request, loading, calling):
    """A malformed request is the caller's error, said plainly."""
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    if loading and (request.get("source") is None) == (not request.get("target")):
        raise ValueError("name the code: source, or a target module or .py file (one of them)")
    if calling:
        if not isinstance(request.get("function"), str):
            raise ValueError("the call needs a function name")
        if not isinstance(request.get("args", []), list) or not isinstance(request.get("kwargs", {}), dict):
            raise ValueError("args must be a JSON array and kwargs a JSON object")


def invoke(namespace, request, described_target):
    """The function's JSON return value as a result record's fields."""
    name = request["function"]
    function = namespace.get(name)
    if not callable(function):
        raise AttributeError(f"{described_target} has no function {name!r}")
    result = function(*request.get("args", []), **request.get("kwargs", {}))
    value = describe_value(result) or {"repr": "None", "json": "null"}
    if "json" not in value:
        raise TypeError(f"{name} returned {type(result).__name__}, which is not JSON: {value['repr'][:200]}")
    return value


def describe_target(request):
    return request.get("target") or request.get("filename") or "the code"


def call(request, records, link):
    """One call in this process: load, call, the result record's fields."""
    try:
        check_request(request, loading=True, calling=True)
        control = Control(request.get("control"))
        given, shared = sharing(request, link)
    except ValueError as exc:
        return {"value": None, "error": {"type": "ValueError", "message": str(exc), "traceback": ""}}
    runtime = Runtime(control, records)
    namespace = {}
    try:
        with time_limit(control.timeout):
            namespace = load(request, control, runtime, given)
            fields = {"value": invoke(namespace, request, describe_target(request)), "error": None}
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            fields = {"value": {"repr": "None", "json": "null"}, "error": None}
        else:
            fields = {"value": None, "error": describe_error(exc)}
    if shared and namespace:
        fields["shared"] = shared_state(namespace, shared)
    return fields


def worker(requests, records, capture, link, sent):
    """Loads the code of the first request once, then answers each call that follows.

    Every line of `requests` is JSON. The first names the code, the controls, the
    shared values and the host functions (whose answers come on the same lines);
    the worker answers {"type": "ready", "error": ...}, and ends if the code did
    not load. Each line after it is {"id", "function", "args", "kwargs"}: the
    records of its output come first, then {"type": "result", "id", ...} with the
    call's usage. Calls run one at a time; the module's state stays between them.
    """
    first = requests.readline()
    try:
        request = json.loads(first)
        check_request(request, loading=True, calling=False)
        control = Control(request.get("control"))
        given, shared = sharing(request, link)
        runtime = Runtime(control, records)
        with time_limit(control.timeout):
            namespace = load(request, control, runtime, given)
    except BaseException as exc:
        capture.flush()
        records.send({"type": "ready", "error": describe_error(exc)})
        return 1
    capture.flush()
    records.send({"type": "ready", "error": None})
    target = describe_target(request)
    for line in requests:
        started = time.monotonic_ns(), resource.getrusage(resource.RUSAGE_SELF)
        sent["sent"] = sent["dropped"] = 0  # the output cap is per call
        call_id, status = None, None
        try:
            request = json.loads(line)
            call_id = request.get("id") if isinstance(request, dict) else None
            check_request(request, loading=False, calling=True)
        except ValueError as exc:
            fields = {"value": None, "error": {"type": "ValueError", "message": f"a bad call: {exc}", "traceback": ""}}
        else:
            try:
                with time_limit(control.timeout):
                    fields = {"value": invoke(namespace, request, target), "error": None}
            except BaseException as exc:
                fields = {"value": None, "error": describe_error(exc)}
                # A call that exits (or is interrupted) ends the worker, as it would end a process.
                if isinstance(exc, KeyboardInterrupt):
                    status = 1
                elif isinstance(exc, SystemExit):
                    status = 0 if exc.code in (None, 0) else 1
                    if status == 0:
                        fields = {"value": {"repr": "None", "json": "null"}, "error": None}
        if shared:
            fields["shared"] = shared_state(namespace, shared)
        outputs.send_open_figures()
        if sent["dropped"]:
            fields["dropped"] = {"output": sent["dropped"]}
        capture.flush()
        records.send(dict(fields, type="result", id=call_id, usage=_usage(started)))
        if status is not None:
            return status
    return 0


def _usage(started):
    wall, before = started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_ns": time.monotonic_ns() - wall,
        "user_us": int((after.ru_utime - before.ru_utime) * 1e6),
        "system_us": int((after.ru_stime - before.ru_stime) * 1e6),
        "max_rss_kib": after.ru_maxrss,
    }
