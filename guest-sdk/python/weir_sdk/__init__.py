"""The Weir SDK for Python: write flows and tasks as plain functions.

    from weir_sdk import flow, task, info

    @task(retries=2, retry_delay="100ms")
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    @flow
    def hello(name: str = "world") -> str:
        info(f"greeting {name}")
        return greet(name)          # a sandboxed, recorded task run

Inside a flow, calling a `@task` function asks the host to run it in a fresh
sandbox with its policy (retries, timeout, fuel, memory, cache) and records
it; `greet.submit(..)` starts it concurrently and `greet.map(..)` fans out.
Calling a `@flow` function from a flow starts a subflow.

Arguments travel as one JSON object keyed by parameter name, results as
JSON, exactly as in the Rust SDK. Any exception a flow or task raises becomes
a `failed` error carrying its traceback; it never escapes into the sandbox.

`host build` turns a project with an `app.py` into a component with
componentize-py; the bindings (module `wit_world`) come from `wit/flow.wit`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import traceback
import typing
from typing import Any, Callable, Iterable, List, Optional

from componentize_py_types import Err
from wit_world.imports import runtime as _runtime
from wit_world.imports import types as _wit

try:
    from wit_world import exports as _exports

    _GuestBase: Any = _exports.Guest
except (ImportError, AttributeError):  # pragma: no cover - only outside a build
    _GuestBase = object

__version__ = "0.1.0"

__all__ = [
    "variable",
    "limit",
    "rate_limit",
    "pause",
    "create_artifact",
    "run_deployment",
    "flow",
    "task",
    "submit",
    "wait_all",
    "Handle",
    "TaskError",
    "RunInfo",
    "log",
    "trace",
    "debug",
    "info",
    "warn",
    "error",
    "secret",
    "run_info",
    "Guest",
]

RunInfo = _wit.RunInfo


# --- errors -----------------------------------------------------------------


class TaskError(Exception):
    """A task or subflow call that did not return a value.

    `kind` is one of: failed, invalid-input, cancelled, out-of-fuel,
    deadline-exceeded, memory-limit, trap, invalid-output.
    """

    def __init__(self, kind: str, message: str = ""):
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind
        self.message = message

    @property
    def is_timeout(self) -> bool:
        return self.kind == "deadline-exceeded"

    @property
    def is_out_of_fuel(self) -> bool:
        return self.kind == "out-of-fuel"

    @property
    def is_memory_limit(self) -> bool:
        return self.kind == "memory-limit"


_SANDBOX_KINDS = {
    _wit.SandboxFailureKind.OUT_OF_FUEL: "out-of-fuel",
    _wit.SandboxFailureKind.DEADLINE_EXCEEDED: "deadline-exceeded",
    _wit.SandboxFailureKind.MEMORY_LIMIT: "memory-limit",
    _wit.SandboxFailureKind.TRAP: "trap",
    _wit.SandboxFailureKind.INVALID_OUTPUT: "invalid-output",
}


def _from_wit(error: Any) -> TaskError:
    if isinstance(error, _wit.TaskError_Failed):
        return TaskError("failed", error.value)
    if isinstance(error, _wit.TaskError_InvalidInput):
        return TaskError("invalid-input", error.value)
    if isinstance(error, _wit.TaskError_Cancelled):
        return TaskError("cancelled")
    if isinstance(error, _wit.TaskError_Sandbox):
        return TaskError(_SANDBOX_KINDS.get(error.value.kind, "trap"), error.value.message)
    return TaskError("failed", repr(error))


class _InvalidInput(Exception):
    pass


# --- logging and run context ------------------------------------------------

_LEVELS = {
    "trace": _wit.LogLevel.TRACE,
    "debug": _wit.LogLevel.DEBUG,
    "info": _wit.LogLevel.INFO,
    "warn": _wit.LogLevel.WARN,
    "warning": _wit.LogLevel.WARN,
    "error": _wit.LogLevel.ERROR,
}


def log(message: Any, level: str = "info") -> None:
    """Appends a line to the run's log. `print()` works too (as info)."""
    try:
        wit_level = _LEVELS[level]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}") from None
    _runtime.log(wit_level, str(message))


def trace(message: Any) -> None:
    log(message, "trace")


def debug(message: Any) -> None:
    log(message, "debug")


def info(message: Any) -> None:
    log(message, "info")


def warn(message: Any) -> None:
    log(message, "warn")


def error(message: Any) -> None:
    log(message, "error")


def secret(name: str) -> Optional[str]:
    """A secret granted to this run's deployment, or None."""
    return _runtime.get_secret(name)


def run_info() -> RunInfo:
    """Who and where this code runs: run ids, attempt (1 on the first), names."""
    return _runtime.info()


_MISSING = object()


def variable(name: str, default: Any = None) -> Any:
    """A variable's value (`host variable set NAME VALUE`), or `default`.

    In a flow the read is recorded: a retried or resumed run sees the value
    it saw the first time. A task reads the current value."""
    text = _runtime.get_variable(name)
    if text is None:
        return default
    return json.loads(text)


class limit:
    """Slots of server-wide concurrency limits, held inside a `with` block.

        with limit("db"):            # at most N of these at once, anywhere
            ...

    Takes `slots` of each named limit (`host concurrency-limit create NAME
    N`), all or none, waiting while one is full (at most `timeout`, "30s" or
    seconds, when given); gives them back when the block ends. A name with
    no limit raises TaskError."""

    def __init__(self, *names: str, slots: int = 1, timeout: Any = None) -> None:
        self._names = list(names)
        self._slots = slots
        self._timeout = (
            None
            if timeout is None
            else timeout if isinstance(timeout, int) else _duration_ms("timeout", timeout) // 1000
        )
        self._handle: Optional[int] = None

    def __enter__(self) -> "limit":
        try:
            self._handle = _runtime.take_slots(self._names, self._slots, self._timeout)
        except Err as e:
            raise _from_wit(e.value) from None
        return self

    def __exit__(self, *_exc: Any) -> None:
        if self._handle is not None:
            _runtime.release_slots(self._handle)
            self._handle = None


def rate_limit(name: str) -> None:
    """Takes one slot of the rate limit `name` (`host concurrency-limit
    create NAME N --slot-decay-per-second R`), waiting until one is back:
    at most N at once, then R per second, across every run on every host."""
    with limit(name):
        pass


def pause(timeout: Any, input_schema: Optional[dict] = None) -> Any:
    """Pauses the run until it is resumed with input matching `input_schema`
    (a JSON Schema; any JSON when None) and returns that input.

    The run goes Paused and its sandbox is dropped; `host flow-run resume ID
    --input '{...}'` continues it by running the flow again, its finished
    tasks replayed from their records. `timeout` ("24h", or seconds) bounds
    the wait: nobody resuming fails the run. Only a top-level flow may pause."""
    seconds = timeout if isinstance(timeout, int) else _duration_ms("timeout", timeout) // 1000
    try:
        answer = _runtime.pause(seconds, _dumps(input_schema if input_schema is not None else {}))
    except Err as e:
        raise _from_wit(e.value) from None
    return json.loads(answer)


def run_deployment(name: str, params: Optional[dict] = None, wait: bool = True) -> Any:
    """Runs a deployment (any component's flow, on its own pool) with
    `params` over its defaults: its result when `wait`, else its flow run id
    at once. The start is recorded, so a resumed run does not start it again."""
    try:
        output = _runtime.run_deployment(name, _dumps(params or {}), wait)
    except Err as e:
        raise _from_wit(e.value) from None
    return json.loads(output)


_ARTIFACT_KINDS = {
    "markdown": _runtime.ArtifactKind.MARKDOWN,
    "table": _runtime.ArtifactKind.TABLE,
    "link": _runtime.ArtifactKind.LINK,
}


def create_artifact(kind: str, data: Any, key: Optional[str] = None, description: Optional[str] = None) -> str:
    """Leaves an artifact on the run and returns its id: `kind` is "markdown"
    (data: text), "table" (data: a list of rows) or "link" (data: a URL).
    With a key it is the next version of that key across runs. Secrets in
    it are redacted by the host."""
    if kind not in _ARTIFACT_KINDS:
        raise ValueError(f"artifact kind must be one of {', '.join(_ARTIFACT_KINDS)}, not {kind!r}")
    text = _dumps(data) if kind == "table" else str(data)
    try:
        return _runtime.create_artifact(_runtime.Artifact(_ARTIFACT_KINDS[kind], key, description, text))
    except Err as e:
        raise _from_wit(e.value) from None


# --- JSON -------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_to_json, separators=(",", ":"))


def _decode_output(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise TaskError("failed", f"the result is not JSON: {e}") from None


# --- policies ---------------------------------------------------------------

_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_MEMORY_UNITS = {
    "": 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "KB": 1000,
    "kB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}
_RETRY_ON = {"failed", "invalid-input", "timeout", "out-of-fuel", "memory", "trap", "invalid-output"}
_CACHE_KEYS = {"input-and-code", "input", "none"}
# What `cache_key=[...]` may list: the parts of the key (the host's CacheKeyPart).
_CACHE_KEY_PARTS = {"input", "params", "run-id", "code"}
# `cache_ttl="forever"`: a cached result that never expires (the host's CACHE_FOREVER_MS).
_CACHE_FOREVER_MS = 2**64 - 1


def _split_unit(text: str) -> tuple[int, str]:
    text = text.strip()
    digits = len(text) - len(text.lstrip("0123456789"))
    if digits == 0:
        raise ValueError
    return int(text[:digits]), text[digits:].strip()


def _duration_ms(option: str, value: Any) -> int:
    """"250ms", "5s", "2m", "1h", "1d", or a number of seconds."""
    if isinstance(value, bool):
        raise TypeError(f"{option}: expected a duration like \"5s\" or a number of seconds")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{option}: a duration cannot be negative")
        return int(round(value * 1000))
    if isinstance(value, str):
        try:
            number, unit = _split_unit(value)
            return number * _DURATION_UNITS[unit]
        except (ValueError, KeyError):
            pass
    raise ValueError(f"{option}: invalid duration {value!r}; use e.g. \"250ms\", \"5s\", \"2m\", \"1h\"")


def _memory_bytes(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        try:
            number, unit = _split_unit(value)
            return number * _MEMORY_UNITS[unit]
        except (ValueError, KeyError):
            pass
    raise ValueError(f"memory: invalid size {value!r}; use e.g. \"64MiB\", \"1GiB\", \"512KiB\"")


def _count(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{option}: expected a whole number >= 0, got {value!r}")
    return value


def _fraction(option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option}: expected a number, got {value!r}")
    return float(value)


def _strings(option: str, value: Any) -> List[str]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{option}: expected a list of strings, got {value!r}")
    return list(value)


_HOOKS = ("on_completion", "on_failure", "on_cancellation", "on_crashed")


def _hook_names(option: str, value: Any) -> List[str]:
    """State hooks: @task functions of this component (or their names), one or a list."""
    hooks = value if isinstance(value, (list, tuple)) else [value]
    names = []
    for hook in hooks:
        if isinstance(hook, Task):
            names.append(hook.name)
        elif isinstance(hook, str):
            names.append(hook)
        else:
            raise TypeError(f"{option}: a hook is a @task of this component, got {hook!r}")
    return names


def _policy(options: dict) -> dict:
    """Decorator options → the manifest's policy object (same keys as the Rust SDK)."""
    policy: dict = {}
    for option, value in options.items():
        if value is None:
            continue
        if option == "retries":
            policy["retries"] = _count(option, value)
        elif option == "retry_delay":
            delays = value if isinstance(value, (list, tuple)) else [value]
            policy["retry_delay_ms"] = [_duration_ms(option, d) for d in delays]
        elif option == "backoff":
            policy["backoff"] = _fraction(option, value)
        elif option == "max_delay":
            policy["max_delay_ms"] = _duration_ms(option, value)
        elif option == "jitter":
            policy["jitter"] = _fraction(option, value)
        elif option == "retry_on":
            kinds = _strings(option, value)
            unknown = [k for k in kinds if k not in _RETRY_ON]
            if unknown:
                raise ValueError(f"retry_on: unknown kind {unknown[0]!r}; expected some of {sorted(_RETRY_ON)}")
            policy["retry_on"] = kinds
        elif option == "timeout":
            policy["timeout_ms"] = _duration_ms(option, value)
        elif option == "fuel":
            policy["fuel"] = _count(option, value)
        elif option == "memory":
            policy["memory_bytes"] = _memory_bytes(value)
        elif option == "cache_ttl":
            policy["cache_ttl_ms"] = _CACHE_FOREVER_MS if value == "forever" else _duration_ms(option, value)
        elif option == "cache_key" and isinstance(value, (list, tuple)):
            parts = _strings(option, value)
            unknown = [p for p in parts if p not in _CACHE_KEY_PARTS]
            if unknown:
                raise ValueError(f"cache_key: unknown part {unknown[0]!r}; expected some of {sorted(_CACHE_KEY_PARTS)}")
            policy["cache_key_parts"] = parts
        elif option == "cache_key":
            if value not in _CACHE_KEYS:
                raise ValueError(f"cache_key: expected one of {sorted(_CACHE_KEYS)}, got {value!r}")
            policy["cache_key"] = value
        elif option == "tags":
            policy["tags"] = _strings(option, value)
        elif option == "result_storage":
            if not isinstance(value, str) or not value:
                raise TypeError(f"result_storage: expected the name of a storage the host sets, got {value!r}")
            policy["result_storage"] = value
        elif option == "persist_result":
            if not isinstance(value, bool):
                raise TypeError(f"persist_result: expected True or False, got {value!r}")
            policy["persist_result"] = value
        elif option in _HOOKS:
            policy[option] = _hook_names(option, value)
        else:  # pragma: no cover - the decorators take keyword arguments only
            raise TypeError(f"unknown option {option!r}")
    return policy


# --- schemas from type hints ------------------------------------------------

_SIMPLE_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}


def _schema_for(annotation: Any) -> dict:
    """A JSON Schema for a type hint; {} (anything) for what it cannot map."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    if annotation is None or annotation is type(None):
        return {"type": "null"}
    if annotation in _SIMPLE_TYPES:
        return {"type": _SIMPLE_TYPES[annotation]}
    if annotation in (tuple, set, frozenset):
        return {"type": "array"}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, set, frozenset) or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return {"type": "array", "items": _schema_for(args[0])} if args else {"type": "array"}
    if origin is tuple:
        return {"type": "array", "prefixItems": [_schema_for(a) for a in args], "minItems": len(args), "maxItems": len(args)}
    if origin is dict:
        schema: dict = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            schema["additionalProperties"] = _schema_for(args[1])
        return schema
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        options = [_schema_for(a) for a in args]
        if all(set(o) == {"type"} and isinstance(o["type"], str) for o in options):
            return {"type": [o["type"] for o in options]}
        return {"anyOf": options}
    if dataclasses.is_dataclass(annotation):
        return _object_schema(inspect.signature(annotation), typing.get_type_hints(annotation))
    return {}


def _object_schema(signature: inspect.Signature, hints: dict) -> dict:
    properties: dict = {}
    required: List[str] = []
    for name, param in signature.parameters.items():
        schema = dict(_schema_for(hints.get(name, param.annotation)))
        if param.default is inspect.Parameter.empty:
            required.append(name)
        else:
            try:
                schema["default"] = json.loads(_dumps(param.default))
            except (TypeError, ValueError):
                pass
        properties[name] = schema
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _type_matches(value: Any, annotation: Any) -> bool:
    """A cheap check of JSON input against simple hints; anything else passes."""
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is list or typing.get_origin(annotation) is list:
        return isinstance(value, list)
    if annotation is dict or typing.get_origin(annotation) is dict:
        return isinstance(value, dict)
    return True


# --- flows and tasks --------------------------------------------------------


class _Entry:
    kind = ""

    def __init__(self, fn: Callable, options: dict):
        if not callable(fn) or inspect.isclass(fn):
            raise TypeError(f"@{self.kind} decorates a function, not {fn!r}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"@{self.kind} {fn.__name__}: flows and tasks are not async; write a plain `def`")
        name = options.pop("name", None) or fn.__name__
        self.fn = fn
        self.name = name
        self.description = inspect.getdoc(fn) or ""
        self.policy = _policy(options)
        self.signature = inspect.signature(fn)
        for param in self.signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise TypeError(
                    f"@{self.kind} {name}: use plain named parameters (arguments arrive as a JSON object), not {param}"
                )
        try:
            self.hints = typing.get_type_hints(fn)
        except Exception:
            self.hints = {}
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__wrapped__ = fn
        registry = _FLOWS if self.kind == "flow" else _TASKS
        if name in _FLOWS or name in _TASKS:
            raise ValueError(f"the name {name!r} is declared twice")
        registry[name] = self

    def _encode_args(self, args: tuple, kwargs: dict) -> str:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TaskError("invalid-input", f"{self.name}: {e}") from None
        bound.apply_defaults()
        try:
            return _dumps(bound.arguments)
        except (TypeError, ValueError) as e:
            raise TaskError("invalid-input", f"{self.name}: the arguments cannot be written as JSON: {e}") from None

    def _manifest_entry(self, schema_key: str) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            schema_key: _object_schema(self.signature, self.hints),
            "policy": self.policy,
        }

    def _run(self, text: str) -> str:
        """Runs the function on JSON input here, in this instance."""
        try:
            args = json.loads(text)
        except ValueError as e:
            raise _InvalidInput(f"the input is not JSON: {e}") from None
        if not isinstance(args, dict):
            raise _InvalidInput(f"{self.name} expects a JSON object of arguments, got {type(args).__name__}")
        params = self.signature.parameters
        unknown = [k for k in args if k not in params]
        if unknown:
            raise _InvalidInput(f"unknown argument {unknown[0]!r}; {self.name} takes: {', '.join(params) or 'nothing'}")
        missing = [n for n, p in params.items() if p.default is p.empty and n not in args]
        if missing:
            raise _InvalidInput(f"missing argument {missing[0]!r} for {self.name}")
        for key, value in args.items():
            hint = self.hints.get(key)
            if hint is not None and not _type_matches(value, hint):
                raise _InvalidInput(f"argument {key!r} of {self.name}: expected {hint.__name__}, got {type(value).__name__}")
        result = self.fn(**args)
        try:
            return _dumps(result)
        except (TypeError, ValueError) as e:
            raise TypeError(f"the result of {self.name} could not be written as JSON: {e}") from None


class Task(_Entry):
    """A `@task` function. Calling it runs it through the host, in a sandbox of its own."""

    kind = "task"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        payload = self._encode_args(args, kwargs)
        try:
            output = _runtime.call_task(self.name, payload)
        except Err as e:
            raise _from_wit(e.value) from None
        return _decode_output(output)

    def submit(self, *args: Any, **kwargs: Any) -> "Handle":
        """Starts the task without waiting; `.wait()` on the handle for its result."""
        payload = self._encode_args(args, kwargs)
        return Handle(_runtime.submit_task(self.name, payload), self.name)

    def map(self, items: Iterable[Any]) -> List["Handle"]:
        """Submits one task per item (a tuple is spread over several parameters)."""
        many = len(self.signature.parameters) > 1
        return [self.submit(*item) if many else self.submit(item) for item in items]


class Flow(_Entry):
    """A `@flow` function. Called from a flow, it runs as a subflow."""

    kind = "flow"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        payload = self._encode_args(args, kwargs)
        try:
            output = _runtime.call_flow(self.name, payload)
        except Err as e:
            raise _from_wit(e.value) from None
        return _decode_output(output)


class Handle:
    """A submitted task. `wait()` once for its result."""

    def __init__(self, handle: int, task_name: str):
        self.handle = handle
        self.task_name = task_name

    def wait(self) -> Any:
        """Blocks the flow until the task ends; raises TaskError if it failed."""
        try:
            output = _runtime.await_task(self.handle)
        except Err as e:
            raise _from_wit(e.value) from None
        return _decode_output(output)

    def __repr__(self) -> str:
        return f"Handle({self.task_name!r}, {self.handle})"


def wait_all(handles: Iterable[Handle], return_exceptions: bool = False) -> List[Any]:
    """Waits for every handle, in order.

    Raises the first TaskError once all have ended, or, with
    `return_exceptions=True`, puts each TaskError in the list in its place.
    """
    results: List[Any] = []
    first_error: Optional[TaskError] = None
    for handle in handles:
        try:
            results.append(handle.wait())
        except TaskError as e:
            results.append(e)
            first_error = first_error or e
    if first_error is not None and not return_exceptions:
        raise first_error
    return results


def submit(task: Task, *args: Any, **kwargs: Any) -> Handle:
    """Starts `task` with these arguments; same as `task.submit(...)`."""
    if not isinstance(task, Task):
        raise TypeError(f"submit() takes a @task function, not {task!r}")
    return task.submit(*args, **kwargs)


def _decorator(cls: type, fn: Optional[Callable], options: dict) -> Any:
    if fn is not None:
        return cls(fn, options)
    return lambda f: cls(f, options)


def task(
    fn: Optional[Callable] = None,
    *,
    name: Optional[str] = None,
    retries: Optional[int] = None,
    retry_delay: Any = None,
    backoff: Optional[float] = None,
    max_delay: Any = None,
    jitter: Optional[float] = None,
    retry_on: Optional[List[str]] = None,
    timeout: Any = None,
    fuel: Optional[int] = None,
    memory: Any = None,
    cache_ttl: Any = None,
    cache_key: Any = None,
    tags: Optional[List[str]] = None,
    on_completion: Any = None,
    on_failure: Any = None,
    on_cancellation: Any = None,
    on_crashed: Any = None,
    persist_result: Optional[bool] = None,
    result_storage: Optional[str] = None,
) -> Any:
    """Declares a task: `@task` or `@task(retries=3, retry_delay="50ms", timeout="30s")`.

    Durations are strings ("250ms", "5s", "2m") or numbers of seconds; memory
    is "64MiB" or a number of bytes. Every option is a default the host applies.
    """
    options = dict(locals())
    del options["fn"]
    return _decorator(Task, fn, options)


def flow(
    fn: Optional[Callable] = None,
    *,
    name: Optional[str] = None,
    retries: Optional[int] = None,
    retry_delay: Any = None,
    backoff: Optional[float] = None,
    max_delay: Any = None,
    jitter: Optional[float] = None,
    retry_on: Optional[List[str]] = None,
    timeout: Any = None,
    fuel: Optional[int] = None,
    memory: Any = None,
    cache_ttl: Any = None,
    cache_key: Any = None,
    tags: Optional[List[str]] = None,
    on_completion: Any = None,
    on_failure: Any = None,
    on_cancellation: Any = None,
    on_crashed: Any = None,
    persist_result: Optional[bool] = None,
    result_storage: Optional[str] = None,
) -> Any:
    """Declares a flow: `@flow` or `@flow(timeout="10m", on_failure=[notify])`.

    State hooks (`on_completion`, `on_failure`, `on_cancellation`,
    `on_crashed`, on flows and tasks alike) name @task functions of this
    component; each runs in its own sandbox with `run` (a dict: flow_run_id,
    flow_name, task_name, state, message, input, result, attempt) and cannot
    change how the run ended.

    Its parameters (with type hints and defaults) become the flow's parameter
    schema; `--param rows=500` on the command line fills them.
    """
    options = dict(locals())
    del options["fn"]
    return _decorator(Flow, fn, options)


_FLOWS: dict = {}
_TASKS: dict = {}


# --- the component's exports -------------------------------------------------


def describe() -> str:
    """The manifest: flows, tasks, parameter schemas and policies (JSON)."""
    return json.dumps(
        {
            "sdk": {"language": "python", "version": __version__},
            "flows": [f._manifest_entry("params_schema") for f in _FLOWS.values()],
            "tasks": [t._manifest_entry("input_schema") for t in _TASKS.values()],
        }
    )


def _traceback_text(exc: BaseException) -> str:
    """`Type: message` first, then the traceback without this module's frames."""
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
        detail = str(exc)
        summary = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        lines = "".join(traceback.format_list(frames)).rstrip()
        if not lines:
            return summary
        return f"{summary}\nTraceback (most recent call last):\n{lines}"
    except BaseException:  # formatting must not fail the failure
        return f"{type(exc).__name__}: {exc!r}"


def _dispatch(kind: str, registry: dict, name: str, payload: str) -> str:
    """Runs a flow or a task; every exception becomes a task-error, none escapes."""
    try:
        entry = registry.get(name)
        if entry is None:
            names = ", ".join(registry) or "none"
            raise Err(_wit.TaskError_InvalidInput(f"no {kind} named '{name}' in this component; it has: {names}"))
        return entry._run(payload)
    except Err:
        raise
    except _InvalidInput as e:
        raise Err(_wit.TaskError_InvalidInput(str(e))) from None
    except BaseException as e:  # noqa: BLE001 - a guest must never trap on an exception
        text = _traceback_text(e)
        try:
            _runtime.log(_wit.LogLevel.ERROR, f"{kind} {name} raised {text}")
        except BaseException:
            pass
        raise Err(_wit.TaskError_Failed(text)) from None


class Guest(_GuestBase):
    """The `guest` export that componentize-py wires to the host."""

    def describe(self) -> str:
        return describe()

    def run_flow(self, name: str, params: str) -> str:
        return _dispatch("flow", _FLOWS, name, params)

    def run_task(self, name: str, input: str) -> str:
        return _dispatch("task", _TASKS, name, input)


def _check_app(module_name: str) -> None:
    """Called at build time: the app must declare at least one flow."""
    if not _FLOWS:
        raise RuntimeError(f"{module_name} declares no @flow; a Weir component needs at least one")
    json.loads(describe())
