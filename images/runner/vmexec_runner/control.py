"""Execution control: the code's AST is rewritten before it runs.

Each control is optional and off unless asked for (docs/DESIGN.md, "Python
jobs", says what each promises):

- a time limit: TimeLimitExceeded is raised in the code (SIGALRM; the host
  kills the job a few seconds later if the code does not end);
- loop limits, for the outermost loops and nested ones separately: each loop
  statement counts its iterations from 0 each time it starts, and past its
  limit raises LoopLimitExceeded or breaks out (and says so) and goes on;
- throttling: an outermost loop starts at most `loop_hz` iterations a second;
- step events: the line of each statement before it runs, with the watched
  variables' values;
- an error policy per statement of the script (its top level and the blocks
  of its if/for/while/with/match statements; not inside functions, classes
  or try blocks, whose exceptions are the code's own business): raise as is,
  raise wrapped in StatementError naming the line, continue with the next
  statement, or stop the code quietly; ignored errors are reported;
- a restricted mode: only allowed builtins and modules, no names or
  attributes that reach interpreter internals. Off by default: the VM is the
  boundary; on, it is defence in depth, not a sandbox of its own.

A loop is outermost when no loop of the same function (or of the script's top
level) encloses it: the rewrite is lexical, so the count does not depend on
who calls a function.

The limit exceptions derive from BaseException, as KeyboardInterrupt does,
so that the code's own `except Exception` cannot swallow them.
"""

import ast
import builtins
import contextlib
import signal
import sys
import time
import types

from .records import describe_error, describe_value


class TimeLimitExceeded(BaseException):
    """The code ran past its time limit."""


class LoopLimitExceeded(BaseException):
    """A loop ran more iterations than its limit allows."""


class StatementError(Exception):
    """A statement failed under the error policy "wrap"; its exception is the cause."""


class RestrictedCodeError(SyntaxError):
    """The code uses what restricted mode does not allow."""


class Stop(BaseException):
    """The error policy "stop" ends the code at its first failing statement."""


# Tracebacks name them as they name ValueError, not by the runner's module.
for _kind in (TimeLimitExceeded, LoopLimitExceeded, StatementError, RestrictedCodeError):
    _kind.__module__ = "builtins"


LOOP_LIMIT_ACTIONS = ("raise", "break")
ERROR_POLICIES = ("raise", "wrap", "continue", "stop")

# Restricted mode's builtins: computation and the exceptions, nothing that
# opens files, compiles code, or reaches attributes by a name made at run time.
SAFE_BUILTINS = (
    "abs all any ascii bin bool bytearray bytes callable chr classmethod complex dict divmod "
    "enumerate filter float format frozenset hash hex int isinstance issubclass iter len list map "
    "max min next object oct ord pow print property range repr reversed round set slice sorted "
    "staticmethod str sum super tuple type zip True False None NotImplemented Ellipsis __build_class__"
).split() + [n for n in dir(builtins) if isinstance(getattr(builtins, n), type) and issubclass(getattr(builtins, n), BaseException)]

SAFE_MODULES = (
    "math cmath json time datetime random statistics itertools functools collections re string "
    "decimal fractions operator heapq bisect copy array"
).split()

# Attributes that reach frames, code or globals without a leading underscore;
# str.format and format_map read attributes from a format string.
REFUSED_ATTRIBUTES = frozenset(
    "gi_frame gi_code gi_yieldfrom cr_frame cr_code cr_await ag_frame ag_code f_globals f_locals "
    "f_builtins f_back f_code tb_frame tb_next format format_map".split()
)


class Control:
    """The controls a job asked for, checked: an unknown or ill-typed field is refused."""

    FIELDS = {
        "timeout": (int, float),
        "max_outer_loops": (int,),
        "max_inner_loops": (int,),
        "on_loop_limit": (str,),
        "loop_hz": (int, float),
        "trace": (bool,),
        "watch": (list,),
        "trace_limit": (int,),
        "on_error": (str,),
        "restricted": (bool,),
        "allow_modules": (list,),
        "allow_builtins": (list,),
    }

    def __init__(self, given=None):
        given = given or {}
        if not isinstance(given, dict):
            raise ValueError("control must be a JSON object")
        unknown = sorted(set(given) - set(self.FIELDS))
        if unknown:
            raise ValueError(f"unknown control field(s): {', '.join(unknown)}; known: {', '.join(self.FIELDS)}")
        for name, value in given.items():
            kinds = self.FIELDS[name]
            if value is not None and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))):
                raise ValueError(f"control field {name} must be {' or '.join(k.__name__ for k in kinds)}")
        self.timeout = given.get("timeout")
        self.max_outer_loops = given.get("max_outer_loops")
        self.max_inner_loops = given.get("max_inner_loops")
        self.on_loop_limit = given.get("on_loop_limit") or "raise"
        self.loop_hz = given.get("loop_hz")
        self.trace = bool(given.get("trace"))
        self.watch = given.get("watch") or []
        self.trace_limit = given.get("trace_limit", 10000)
        self.on_error = given.get("on_error") or "raise"
        self.restricted = bool(given.get("restricted"))
        self.allow_modules = given.get("allow_modules") or []
        self.allow_builtins = given.get("allow_builtins") or []
        for name in ("timeout", "loop_hz"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"control field {name} must be above 0")
        for name in ("max_outer_loops", "max_inner_loops", "trace_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"control field {name} must be 0 or more")
        if self.on_loop_limit not in LOOP_LIMIT_ACTIONS:
            raise ValueError(f"on_loop_limit must be one of {', '.join(LOOP_LIMIT_ACTIONS)}")
        if self.on_error not in ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {', '.join(ERROR_POLICIES)}")
        for name in ("watch", "allow_modules", "allow_builtins"):
            for item in getattr(self, name):
                if not isinstance(item, str) or not all(part.isidentifier() for part in item.split(".")):
                    raise ValueError(f"{name} takes names, not {item!r}")
        missing = [n for n in self.allow_builtins if not hasattr(builtins, n)]
        if missing:
            raise ValueError(f"allow_builtins names what is not a builtin: {', '.join(missing)}")

    @property
    def rewrites(self):
        """Whether the code's AST has to be rewritten (a time limit alone does not)."""
        return (
            self.max_outer_loops is not None
            or self.max_inner_loops is not None
            or self.loop_hz is not None
            or self.trace
            or self.on_error != "raise"
            or self.restricted
        )


class Runtime:
    """What the rewritten code calls, as `__vmexec__`: loops, steps, failed statements.
    Reports go out as records, each kind up to a cap; the result says how many were dropped."""

    CAP = 1000

    def __init__(self, control, records):
        self.control = control
        self.records = records
        self.sent = {"step": 0, "ignored": 0, "loop_limit": 0}
        self.dropped = {"step": 0, "ignored": 0, "loop_limit": 0}

    def _report(self, kind, record, cap):
        if self.sent[kind] >= cap:
            self.dropped[kind] += 1
            return
        self.sent[kind] += 1
        self.records.send(dict(record, type=kind))

    def loop(self, line, outer):
        return Loop(self, line, outer)

    def step(self, line, namespace=None):
        frame = sys._getframe(1)
        variables = {}
        for name in self.control.watch:
            found, value = lookup(name, namespace, frame)
            if found:
                variables[name] = describe_watched(value)
        self._report("step", {"line": line, "vars": variables}, self.control.trace_limit)

    def watched(self, namespace):
        """The watched variables' final values in the script's namespace."""
        values = {}
        for name in self.control.watch:
            found, value = lookup(name, namespace, None)
            if found:
                values[name] = describe_watched(value)
        return values

    def failed(self, line, exc):
        """A statement of the script raised: the error policy decides."""
        if isinstance(exc, (Stop, TimeLimitExceeded, LoopLimitExceeded)):
            raise exc
        if self.control.on_error == "wrap":
            raise StatementError(f"the statement at line {line} raised {type(exc).__name__}: {exc}") from exc
        self._report("ignored", {"line": line, "error": describe_error(exc)}, self.CAP)
        if self.control.on_error == "stop":
            raise Stop()

    def loop_limit_reached(self, line, limit):
        self._report("loop_limit", {"line": line, "limit": limit}, self.CAP)


class Loop:
    """One run of one loop statement: its count, its limit, its pace."""

    __slots__ = ("runtime", "line", "outer", "count", "limit", "period", "next")

    def __init__(self, runtime, line, outer):
        control = runtime.control
        self.runtime = runtime
        self.line = line
        self.outer = outer
        self.count = 0
        self.limit = control.max_outer_loops if outer else control.max_inner_loops
        self.period = 1.0 / control.loop_hz if outer and control.loop_hz else None
        self.next = None

    def tick(self):
        """At the start of each iteration: True to break out of the loop."""
        self.count += 1
        if self.limit is not None and self.count > self.limit:
            if self.runtime.control.on_loop_limit == "break":
                self.runtime.loop_limit_reached(self.line, self.limit)
                return True
            kind = "an outermost" if self.outer else "a nested"
            raise LoopLimitExceeded(f"the loop at line {self.line} passed its limit of {self.limit} iterations ({kind} loop)")
        if self.period is not None:
            now = time.monotonic()
            base = now
            if self.next is not None:
                if now < self.next:
                    time.sleep(self.next - now)
                    base = self.next
                elif now - self.next < self.period:
                    base = self.next  # a little late: keep the pace, no drift
            self.next = base + self.period
        return False


def lookup(name, namespace, frame):
    """A watched name (dotted names follow attributes) in a frame's locals, then its globals."""
    first, *rest = name.split(".")
    scopes = [namespace] if namespace is not None else [frame.f_locals, frame.f_globals]
    for scope in scopes:
        if first in scope:
            value = scope[first]
            try:
                for attribute in rest:
                    value = getattr(value, attribute)
            except Exception:
                return False, None
            return True, value
    return False, None


def describe_watched(value):
    """A watched value, bounded: step events must not carry megabytes at every line."""
    described = describe_value(value) or {"repr": "None", "json": "null"}
    described["repr"] = described["repr"][:1000]
    if len(described.get("json", "")) > 10000:
        del described["json"]
    return described


class Rewriter(ast.NodeTransformer):
    """Inserts the controls' calls into the code's tree; the code's own nodes keep their lines."""

    def __init__(self, control):
        self.control = control
        self.loop_depth = 0
        self.loops = 0
        self.in_script = True  # the error policy applies to the script's own statements only

    # --- scopes: a function or class starts its own loop nesting, outside the script's policy
    def _scope(self, node):
        saved = self.loop_depth, self.in_script
        self.loop_depth, self.in_script = 0, False
        self.generic_visit(node)
        node.body = self._body(node.body, docstring=True)
        self.loop_depth, self.in_script = saved
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope

    def visit_Lambda(self, node):
        return node  # an expression: no statements, no loops

    def visit_Try(self, node):
        saved = self.in_script
        self.in_script = False
        self.generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            setattr(node, name, self._body(getattr(node, name)))
        for handler in node.handlers:
            handler.body = self._body(handler.body)
        self.in_script = saved
        return node

    visit_TryStar = visit_Try

    def visit_Module(self, node):
        self.generic_visit(node)
        node.body = self._body(node.body, docstring=True)
        return node

    def _blocks(self, node):
        self.generic_visit(node)
        for name in ("body", "orelse"):
            if hasattr(node, name):
                setattr(node, name, self._body(getattr(node, name)))
        return node

    visit_If = visit_With = visit_AsyncWith = _blocks

    def visit_match_case(self, node):
        self.generic_visit(node)
        node.body = self._body(node.body)
        return node

    # --- loops: a counter made before the statement, ticked at the start of each iteration
    def _loop(self, node):
        outer = self.loop_depth == 0
        self.loop_depth += 1
        self.generic_visit(node)
        self.loop_depth -= 1
        node.body = self._body(node.body)
        node.orelse = self._body(node.orelse)
        control = self.control
        limit = control.max_outer_loops if outer else control.max_inner_loops
        if limit is None and not (outer and control.loop_hz):
            return node
        self.loops += 1
        name = f"__vmexec_loop_{self.loops}"
        made = _at(
            ast.Assign(
                targets=[ast.Name(name, ast.Store())],
                value=_runtime_call("loop", ast.Constant(node.lineno), ast.Constant(outer)),
            ),
            node,
        )
        made._vmexec = True
        tick = ast.Call(ast.Attribute(ast.Name(name, ast.Load()), "tick", ast.Load()), [], [])
        node.body.insert(0, _at(ast.If(test=tick, body=[ast.Break()], orelse=[]), node))
        return [made, node]

    visit_For = visit_AsyncFor = visit_While = _loop

    # --- statements: a step before each, and the error policy around the script's own
    def _body(self, statements, docstring=False):
        out = []
        for index, statement in enumerate(statements):
            keep_first = index == 0 and docstring and _is_docstring(statement)
            if keep_first or _is_future_import(statement) or getattr(statement, "_vmexec", False):
                out.append(statement)
                continue
            if self.control.trace:
                step = _at(ast.Expr(_runtime_call("step", ast.Constant(statement.lineno))), statement)
                step._vmexec = True
                out.append(step)
            if self.in_script and self.control.on_error != "raise":
                statement = self._guarded(statement)
            out.append(statement)
        return out or statements

    def _guarded(self, statement):
        """try: STATEMENT except Exception as e: __vmexec__.failed(line, e)"""
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Global, ast.Nonlocal)):
            return statement  # defining a name does not run the code's logic
        handler = ast.ExceptHandler(
            type=ast.Name("Exception", ast.Load()),
            name="__vmexec_error",
            body=[ast.Expr(_runtime_call("failed", ast.Constant(statement.lineno), ast.Name("__vmexec_error", ast.Load())))],
        )
        guarded = _at(ast.Try(body=[statement], handlers=[handler], orelse=[], finalbody=[]), statement)
        guarded._vmexec = True
        return guarded


class RestrictionChecker(ast.NodeVisitor):
    """Refuses, before anything runs, the names and attributes restricted mode does not allow."""

    def __init__(self, filename, source):
        self.filename = filename
        self.lines = source.splitlines()

    def _refuse(self, node, why):
        text = self.lines[node.lineno - 1] if 0 < node.lineno <= len(self.lines) else None
        raise RestrictedCodeError(f"{why} (restricted mode)", (self.filename, node.lineno, node.col_offset + 1, text))

    def visit_Name(self, node):
        if node.id.startswith("__") and node.id != "__name__":
            self._refuse(node, f"the name {node.id} is not allowed")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        if node.attr.startswith("_") or node.attr in REFUSED_ATTRIBUTES:
            self._refuse(node, f"the attribute .{node.attr} is not allowed")
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        if node.level:
            self._refuse(node, "relative imports are not allowed")
        for alias in node.names:
            if alias.name.startswith("_") or alias.name == "*":
                self._refuse(node, f"importing {alias.name} is not allowed")
        self.generic_visit(node)

    def _names_allowed(self, node, names):
        for name in names:
            if name.startswith("__"):
                self._refuse(node, f"the name {name} is not allowed")
        self.generic_visit(node)

    def visit_FunctionDef(self, node):
        self._names_allowed(node, [node.name] + [a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)])

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._names_allowed(node, [node.name])


class ModuleView:
    """A module as restricted code sees it: public attributes only, and of its submodules
    only those allowed too."""

    def __init__(self, module, allowed):
        object.__setattr__(self, "_vmexec_module", module)
        object.__setattr__(self, "_vmexec_allowed", allowed)

    def __getattr__(self, name):
        module = object.__getattribute__(self, "_vmexec_module")
        allowed = object.__getattribute__(self, "_vmexec_allowed")
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            if not module_allowed(value.__name__, allowed):
                raise AttributeError(f"module {value.__name__} is not allowed in restricted mode")
            return ModuleView(value, allowed)
        return value

    def __setattr__(self, name, value):
        raise AttributeError("modules are read-only in restricted mode")

    def __repr__(self):
        return f"<module {object.__getattribute__(self, '_vmexec_module').__name__!r} (restricted)>"


def module_allowed(name, allowed):
    return any(name == a or name.startswith(a + ".") for a in allowed)


def restricted_builtins(control):
    """The builtins restricted code gets, with an import that only brings allowed modules."""
    allowed = SAFE_MODULES + control.allow_modules
    names = set(SAFE_BUILTINS) | set(control.allow_builtins)
    table = {name: getattr(builtins, name) for name in names}

    def restricted_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or not module_allowed(name, allowed):
            raise ImportError(
                f"import of {name!r} is not allowed in restricted mode (allowed: {', '.join(sorted(allowed))})",
                name=name,
            )
        module = __import__(name, globals, locals, fromlist, 0)
        if not fromlist:
            # `import a.b` binds `a`: only allowed parts of it are reachable through the view.
            return ModuleView(module, allowed)
        for item in fromlist:
            value = getattr(module, item, None)
            if isinstance(value, types.ModuleType) and not module_allowed(value.__name__, allowed):
                raise ImportError(f"import of {value.__name__!r} is not allowed in restricted mode", name=value.__name__)
        return ModuleView(module, allowed)

    table["__import__"] = restricted_import
    return table


def check(tree, filename, source, control):
    """Refuses, in restricted mode, code that uses what it does not allow."""
    if control.restricted:
        RestrictionChecker(filename, source).visit(tree)


def rewrite(tree, control):
    """The tree with the controls' calls in it."""
    if control.rewrites:
        tree = Rewriter(control).visit(tree)
        ast.fix_missing_locations(tree)
    return tree


def compile_module(source, filename, control):
    """Source as a module's code object, checked and rewritten."""
    tree = ast.parse(source, filename=filename, mode="exec")
    check(tree, filename, source, control)
    return compile(rewrite(tree, control), filename, "exec")


def namespace_builtins(control):
    return restricted_builtins(control) if control.restricted else builtins


@contextlib.contextmanager
def time_limit(seconds):
    """Raises TimeLimitExceeded in the code (the main thread) once `seconds` have passed."""
    if not seconds:
        yield
        return

    def expired(signum, frame):
        raise TimeLimitExceeded(f"the code ran past its time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _runtime_call(name, *args):
    return ast.Call(ast.Attribute(ast.Name("__vmexec__", ast.Load()), name, ast.Load()), list(args), [])


def _at(new, old):
    """Places the nodes made for the controls on `old`'s first line (a traceback through a
    loop's counter shows the loop's header), leaving the code's own nodes where they are."""
    on_line = [n.end_col_offset for n in ast.walk(old) if n is not old and getattr(n, "end_lineno", None) == old.lineno]
    end = max(on_line, default=old.col_offset + 1)
    for node in ast.walk(new):
        if "lineno" in node._attributes and getattr(node, "lineno", None) is None:
            node.lineno = node.end_lineno = old.lineno
            node.col_offset, node.end_col_offset = old.col_offset, end
    return new


def _is_docstring(statement):
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)


def _is_future_import(statement):
    return isinstance(statement, ast.ImportFrom) and statement.module == "__future__"
