"""Decorators that go under `@app.function()` / inside `@app.cls()` and annotate the raw function:
`@modal.concurrent`, `@modal.batched`, `@modal.method`, `@modal.enter`, `@modal.exit`; and `modal.parameter`.

They return the function itself with an attribute set, so `.local()` and stacking keep working.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ._spec.limits import BATCH_MAX_SIZE, BATCH_WAIT_MS
from .exception import InvalidError

CONCURRENT_ATTR = "__shoal_concurrent__"


def concurrent(_warn_parentheses_missing: Any = None, *, max_inputs: int | None = None,
               target_inputs: int | None = None) -> Callable[[Callable], Callable]:
    """Let one container run up to `max_inputs` inputs at once (threads for sync functions, tasks for async
    ones); the autoscaler aims for `target_inputs` per container (default `max_inputs`)."""
    if _warn_parentheses_missing is not None:
        raise InvalidError("Did you forget parentheses? Use `@modal.concurrent(max_inputs=...)`.")
    if max_inputs is None:
        raise InvalidError("`max_inputs` is required for @modal.concurrent")
    for name, value in (("max_inputs", max_inputs), ("target_inputs", target_inputs)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidError(f"`{name}` must be a positive integer, got {value!r}")
    if target_inputs is not None and target_inputs > max_inputs:
        raise InvalidError(f"`target_inputs` ({target_inputs}) cannot be larger than `max_inputs` ({max_inputs})")

    def decorate(f: Callable) -> Callable:
        if getattr(f, "_is_shoal_function", False):
            raise InvalidError("@modal.concurrent must go under @app.function(), not above it")
        setattr(f, CONCURRENT_ATTR, {"max_inputs": max_inputs, "target_inputs": target_inputs})
        return f

    return decorate


# -- classes: @modal.method, @modal.enter, @modal.exit, @modal.batched, modal.parameter -------------------------
# Like @modal.concurrent, these annotate the raw function and return it, so the class stays a plain Python class
# (instances work locally; `self.helper()` calls are ordinary calls). `@app.cls()` collects the annotations.

METHOD_ATTR = "__shoal_method__"
ENTER_ATTR = "__shoal_enter__"
EXIT_ATTR = "__shoal_exit__"
BATCHED_ATTR = "__shoal_batched__"
WEBHOOK_ATTR = "__shoal_webhook__"  # set by the web decorators (shoal/web.py): they are interface decorators too


def _parentheses(name: str, value: Any) -> None:
    if value is not None:
        raise InvalidError(
            f"Positional arguments are not allowed. Did you forget parentheses? Suggestion: `@modal.{name}()`."
        )


def _check_target(f: Any, decorator: str) -> None:
    if getattr(f, "_is_shoal_function", False) or getattr(f, "_is_shoal_cls", False):
        what = "@app.function" if getattr(f, "_is_shoal_function", False) else "@app.cls()"
        raise InvalidError(f"Cannot stack `@modal.{decorator}` on top of `{what}`. Hint: swap the order of the "
                           "decorators.")
    if isinstance(f, type):
        raise InvalidError(f"Cannot apply `@modal.{decorator}` to a class. Hint: consider applying to a method "
                           "instead.")
    if not callable(f):
        raise InvalidError(f"The object wrapped by `@modal.{decorator}` must be callable.")


def _is_interface(f: Any) -> bool:
    return hasattr(f, METHOD_ATTR) or hasattr(f, BATCHED_ATTR) or hasattr(f, WEBHOOK_ATTR)


def _is_lifecycle(f: Any) -> bool:
    return hasattr(f, ENTER_ATTR) or hasattr(f, EXIT_ATTR)


def _no_mixing(f: Any) -> None:
    if _is_interface(f) and _is_lifecycle(f):
        raise InvalidError("Interface decorators cannot be combined with lifecycle decorators.")


def method(_warn_parentheses_missing: Any = None, *, is_generator: bool | None = None
           ) -> Callable[[Callable], Callable]:
    """Expose a method of an `@app.cls()` class: `Model().predict.remote(x)`."""
    _parentheses("method", _warn_parentheses_missing)

    def decorate(f: Callable) -> Callable:
        _check_target(f, "method")
        gen = is_generator if is_generator is not None else (
            inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f))
        setattr(f, METHOD_ATTR, {"is_generator": bool(gen)})
        _no_mixing(f)
        return f

    return decorate


def enter(_warn_parentheses_missing: Any = None, *, snap: bool = False) -> Callable[[Callable], Callable]:
    """Run this method once when a container starts, after the object is built with its parameters. Hooks with
    `snap=True` run first (shoal takes no memory snapshots, so both kinds run at every start)."""
    _parentheses("enter", _warn_parentheses_missing)

    def decorate(f: Callable) -> Callable:
        _check_target(f, "enter")
        setattr(f, ENTER_ATTR, {"snap": bool(snap)})
        _no_mixing(f)
        return f

    return decorate


def exit(_warn_parentheses_missing: Any = None) -> Callable[[Callable], Callable]:  # noqa: A001 - Modal's name
    """Run this method when the container shuts down (scale-down, app stop, SIGTERM), within 30 s."""
    _parentheses("exit", _warn_parentheses_missing)

    def decorate(f: Callable) -> Callable:
        _check_target(f, "exit")
        setattr(f, EXIT_ATTR, True)
        _no_mixing(f)
        return f

    return decorate


def check_batching(max_batch_size: Any, wait_ms: Any) -> None:
    """Modal's bounds: 1 <= max_batch_size < 1000, 0 <= wait_ms < 600000."""
    for name, value in (("max_batch_size", max_batch_size), ("wait_ms", wait_ms)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidError(f"{name} must be an integer, got {value!r}")
    if max_batch_size < 1:
        raise InvalidError("max_batch_size must be a positive integer.")
    if max_batch_size > BATCH_MAX_SIZE[1]:
        raise InvalidError(f"max_batch_size must be less than {BATCH_MAX_SIZE[1] + 1}.")
    if wait_ms < 0:
        raise InvalidError("wait_ms must be a non-negative integer.")
    if wait_ms > BATCH_WAIT_MS[1]:
        raise InvalidError(f"wait_ms must be less than {BATCH_WAIT_MS[1] + 1}.")


def batched(_warn_parentheses_missing: Any = None, *, max_batch_size: int, wait_ms: int
            ) -> Callable[[Callable], Callable]:
    """Callers pass single items; the function receives lists of up to `max_batch_size` items (one list per
    parameter), collected for at most `wait_ms` after the first, and returns a list of results of equal length."""
    _parentheses("batched", _warn_parentheses_missing)
    check_batching(max_batch_size, wait_ms)

    def decorate(f: Callable) -> Callable:
        _check_target(f, "batched")
        setattr(f, BATCHED_ATTR, {"max_batch_size": max_batch_size, "wait_ms": wait_ms})
        _no_mixing(f)
        return f

    return decorate


def check_batched_function(f: Callable, name: str, is_generator: bool) -> None:
    """What `@app.function()`/`@app.cls()` check of a batched function, with Modal's messages."""
    if is_generator:
        raise InvalidError(f"Modal batched function {name} cannot return generators")
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        return
    for p in params:
        if p.default is not inspect.Parameter.empty:
            raise InvalidError(f"Modal batched function {name} does not accept default arguments.")
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise InvalidError(f"Modal batched function {name} must take named parameters (one list each), "
                               f"not *{p.name}")


class _NoDefault:
    def __repr__(self) -> str:
        return "<no default>"


NO_DEFAULT: Any = _NoDefault()


class Parameter:
    """A class parameter declared with `x: int = modal.parameter(...)`. On an instance the value set at
    construction is found first (instance `__dict__`); this descriptor only answers with the default."""

    def __init__(self, default: Any, init: bool) -> None:
        self.default = default
        self.init = init
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        if self.default is NO_DEFAULT:
            raise AttributeError(f"parameter {self.name!r} has no default value and no specified value")
        return self.default

    def __repr__(self) -> str:
        return f"modal.parameter(default={self.default!r}, init={self.init})"


def parameter(*, default: Any = NO_DEFAULT, init: bool = True) -> Any:
    """Declare a class parameter, dataclass-style: `name: str = modal.parameter(default="x")`. Types: int, str,
    bytes, bool. Each distinct set of values gets its own container pool. With `init=False` the field is only
    annotated (e.g. set by an @enter hook) and is not a parameter."""
    return Parameter(default, init)


# -- @modal.sessioned (Servers) ------------------------------------------------------------------------------------
SESSIONED_ATTR = "__shoal_sessioned__"


def sessioned(_warn_parentheses_missing: Any = None) -> Callable[[type], type]:
    """Opt an `@app.server()` class into strict sessions (`Server.sessions.start()`): requests carrying a session's
    token go to the container that holds it. Goes under `@app.server()`; sets a flag the Server records."""
    _parentheses("sessioned", _warn_parentheses_missing)

    def decorate(user_cls: type) -> type:
        if getattr(user_cls, "_is_shoal_server", False):
            raise InvalidError("Cannot stack `@modal.sessioned` on top of `@app.server()`. Hint: swap the order of "
                               "the decorators.")
        if getattr(user_cls, "_is_shoal_function", False) or getattr(user_cls, "_is_shoal_cls", False):
            raise InvalidError("`@modal.sessioned()` is only for `@app.server()` classes.")
        if not isinstance(user_cls, type):
            raise InvalidError("`@modal.sessioned()` must decorate a class (under `@app.server()`).")
        setattr(user_cls, SESSIONED_ATTR, True)
        return user_cls

    return decorate
