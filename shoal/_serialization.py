"""Turning arguments and results into bytes and back (cloudpickle).

Shared by the SDK and the container runtime. Errors name what could not be serialized. Exceptions travel in the
form `shoal._spec.errors` defines (the control plane makes some too); `loads_exception` is re-exported here for
the SDK's callers.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from ._spec.errors import loads_exception as loads_exception
from .exception import DeserializationError, SerializationError


def dumps(obj: Any, what: str = "value") -> bytes:
    try:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - pickling user objects can raise anything
        raise SerializationError(f"could not serialize {what} of type {type(obj).__name__}: {exc}") from exc


def loads(data: bytes, what: str = "value") -> Any:
    try:
        return pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - unpickling user objects can raise anything
        raise DeserializationError(f"could not deserialize {what}: {type(exc).__name__}: {exc}") from exc


def dumps_args(args: tuple, kwargs: dict) -> bytes:
    """Pickle call arguments; on failure, find and name the offending argument."""
    try:
        return cloudpickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - find which argument it was, below
        pass
    for i, a in enumerate(args):
        dumps(a, f"argument {i}")
    for k, v in kwargs.items():
        dumps(v, f"keyword argument {k!r}")
    return dumps((args, kwargs), "arguments")
