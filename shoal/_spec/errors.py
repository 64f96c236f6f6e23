"""Exceptions as bytes: raised in a container (or made by the control plane), re-raised by the caller.

The exception is pickled whole when it can be, so the caller catches the very class that was raised
(`modal.exception.X` or the user's own); its traceback travels as tblib frames and as text, the text standing in
when the class cannot be rebuilt on the caller's side. The classes shoal itself raises are `shoal.exception`'s:
that module is a leaf that imports nothing, and its dotted path is what the pickles name, so it is part of this
contract too (see pyproject.toml's import contracts).
"""

from __future__ import annotations

import pickle
import traceback

from ..exception import ExecutionError


def dumps_exception(exc: BaseException) -> bytes:
    """An exception with its traceback frames, so the caller can re-raise it with the remote frames."""
    import cloudpickle
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
