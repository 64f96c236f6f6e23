"""shoal: a self-hostable serverless platform for Python that speaks Modal's API (`import shoal as modal`)."""

from __future__ import annotations

from . import exception
from ._container_context import current_function_call_id, current_input_id, is_local
from ._output import enable_output
from ._partial import concurrent
from .app import App, LocalEntrypoint
from .exception import Error
from .functions import Function, FunctionCall
from .retries import Retries
from .schedule import Cron, Period
from .secret import Secret

__version__ = "0.1.0"

__all__ = [
    "App",
    "Cron",
    "Error",
    "Function",
    "FunctionCall",
    "LocalEntrypoint",
    "Period",
    "Retries",
    "Secret",
    "concurrent",
    "current_function_call_id",
    "current_input_id",
    "enable_output",
    "exception",
    "is_local",
]
