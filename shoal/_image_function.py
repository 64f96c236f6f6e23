"""`Image.run_function`: a Python function run once in a build container on the image so far, its writes kept as
the image's next layer (docs/images.md "run_function").

The function travels by value (cloudpickle, with its own module pickled by value too), so the build container
needs neither the app's source nor the module's top-level imports; what it imports *inside* its body comes from
the image. It is pickled when the app first sends the image (never in containers, which import the module again),
and uploaded as a blob. The image id holds the function's name, the sha256 of its source and of its arguments,
not of the pickle (whose bytes may differ between runs of the same code): changing the function's code or its
arguments rebuilds from this step, as in Modal."""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import sys
import sysconfig
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._spec.images import RUN_FUNCTION_MAX_TIMEOUT as MAX_TIMEOUT
from .exception import InvalidError

DEFAULT_TIMEOUT = 3600


def check(raw_f: Any, args: Any, kwargs: Any, timeout: Any, volumes: Any, network_file_systems: Any) -> None:
    """Modal's argument checks, at declaration time, naming the parameter."""
    if not isinstance(raw_f, types.FunctionType):
        kind = "a shoal Function" if hasattr(raw_f, "remote") else type(raw_f).__name__
        raise InvalidError(f"Image.run_function: `raw_f` must be a plain Python function (not decorated with "
                           f"@app.function), got {kind}")
    if not isinstance(args, (tuple, list)):
        raise InvalidError(f"Image.run_function: `args` must be a tuple, got {type(args).__name__}")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidError("Image.run_function: `kwargs` must be a dict of str keys")
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT:
        raise InvalidError(f"Image.run_function: `timeout` must be whole seconds from 1 to {MAX_TIMEOUT}, "
                           f"got {timeout!r}")
    if volumes or network_file_systems:
        which = "volumes" if volumes else "network_file_systems"
        raise InvalidError(f"Image.run_function: `{which}` are not mounted during shoal image builds; download "
                           "into the image (its files are kept as a layer) or use the volume from the function")


def name_of(raw_f: types.FunctionType) -> str:
    return f"{raw_f.__module__ or '?'}.{raw_f.__qualname__}"


def payload(raw_f: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """The pickle the build container runs: (function, args, kwargs), the function's module by value."""
    import cloudpickle

    module = sys.modules.get(getattr(raw_f, "__module__", "") or "")
    by_value = module is not None and _users_own(module)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps((raw_f, tuple(args), dict(kwargs)), protocol=pickle.DEFAULT_PROTOCOL)
    except Exception as exc:
        raise InvalidError(f"Image.run_function: cannot serialize {name_of(raw_f)} with its arguments: "
                           f"{type(exc).__name__}: {exc}") from exc
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def _users_own(module: types.ModuleType) -> bool:
    """The app's own code travels by value; shoal, installed packages and the standard library by reference (the
    image has them; `__main__` cloudpickle takes by value anyway)."""
    name, path = module.__name__, getattr(module, "__file__", None)
    if name == "__main__" or name == "shoal" or name.startswith("shoal.") or not path:
        return False
    real = os.path.realpath(path)
    if {"site-packages", "dist-packages"} & set(Path(real).parts):
        return False
    return not real.startswith(os.path.realpath(sysconfig.get_paths()["stdlib"]) + os.sep)


def fingerprint(raw_f: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any],
                pickled: bytes) -> dict[str, str]:
    """What identifies the step's work: the source of the function (its bytecode and constants where there is
    no source) and its arguments, pickled again here without the by-value registration: objects of the app's
    module go by reference, whose bytes do not change from run to run."""
    try:
        source = inspect.getsource(raw_f).encode()
    except (OSError, TypeError):
        code = getattr(raw_f, "__code__", None)
        source = pickled if code is None else repr((code.co_code, code.co_consts, code.co_names)).encode()
    import cloudpickle

    arguments = cloudpickle.dumps((tuple(args), sorted(kwargs.items())), protocol=pickle.DEFAULT_PROTOCOL)
    return {"source_sha": hashlib.sha256(source).hexdigest(), "args_sha": hashlib.sha256(arguments).hexdigest()}
