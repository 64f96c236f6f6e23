"""Decorators that go under `@app.function()` and annotate the raw function: `@modal.concurrent`, …

They return the function itself with an attribute set, so `.local()` and stacking keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
