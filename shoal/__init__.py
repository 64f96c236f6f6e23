"""shoal: a self-hostable serverless platform for Python that speaks Modal's API (`import shoal as modal`)."""

from __future__ import annotations

from . import exception
from ._container_context import current_function_call_id, current_input_id, is_local
from ._output import enable_output
from ._partial import batched, concurrent, enter, exit, method, parameter, sessioned  # noqa: A004 - Modal's names
from .app import App, LocalEntrypoint
from .cls import Cls, Obj
from .dict import Dict
from .exception import Error
from .functions import Function, FunctionCall
from .image import Image
from .queue import Queue
from .retries import Retries
from .sandbox import Probe, Sandbox, Tunnel
from .schedule import Cron, Period
from .secret import Secret
from .servers import Server
from .volume import Volume
from .web import asgi_app, fastapi_endpoint, web_endpoint, web_server, wsgi_app

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Modal's names shoal does not offer raise an error saying so (`_unsupported.py`), not an AttributeError."""
    from ._unsupported import unsupported

    error = unsupported(name)
    if error is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    raise error


__all__ = [
    "App",
    "Cls",
    "Cron",
    "Dict",
    "Error",
    "Function",
    "FunctionCall",
    "Image",
    "LocalEntrypoint",
    "Obj",
    "Period",
    "Queue",
    "Probe",
    "Retries",
    "Sandbox",
    "Secret",
    "Server",
    "Tunnel",
    "Volume",
    "asgi_app",
    "batched",
    "concurrent",
    "current_function_call_id",
    "current_input_id",
    "enable_output",
    "enter",
    "exception",
    "exit",
    "fastapi_endpoint",
    "is_local",
    "method",
    "parameter",
    "sessioned",
    "web_endpoint",
    "web_server",
    "wsgi_app",
]
