"""What the caller shares with the code: JSON values passed in as globals
(their final state returned with the result), and functions the host
exposes by name, which the code calls like local ones.

A host function's call goes out as a record, {"type": "callback", "id",
"name", "args", "kwargs"}, after the code's output so far; the runner then
waits for the answer on its stdin, one JSON line: {"id", "value"} or
{"id", "error": {"message"}}. The code gets the value, or a CallbackError
with the host's message. Only the names the caller exposed exist (and
CallbackError, to catch); calls from several threads go out one at a time.
"""

import builtins
import json
import threading

from .records import describe_value


class CallbackError(Exception):
    """A host function failed, or the host could not answer."""


CallbackError.__module__ = builtins.__name__  # tracebacks say CallbackError, as they say ValueError


class HostLink:
    def __init__(self, requests, records, capture):
        self.requests = requests
        self.records = records
        self.capture = capture
        self.lock = threading.Lock()
        self.calls = 0

    def functions(self, names):
        """The exposed names as functions."""
        return {name: self._function(name) for name in names}

    def _function(self, name):
        def host_function(*args, **kwargs):
            return self.call(name, list(args), kwargs)

        host_function.__name__ = host_function.__qualname__ = name
        host_function.__doc__ = f"{name}(...): a function of the host, its arguments and value JSON."
        return host_function

    def call(self, name, args, kwargs):
        try:
            record = {"type": "callback", "name": name, "args": args, "kwargs": kwargs}
            json.dumps(record, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the arguments to the host's {name} must be JSON: {exc}") from None
        with self.lock:
            self.calls += 1
            record["id"] = self.calls
            self.capture.flush()  # the code's output so far comes before the call
            self.records.send(record)
            line = self.requests.readline() if self.requests is not None else ""
        if not line:
            raise CallbackError(f"the host did not answer the call to {name}")
        try:
            answer = json.loads(line)
        except ValueError:
            raise CallbackError(f"the host's answer to {name} is not JSON") from None
        if not isinstance(answer, dict) or answer.get("id") != record["id"]:
            raise CallbackError(f"the host's answer to {name} is not for this call")
        if answer.get("error") is not None:
            message = answer["error"].get("message") if isinstance(answer["error"], dict) else str(answer["error"])
            raise CallbackError(f"{name}: {message}")
        return answer.get("value")


def check_shared(shared, callbacks):
    """Shared values and exposed names are Python names, and none is both."""
    if not isinstance(shared, dict) or not isinstance(callbacks, list):
        raise ValueError("shared is a JSON object and callbacks a JSON array of names")
    for name in list(shared) + callbacks:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
            raise ValueError(f"{name!r} cannot be shared or exposed: give a Python name not starting with __")
    both = set(shared) & set(callbacks)
    if both:
        raise ValueError(f"{', '.join(sorted(both))} is both a shared value and a host function")


def shared_state(namespace, names):
    """The shared values' final state, as the result carries values."""
    return {name: describe_value(namespace.get(name)) or {"repr": "None", "json": "null"} for name in names}


def sharing(request, link):
    """The names a request puts in the code's globals, and which of them are shared values."""
    shared = request.get("shared") or {}
    callbacks = request.get("callbacks") or []
    check_shared(shared, callbacks)
    names = dict(shared)
    names.update(link.functions(callbacks))
    if callbacks:
        names.setdefault("CallbackError", CallbackError)  # so that the code can catch what they raise
    return names, list(shared)
