"""What code can ask about where it runs: `is_local()`, `current_input_id()`, `current_function_call_id()`."""

from __future__ import annotations

import contextvars
import os

_input_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("shoal_input_id", default=None)
_call_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("shoal_call_id", default=None)
# True while the container runtime imports the user's module (see App.run).
importing_user_module = False


class StopImport(BaseException):
    """Raised by `App.run()`/`App.deploy()` when the runtime imports a module that calls it at top level: the
    runtime catches it and goes on with what the module defined above that line."""


BUILD_ENV = "SHOAL_IMAGE_BUILD"  # set while an image's run_function step runs in its build container


def is_local() -> bool:
    """False only inside a shoal container: a function's or sandbox's, or the build container of `run_function`."""
    return "SHOAL_CONTAINER_ID" not in os.environ and BUILD_ENV not in os.environ


def current_input_id() -> str | None:
    """The id of the input being processed, inside a container; None elsewhere."""
    return _input_id.get()


def current_function_call_id() -> str | None:
    """The id of the FunctionCall the current input belongs to, inside a container; None elsewhere."""
    return _call_id.get()


def set_current(input_id: str | None, call_id: str | None) -> tuple[contextvars.Token, contextvars.Token]:
    return _input_id.set(input_id), _call_id.set(call_id)
