"""Turning arguments, results and exceptions into bytes and back (cloudpickle + tblib).

Shared by the SDK and the container runtime. Errors name what could not be serialized.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

import cloudpickle

from .exception import DeserializationError, ExecutionError, SerializationError


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


def dumps_exception(exc: BaseException) -> bytes:
    """An exception with its traceback frames, so the caller can re-raise it with the remote frames."""
    from tblib import Traceback

    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    tb_dict = Traceback(exc.__traceback__).as_dict() if exc.__traceback__ else None
    try:
        exc_bytes = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(exc_bytes)  # some exceptions pickle but cannot be rebuilt; catch that here
    except Exception:  # noqa: BLE001 - fall back to the text form
        exc_bytes = None
    return cloudpickle.dumps(
        {"exc": exc_bytes, "type": type(exc).__name__, "repr": repr(exc), "str": str(exc), "tb": tb_dict,
         "tb_text": tb_text}
    )


def loads_exception(data: bytes) -> BaseException:
    """Rebuild a remote exception with its original class and the remote frames attached."""
    from tblib import Traceback

    info = pickle.loads(data)
    exc: BaseException | None = None
    if info.get("exc") is not None:
        try:
            exc = pickle.loads(info["exc"])
        except Exception:  # noqa: BLE001 - e.g. the class is not importable here
            exc = None
    if exc is None:
        exc = ExecutionError(f"{info['type']}: {info['str']}\n\nRemote traceback:\n{info['tb_text']}")
    if info.get("tb"):
        try:
            exc = exc.with_traceback(Traceback.from_dict(info["tb"]).as_traceback())
        except Exception:  # noqa: BLE001 - frames are a nicety; the exception itself matters
            pass
    exc.__shoal_remote_traceback__ = info["tb_text"]  # type: ignore[attr-defined]
    return exc
